"""VideoLlambProcessor: the llava_v1 prompt and the original's token sequence (`tokenizer_x_token` over the slow
LLaMA tokenizer, re-implemented here from their code's definition), chat templates, assistant masks, errors."""

import re

import numpy as np
import pytest
import sentencepiece as spm
import torch
from conftest import VIDEOS
from sentencepiece import sentencepiece_model_pb2
from transformers import AutoProcessor

from videollamb_hf import VideoLlambProcessor
from videollamb_hf.processing_videollamb import SYSTEM_PROMPT


class OriginalSlowTokenizer:
    """transformers 4.39's `LlamaTokenizer(legacy=False)` (what llava loads, `use_fast=False`) over sentencepiece:
    prefix `▁`, split on special tokens, pieces that start with `▁` encoded behind `<unk>` with the dummy prefix
    disabled, BOS first."""

    SPECIALS = {"<unk>": 0, "<s>": 1, "</s>": 2}

    def __init__(self, model_file):
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(open(model_file, "rb").read())
        proto.normalizer_spec.add_dummy_prefix = False
        self.sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        self.unk_length = len(self.sp.encode("<unk>", out_type=str))

    def tokenize(self, text):
        if not text:
            return []
        text = "▁" + text.replace("▁", " ")
        tokens = []
        for part in re.split("(<unk>|<s>|</s>)", text):
            if part in self.SPECIALS:
                tokens.append(part)
            elif part and not part.startswith(("▁", " ")):
                tokens += self.sp.encode(part, out_type=str)
            elif part:
                tokens += self.sp.encode("<unk>" + part, out_type=str)[self.unk_length :]
        if len(tokens) > 1 and tokens[0] == "▁" and tokens[1] in self.SPECIALS:
            tokens = tokens[1:]
        return tokens

    def __call__(self, text):
        return [1] + [self.SPECIALS.get(t, None) or self.sp.piece_to_id(t) for t in self.tokenize(text)]


def original_prompt(turns, system=SYSTEM_PROMPT):
    """conv_llava_v1.get_prompt (SeparatorStyle.TWO): `turns` = [(role, message or None), ...]."""
    seps = [" ", "</s>"]
    prompt = system + seps[0]
    for i, (role, message) in enumerate(turns):
        prompt += f"{role}: {message}{seps[i % 2]}" if message else f"{role}:"
    return prompt


def tokenizer_x_token(prompt, tokenizer, tag, x_index):
    """mm_utils.tokenizer_x_token: tokenize the pieces between `<tag>`s separately, BOS on the first only."""
    chunks = [tokenizer(chunk) for chunk in prompt.split(tag)]
    ids = [chunks[0][0]]
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(x_index)
        ids.extend(chunk[1:])
    return ids


def collapse(ids, processor):
    """Our ids with each placeholder block replaced by one placeholder id (the original's layout)."""
    out, i = [], 0
    while i < len(ids):
        if ids[i] in (processor.video_token_id, processor.image_token_id):
            run = processor.video_seq_length if ids[i] == processor.video_token_id else processor.image_seq_length
            assert ids[i : i + run] == [ids[i]] * run
            out.append(ids[i])
            i += run
        else:
            out.append(ids[i])
            i += 1
    return out


@pytest.fixture(scope="module")
def slow(tiny_processor):
    return OriginalSlowTokenizer(tiny_processor.tokenizer.vocab_file or _model_file(tiny_processor))


def _model_file(processor):
    return str(processor.tokenizer.name_or_path) + "/tokenizer.model"


FRAMES = np.zeros((8, 16, 16, 3), dtype=np.uint8)
IMAGE = np.full((20, 30, 3), 128, dtype=np.uint8)


def user(text, media=None):
    blocks = [] if media is None else [{"type": media, media: FRAMES if media == "video" else IMAGE}]
    return {"role": "user", "content": blocks + [{"type": "text", "text": text}]}


