"""Serving through prompt embeddings (`videollamb_hf.serving`), without vLLM: the exported language model is a plain
LLaMA, and fed the compact prompt embeddings it continues exactly as `model.generate` does."""

import json

import pytest
import torch
from conftest import VIDEOS
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, LlamaForCausalLM

from videollamb_hf import cli
from videollamb_hf.serving import (
    build_prompt_embeds,
    build_prompt_embeds_batch,
    completion_request,
    decode_prompt_embeds,
    encode_prompt_embeds,
    export_language_model,
)
from videollamb_hf.testing_utils import save_tiny_original_repo, save_tiny_repo


# A seed whose greedy tokens on the chats below are never near a tie: the top-2 margin of the reference's logits
# exceeds MIN_MARGIN at every compared step (asserted), so an exact comparison cannot flip on rounding.
SEED = 1
MIN_MARGIN = 1e-3
NEW_TOKENS = 8


def chat(clip: str, question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video", "path": str(VIDEOS / clip)},
                                         {"type": "text", "text": question}]}]  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    repo = save_tiny_repo(root / "model", seed=SEED)
    model = AutoModelForImageTextToText.from_pretrained(repo).eval()
    processor = AutoProcessor.from_pretrained(repo)
    export = export_language_model(repo, root / "lm")
    return {"repo": repo, "model": model, "processor": processor, "export": export,
            "lm": AutoModelForCausalLM.from_pretrained(export).eval()}  # fmt: skip


def test_the_export_is_a_plain_llama_without_the_placeholder_rows(served):
    model, export = served["model"], served["export"]
    config = json.loads((export / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert config["vocab_size"] == model.config.text_config.vocab_size - 2 == 400
    lm = served["lm"]
    assert isinstance(lm, LlamaForCausalLM)
    state = load_file(str(export / "model.safetensors"))
    assert torch.equal(state["model.embed_tokens.weight"], model.model.language_model.embed_tokens.weight[:400])
    assert torch.equal(state["lm_head.weight"], model.lm_head.weight[:400])
    assert len(state) == len(model.model.language_model.state_dict()) + 1
    # On text it is VideoLLaMB's language model.
    ids = torch.tensor([[1, 17, 33, 250, 9, 120]])
    with torch.no_grad():
        torch.testing.assert_close(lm(ids).logits, model(input_ids=ids).logits[..., :400], rtol=0, atol=0)
    readme = (export / "README.md").read_text()
    assert "placeholder rows" in readme and "--enable-prompt-embeds" in readme
    assert (export / "tokenizer_config.json").exists() and (export / "generation_config.json").exists()
    with pytest.raises(FileExistsError, match="not empty"):
        export_language_model(model, export)


def test_greedy_continuation_of_the_prompt_embeddings_equals_generate(served):
    model, processor, lm = served["model"], served["processor"], served["lm"]
    for clip, question in (("sample_demo_1.mp4", "What happens?"), ("readingsky.mp4", "Who is there?")):
        messages = chat(clip, question)
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                               return_tensors="pt", processor_kwargs={"num_frames": 16})  # fmt: skip
        reference = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, output_scores=True,
                                   return_dict_in_generate=True)  # fmt: skip
        for scores in reference.scores:
            top = scores[0].topk(2).values
            assert top[0] - top[1] > MIN_MARGIN
        expected = reference.sequences[0, inputs["input_ids"].shape[1] :].tolist()
        embeds = build_prompt_embeds(model, processor, messages, num_frames=16)
        # The compact sequence: the prompt without its unused video slots.
        used = int((inputs["input_ids"] != model.config.video_token_id).sum()) + int(
            model.get_video_features(inputs["pixel_values_videos"]).num_slots_used.sum()
        )
        assert embeds.shape == (used, model.config.text_config.hidden_size)
        continued = lm.generate(inputs_embeds=embeds[None], attention_mask=torch.ones(1, len(embeds), dtype=torch.long),
                                max_new_tokens=NEW_TOKENS, do_sample=False)  # fmt: skip
        assert continued[0].tolist() == expected


def test_batched_encoding_equals_one_at_a_time(served):
    model, processor = served["model"], served["processor"]
    chats = [chat("sample_demo_1.mp4", "What happens?"), chat("dance.mp4", "Who dances, and where?")]
    batched = build_prompt_embeds_batch(model, processor, chats, num_frames=16)
    for messages, embeds in zip(chats, batched):
        single = build_prompt_embeds(model, processor, messages, num_frames=16)
        assert embeds.shape == single.shape
        torch.testing.assert_close(embeds, single, rtol=1e-5, atol=1e-5)
    assert batched[0].shape != batched[1].shape  # different prompts, no padding kept


def test_an_image_prompt_keeps_all_its_slots(served):
    model, processor, lm = served["model"], served["processor"], served["lm"]
    messages = [{"role": "user", "content": [{"type": "image", "path": str(VIDEOS / "readingsky.png")},
                                             {"type": "text", "text": "What is shown?"}]}]  # fmt: skip
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")  # fmt: skip
    embeds = build_prompt_embeds(model, processor, messages)
    assert embeds.shape[0] == inputs["input_ids"].shape[1]
    expected = model.generate(**inputs, max_new_tokens=4, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    continued = lm.generate(inputs_embeds=embeds[None], attention_mask=torch.ones(1, len(embeds), dtype=torch.long),
                            max_new_tokens=4, do_sample=False)  # fmt: skip
    assert continued[0].tolist() == expected.tolist()


def test_the_wire_format_is_base64_of_a_saved_tensor():
    embeds = torch.randn(5, 8, dtype=torch.bfloat16)
    payload = encode_prompt_embeds(embeds)
    assert torch.equal(decode_prompt_embeds(payload), embeds)
    body = json.loads(completion_request(embeds, "lm", max_tokens=3, temperature=0.0, stream=True))
    assert body["model"] == "lm" and body["max_tokens"] == 3 and body["stream"] is True
    assert torch.equal(decode_prompt_embeds(body["prompt_embeds"]), embeds)
    with pytest.raises(ValueError, match="2D"):
        encode_prompt_embeds(embeds[None])


def test_the_command_exports_an_original_layout_checkpoint(tmp_path, monkeypatch, capsys):
    original = save_tiny_original_repo(tmp_path / "original")
    monkeypatch.chdir(original["root"])
    out = tmp_path / "exported"
    assert cli.main(["export-lm", original["repo"], str(out), "--dtype", "bfloat16"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 400 and config["dtype"] == "bfloat16"
    state = load_file(str(out / "model.safetensors"))
    source = original["model"].state_dict()
    assert torch.equal(state["lm_head.weight"], source["lm_head.weight"][:400].to(torch.bfloat16))
    # A non-empty output is one line on stderr and exit 2.
    assert cli.main(["export-lm", original["repo"], str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
