"""The lmms-eval plugin: found through lmms-eval's entry-point registry; `generate_until` and `loglikelihood`
answer hand-built requests. lmms-eval is no dependency (it would replace torch and PyAV): `.ci/run` installs it
with `--no-deps`; without it these tests are skipped with that reason."""

import pytest
import torch
from conftest import VIDEOS

from videollamb_hf.testing_utils import save_tiny_repo


lmms_eval = pytest.importorskip("lmms_eval", reason="lmms-eval not installed (pip install --no-deps lmms-eval)")

QUESTION = "What happens in the video?\nA. dancing\nB. sleeping\nAnswer with the option's letter from the given choices directly."


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    from lmms_eval.models import get_model

    cls = get_model("videollamb")  # through the `lmms_eval.models` entry point in setup.cfg
    model = cls(pretrained=save_tiny_repo(tmp_path_factory.mktemp("lmms")), num_frames=8, device="cpu")
    model.task_dict = {"toy": {"test": {0: {"video": str(VIDEOS / "dance.mp4")}}}}
    return model


def _request(kind, second):
    from lmms_eval.api.instance import Instance

    return Instance(kind, (QUESTION, second, lambda doc: [doc["video"]], 0, "toy", "test"), 0,
                    {"task": "toy", "doc_id": 0, "repeats": 1})  # fmt: skip


def test_registry_finds_the_plugin():
    from lmms_eval.models import get_model

    from videollamb_hf.evaluation.lmms_eval_plugin import VideoLlambLmms

    assert get_model("videollamb") is VideoLlambLmms and get_model("videollamb_hf") is VideoLlambLmms


def test_generate_until_equals_the_pipeline_answer(plugin):
    from transformers import pipeline

    (answer,) = plugin.generate_until([_request("generate_until", {"max_new_tokens": 5, "until": ["\n\n"]})])
    pipe = pipeline("video-text-to-text", model=plugin.model, processor=plugin.processor)
    expected = pipe(str(VIDEOS / "dance.mp4"), QUESTION, max_new_tokens=5, return_full_text=False,
                    processor_kwargs={"num_frames": 8})[0]["generated_text"]  # fmt: skip
    assert answer == expected.split("\n\n")[0].strip()


def test_loglikelihood_is_the_continuations_log_probability(plugin):
    (score, greedy), (other, _) = plugin.loglikelihood(
        [_request("loglikelihood", "A"), _request("loglikelihood", "B")]
    )
    processor, model = plugin.processor, plugin.model
    messages = [{"role": "user", "content": [{"type": "video", "path": str(VIDEOS / "dance.mp4")},
                                             {"type": "text", "text": QUESTION}]}]  # fmt: skip
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=prompt + " A", videos=[str(VIDEOS / "dance.mp4")], num_frames=8, return_tensors="pt")
    prompt_length = processor(text=prompt, videos=[str(VIDEOS / "dance.mp4")], num_frames=8)["input_ids"].shape[1]
    with torch.no_grad():
        logprobs = model(**inputs).logits[0].log_softmax(-1)
    ids = inputs["input_ids"][0]
    expected = sum(float(logprobs[i - 1, ids[i]]) for i in range(prompt_length, ids.shape[0]))
    assert score == pytest.approx(expected, abs=1e-4) and score < 0 and other != score
    assert isinstance(greedy, bool)