def assistant(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


CONVERSATIONS = {
    "single video": (
        [user("What is happening in the video?", "video")],
        [("USER", "<video>\nWhat is happening in the video?"), ("ASSISTANT", None)],
        "video",
    ),
    "multi-turn video": (
        [user("What is happening?", "video"), assistant("A man is playing the drums."), user("And then?")],
        [
            ("USER", "<video>\nWhat is happening?"),
            ("ASSISTANT", "A man is playing the drums."),
            ("USER", "And then?"),
            ("ASSISTANT", None),
        ],
        "video",
    ),  # fmt: skip
    "multiple choice": (
        [
            user(
                "What is he doing?\nA. dancing\nB. reading a book\nAnswer with the option's letter from the given "
                "choices directly.",
                "video",
            )
        ],
        [
            (
                "USER",
                "<video>\nWhat is he doing?\nA. dancing\nB. reading a book\nAnswer with the option's letter from "
                "the given choices directly.",
            ),
            ("ASSISTANT", None),
        ],
        "video",
    ),  # fmt: skip
    "image": (
        [user("Describe the image in one sentence.", "image"), assistant("A baby reads.")],
        [("USER", "<image>\nDescribe the image in one sentence."), ("ASSISTANT", "A baby reads.")],
        "image",
    ),
}


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_prompt_and_tokens_equal_the_original(tiny_processor, slow, name):
    messages, turns, media = CONVERSATIONS[name]
    generation = turns[-1][1] is None
    prompt = tiny_processor.apply_chat_template(messages, add_generation_prompt=generation)
    assert prompt == original_prompt(turns)
    out = tiny_processor.apply_chat_template(
        messages, add_generation_prompt=generation, tokenize=True, return_dict=True
    )
    tag, x_index = (
        ("<video>", tiny_processor.video_token_id) if media == "video" else ("<image>", tiny_processor.image_token_id)
    )
    expected = tokenizer_x_token(original_prompt(turns), slow, tag, x_index)
    assert collapse(out["input_ids"][0].tolist(), tiny_processor) == expected
    key = "pixel_values_videos" if media == "video" else "pixel_values"
    assert out[key].shape[0] == 1


def test_dummy_prefix_quirk_around_the_placeholder(tiny_processor):
    out = tiny_processor(text="USER: <video>\nWhat? ASSISTANT:", videos=[FRAMES])
    ids = out["input_ids"][0].tolist()
    tokens = tiny_processor.tokenizer.convert_ids_to_tokens(ids)
    start = ids.index(tiny_processor.video_token_id)
    end = start + tiny_processor.video_seq_length
    assert tokens[start - 2 : start] == [":", "▁"] and tokens[end : end + 2] == ["▁", "\n"]


@pytest.mark.parametrize(
    "text",
    [
        "USER: <image> describe it ASSISTANT:",  # a space right after the placeholder
        "<image>\n  two spaces",
        "plain text only, no media",
        "USER: <image>\nq1 ASSISTANT: a1</s>USER: q2 ASSISTANT:",
        "tail <image>",
    ],
)
def test_raw_prompts_tokenize_like_the_original(tiny_processor, slow, text):
    images = [IMAGE] * text.count("<image>")
    out = tiny_processor(text=text, images=images or None)
    assert collapse(out["input_ids"][0].tolist(), tiny_processor) == tokenizer_x_token(
        text, slow, "<image>", tiny_processor.image_token_id
    )


def test_system_message_and_several_media(tiny_processor):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "video", "video": FRAMES}, {"type": "image", "image": IMAGE},
                                     {"type": "video", "video": FRAMES}, {"type": "text", "text": "Compare."}]},
    ]  # fmt: skip
    prompt = tiny_processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == "You are terse. USER: <video>\n<image>\n<video>\nCompare. ASSISTANT:"
    out = tiny_processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    ids = out["input_ids"][0]
    assert int((ids == tiny_processor.video_token_id).sum()) == 2 * tiny_processor.video_seq_length
    assert int((ids == tiny_processor.image_token_id).sum()) == tiny_processor.image_seq_length
    assert out["pixel_values_videos"].shape[:2] == (2, 16) and out["pixel_values"].shape[0] == 1


