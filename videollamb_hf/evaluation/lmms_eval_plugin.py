"""An lmms-eval model for VideoLLaMB, registered through lmms-eval's `lmms_eval.models` entry-point group:

    lmms-eval --model videollamb --model_args pretrained=ColorfulAI/VideoLLaMB,num_frames=16 \\
        --tasks egoschema_subset,mvbench,nextqa_mc_test,videomme

lmms-eval requires torchvision and `av<16`, which would replace this project's CPU torch and PyAV, so it is no
dependency of any extra: install it in its own environment (`pip install lmms-eval videollamb_hf`). Only lmms-eval
imports this module.
"""

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms


def manifest():
    """The entry point lmms-eval loads (`setup.cfg`, group `lmms_eval.models`)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(
        model_id="videollamb",
        simple_class_path="videollamb_hf.evaluation.lmms_eval_plugin.VideoLlambLmms",
        aliases=("videollamb_hf",),
    )


def _is_video(item) -> bool:
    return isinstance(item, str) and not item.lower().endswith((".png", ".jpg", ".jpeg", ".webp", ".bmp"))


class VideoLlambLmms(lmms):
    """lmms-eval's simple model interface: `generate_until` (greedy by default, stops at `until`) and
    `loglikelihood` (sum of the continuation's log-probabilities, and whether it is the greedy continuation).

    Args (`--model_args`): `pretrained` (hub id or folder, original layout accepted), `num_frames` (16),
    `device` ("cuda" if available), `dtype` ("auto"), `max_new_tokens` (default for `generate_until`: 32).
    """

    is_simple = True

    def __init__(self, pretrained: str = "ColorfulAI/VideoLLaMB", num_frames: int = 16, device: str | None = None,
                 dtype: str = "auto", max_new_tokens: int = 32, batch_size: int = 1, **kwargs):  # fmt: skip
        super().__init__()
        from transformers import AutoModelForImageTextToText, AutoProcessor

        import videollamb_hf  # noqa: F401  (registers VideoLLaMB, original-layout loading included)

        self.device_name = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        self.processor = AutoProcessor.from_pretrained(pretrained)
        self.model = AutoModelForImageTextToText.from_pretrained(pretrained, dtype=dtype).to(self.device_name).eval()
        self.num_frames = int(num_frames)
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size_per_gpu = int(batch_size)

    # -- helpers ----------------------------------------------------------------------------------------------------

    def _visuals(self, request: Instance) -> list:
        contexts, _, doc_to_visual, doc_id, task, split = request.args
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        return [v for v in (visuals if isinstance(visuals, (list, tuple)) else [visuals]) if v is not None]

    def _inputs(self, context: str, visuals: list, answer: str | None = None):
        content = []
        for visual in visuals:
            if _is_video(visual):
                content.append({"type": "video", "path": visual})
            else:
                content.append({"type": "image", "path" if isinstance(visual, str) else "image": visual})
        content.append({"type": "text", "text": context})
        messages = [{"role": "user", "content": content}]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        videos = [v for v in visuals if _is_video(v)] or None
        images = [v for v in visuals if not _is_video(v)] or None
        inputs = self.processor(text=prompt + (f" {answer}" if answer is not None else ""), videos=videos,
                                images=images, num_frames=self.num_frames, return_tensors="pt")  # fmt: skip
        return {k: v.to(self.model.device) if hasattr(v, "to") else v for k, v in inputs.items()}

    # -- lmms-eval API ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate_until(self, requests: list[Instance]) -> list[str]:
        answers = []
        for request in requests:
            context, gen_kwargs = request.args[0], dict(request.args[1] or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            inputs = self._inputs(context, self._visuals(request))
            temperature = float(gen_kwargs.get("temperature", 0) or 0)
            output = self.model.generate(
                **inputs, max_new_tokens=int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)),
                do_sample=temperature > 0, **({"temperature": temperature} if temperature > 0 else {}),
            )  # fmt: skip
            text = self.processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for stop in until:
                if stop and stop in text:
                    text = text.split(stop)[0]
            answers.append(text.strip())
        return answers

    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        results = []
        for request in requests:
            context, target = request.args[0], request.args[1]
            doc = self.task_dict[request.args[4]][request.args[5]][request.args[3]] if callable(target) else None
            continuation = target(doc) if callable(target) else target
            if isinstance(continuation, (list, tuple)):
                continuation = continuation[0]
            visuals = self._visuals(request)
            prompt_inputs = self._inputs(context, visuals)
            full_inputs = self._inputs(context, visuals, answer=str(continuation).strip())
            start = prompt_inputs["input_ids"].shape[1]
            logits = self.model(**full_inputs).logits[0].float().log_softmax(-1)
            targets = full_inputs["input_ids"][0, start:]
            predicted = logits[start - 1 : -1]
            token_logprobs = predicted.gather(-1, targets[:, None])[:, 0]
            greedy = bool((predicted.argmax(-1) == targets).all())
            results.append((float(token_logprobs.sum()), greedy))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("Multi-round generation is not supported by the VideoLLaMB lmms-eval model.")


__all__ = ["VideoLlambLmms", "manifest"]
