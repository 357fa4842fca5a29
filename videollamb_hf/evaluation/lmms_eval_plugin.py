"""An lmms-eval model for VideoLLaMB, registered through lmms-eval's `lmms_eval.models` entry-point group:

    lmms-eval --model videollamb --model_args pretrained=ColorfulAI/VideoLLaMB,num_frames=16 \\
        --tasks egoschema_subset,mvbench,nextqa_mc_test,videomme

Data parallel: `accelerate launch --num_processes N -m lmms_eval --model videollamb ...` (one device per process).

lmms-eval requires torchvision and `av<16`, which would replace this project's torch and PyAV, so it is no
dependency of any extra: `scripts/install_lmms_eval.sh` installs it without its requirements, plus the modules its
command line needs (README, "lmms-eval"). Only lmms-eval imports this module.
"""

import os
from dataclasses import dataclass

import torch
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from lmms_eval.utils import eval_logger


def manifest():
    """The entry point lmms-eval loads (`setup.cfg`, group `lmms_eval.models`)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(
        model_id="videollamb",
        simple_class_path="videollamb_hf.evaluation.lmms_eval_plugin.VideoLlambLmms",
        aliases=("videollamb_hf",),
    )


@dataclass
class LoglikelihoodResult(GenerationResult):
    """One `loglikelihood` answer, `(loss, is_greedy)`: unpacks and indexes as that tuple.

    Why not the bare tuple lmms-eval documents: lmms-eval 0.7.3's evaluator passes every response through
    `unwrap_generation_output`, which turns a `(float, bool)` tuple into its string, so every `multiple_choice`
    task then fails in `Task.process_results` (`lls, is_greedy = zip(*results)`) for every model, and the CLI still
    exits 0. A `GenerationResult` is passed through as its `text`, here the tuple itself, so multiple-choice tasks
    score correctly; lmms-eval is not patched.
    """

    def __iter__(self):
        return iter(self.text)

    def __getitem__(self, index):
        return self.text[index]

    def __len__(self) -> int:
        return len(self.text)


def _is_video(item) -> bool:
    return isinstance(item, str) and not item.lower().endswith((".png", ".jpg", ".jpeg", ".webp", ".bmp"))


class VideoLlambLmms(lmms):
    """lmms-eval's simple model interface: `generate_until` (greedy by default, stops at `until`) and
    `loglikelihood`: the continuation's loss (mean negative log-likelihood per token, lower is likelier: the
    convention of lmms-eval's own LLaVA models, whose `multiple_choice` scoring takes the argmin) and whether it is
    the greedy continuation.

    Args (`--model_args`): `pretrained` (hub id or folder, original layout accepted), `num_frames` (16),
    `device` ("cuda" if available; under `accelerate launch` each process's own device), `dtype` ("auto"),
    `max_new_tokens` (default for `generate_until`: 32).

    Under `accelerate launch --num_processes N -m lmms_eval ...` the rank, world size and device come from
    accelerate's state: lmms-eval gives each process every N-th document and gathers the results on rank 0.
    """

    is_simple = True

    def __init__(self, pretrained: str = "ColorfulAI/VideoLLaMB", num_frames: int = 16, device: str | None = None,
                 dtype: str = "auto", max_new_tokens: int = 32, batch_size: int = 1, **kwargs):  # fmt: skip
        super().__init__()
        from accelerate import Accelerator
        from transformers import AutoModelForImageTextToText, AutoProcessor

        import videollamb_hf  # noqa: F401  (registers VideoLLaMB, original-layout loading included)

        # Data parallel (`accelerate launch -m lmms_eval ...`): lmms-eval's CLI has already built an Accelerator, so
        # this one shares its process group; lmms-eval shards the documents by `rank` / `world_size`, gathers with
        # `self.accelerator` and puts its count tensors on `self.device`, so each rank takes its own device.
        # On a machine without GPUs accelerate's state is distributed only with ACCELERATE_USE_CPU=true (README);
        # without it a multi-process launch still has its process group, which then gives the rank and world size.
        self.accelerator = Accelerator()
        self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if self._world_size == 1 and distributed:
            self._rank, self._world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        if device is None or (self._world_size > 1 and device in ("cuda", "xpu", "npu")):
            if self.accelerator.num_processes > 1:
                device = self.accelerator.device  # this process's own accelerator (cuda:LOCAL_RANK, ...)
            elif torch.cuda.is_available():
                device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if self._world_size > 1 else "cuda"
            else:
                device = "cpu"
        self._device = torch.device(device)
        self.device_name = str(self._device)
        dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        self.processor = AutoProcessor.from_pretrained(pretrained)
        self.model = AutoModelForImageTextToText.from_pretrained(pretrained, dtype=dtype).to(self._device).eval()
        self.num_frames = int(num_frames)
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size_per_gpu = int(batch_size)
        eval_logger.info(f"videollamb: process {self._rank} of {self._world_size} on {self._device}")

    @property
    def device(self) -> torch.device:
        return self._device

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
    def loglikelihood(self, requests: list[Instance]) -> list[LoglikelihoodResult]:
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
            # The continuation's loss (mean negative log-likelihood per token), as lmms-eval's own LLaVA models
            # return it: its multiple-choice scoring takes the option with the lowest value (`np.argmin`).
            results.append(LoglikelihoodResult((float(-token_logprobs.mean()), greedy)))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("Multi-round generation is not supported by the VideoLLaMB lmms-eval model.")


__all__ = ["LoglikelihoodResult", "VideoLlambLmms", "manifest"]