def test_assistant_mask_covers_answers_and_eos(tiny_processor):
    messages = [user("What is happening?", "video"), assistant("A man plays drums."), user("Then?"),
                assistant("He stops.")]  # fmt: skip
    out = tiny_processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
    )
    ids, mask = out["input_ids"][0], torch.as_tensor(out["assistant_masks"][0]).bool()
    assert tiny_processor.decode(ids[mask]) == "A man plays drums.</s>He stops.</s>"
    assert not mask[ids == tiny_processor.video_token_id].any()


def test_video_file_blocks_and_kwargs(tiny_processor):
    messages = [{"role": "user", "content": [{"type": "video", "path": str(VIDEOS / "sample_demo_3.mp4")},
                                             {"type": "text", "text": "What is happening?"}]}]  # fmt: skip
    out = tiny_processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, processor_kwargs={"num_frames": 24}
    )
    assert out["pixel_values_videos"].shape == (1, 24, 3, 16, 16)
    out = tiny_processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, processor_kwargs={"fps": 2}
    )
    assert out["pixel_values_videos"].shape[1] == 8  # 6.09 s x 2 = 13 -> 8
    out = tiny_processor.apply_chat_template(
        messages,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        processor_kwargs={"sampling": "scenes", "num_frames": 8, "return_scenes": True},
    )
    assert out["pixel_values_videos"].shape[1] == 8 and out["video_metadata"][0].scenes[0][0] == 0


def test_batches_pad_with_unk_on_the_tokenizer_side(tiny_processor):
    texts = ["USER: <video>\nShort? ASSISTANT:", "USER: <video>\nA much longer question here? ASSISTANT:"]
    out = tiny_processor(text=texts, videos=[FRAMES, FRAMES])
    assert tiny_processor.tokenizer.pad_token == "<unk>"
    pad = tiny_processor.tokenizer.pad_token_id
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape[0] == 2 and (ids[0][mask[0] == 0] == pad).all() and mask[0, 0] == 0  # left padding
    right = tiny_processor(text=texts, videos=[FRAMES, FRAMES], padding_side="right")
    assert right["attention_mask"][0, -1] == 0
    assert torch.equal(right["input_ids"][0][right["attention_mask"][0].bool()], ids[0][mask[0].bool()])


def test_mismatched_media_raise(tiny_processor):
    with pytest.raises(ValueError, match="1 <video> placeholder.*0 video"):
        tiny_processor(text="USER: <video>\nq")
    with pytest.raises(ValueError, match="0 <image> placeholder.*1 image"):
        tiny_processor(text="USER: q", images=[IMAGE])
    with pytest.raises(ValueError, match="text"):
        tiny_processor(videos=[FRAMES])
    with pytest.raises(TypeError, match="Unexpected"):
        tiny_processor(text="q", bogus=1)


def test_save_and_load_with_autoprocessor(tiny_processor, tmp_path):
    tiny_processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, VideoLlambProcessor)
    assert (loaded.video_seq_length, loaded.image_seq_length) == (32, 4)
    assert loaded.video_processor.size == {"shortest_edge": 16}
    text = "USER: <video>\nWhat? ASSISTANT:"
    assert torch.equal(
        loaded(text=text, videos=[FRAMES])["input_ids"], tiny_processor(text=text, videos=[FRAMES])["input_ids"]
    )
    assert loaded.chat_template == tiny_processor.chat_template


def test_tiny_repo_end_to_end_on_a_real_clip(tmp_path):
    from transformers import AutoModelForImageTextToText

    from videollamb_hf.testing_utils import save_tiny_repo

    save_tiny_repo(tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert processor.video_seq_length == model.config.video_seq_length
    assert processor.image_seq_length == model.config.image_seq_length
    assert (processor.video_token_id, processor.image_token_id) == (
        model.config.video_token_id,
        model.config.image_token_id,
    )
    messages = [
        {"role": "user", "content": [{"type": "video", "path": str(VIDEOS / "dance.mp4")},
                                     {"type": "text", "text": "What happens after the cut?"}]}
    ]  # fmt: skip
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    out = model(**inputs)
    assert out.logits.shape[:2] == inputs["input_ids"].shape
    assert len(out.video_features.scene_boundaries[0]) >= 2
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(generated[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
