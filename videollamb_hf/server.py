"""`videollamb-hf serve`: an OpenAI-compatible chat endpoint whose language model runs in vLLM.

This process decodes and encodes the media (towers, SceneTilling, bridge, projector: `serving.PromptEncoder`, with its
encoder-output cache) and sends the compact prompt embeddings to a vLLM server
(`python -m vllm.entrypoints.openai.api_server --model EXPORT --enable-prompt-embeds`) through vLLM's Completions
API. Endpoints: `POST /v1/chat/completions` (streaming or not), `GET /v1/models`, `GET /health`.

Concurrency: remote media are fetched on the event loop (async, bounded size and time: a slow URL holds no worker);
decoding and encoding run in a bounded thread pool (`--workers`), each request's media through the encoder one
request at a time (no cross-request batching in the encoder: its cost is one tower pass per uncached clip); every
generation is in flight at vLLM at once, where continuous batching serves them together.
"""

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from .serving import PromptEncoder, encode_prompt_embeds


logger = logging.getLogger(__name__)

# Per-request processor options (OpenAI clients send them as extra body fields).
PROCESSOR_OPTIONS = ("num_frames", "fps", "sampling", "start_time", "end_time")


@dataclass
class ServeSettings:
    """What `videollamb-hf serve` is told (each a command-line flag of the same name)."""

    vllm_url: str
    served_model_name: str
    vllm_model: str | None = None  # the name vLLM serves the export under (default: the first it lists)
    allowed_media_roots: list[Path] = field(default_factory=list)  # local files only below these
    allow_remote_media: bool = True
    max_media_bytes: int = 256 << 20
    fetch_timeout: float = 30.0
    max_frames: int = 512
    workers: int = 2
    api_key: str | None = None
    vllm_timeout: float = 600.0


class OpenAIError(Exception):
    """An error answered as OpenAI does: `{"error": {"message", "type", "param", "code"}}` with `status`."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


def _under(path: Path, roots: list[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved == root or root in resolved.parents for root in roots)


async def fetch_media(url: str, settings: ServeSettings, client: httpx.AsyncClient) -> bytes:
    """The bytes a content part's URL names: a local path or `file://` URL (only under an allowed root), an
    `http(s)` URL (bounded size and time, unless remote media are off) or a `data:` URL."""
    if not isinstance(url, str) or not url:
        raise OpenAIError(400, "A media content part needs a non-empty `url`.", param="messages")
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        try:
            data = (
                base64.b64decode(payload, validate=True) if header.endswith(";base64") else unquote(payload).encode()
            )
        except (binascii.Error, ValueError):
            raise OpenAIError(400, "The data URL's base64 payload is malformed.", param="messages") from None
        if len(data) > settings.max_media_bytes:
            raise OpenAIError(413, f"A media file is larger than {settings.max_media_bytes} bytes.", param="messages")
        return data
    scheme = urlparse(url).scheme
    if scheme in ("http", "https"):
        if not settings.allow_remote_media:
            raise OpenAIError(400, "Remote media (http/https URLs) are turned off on this server.", param="messages")
        try:
            async with client.stream("GET", url, timeout=settings.fetch_timeout, follow_redirects=True) as response:
                if response.status_code != 200:
                    raise OpenAIError(400, f"Fetching {url} gave HTTP {response.status_code}.", param="messages")
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > settings.max_media_bytes:
                        raise OpenAIError(413, f"{url} is larger than {settings.max_media_bytes} bytes.",
                                          param="messages")  # fmt: skip
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.TimeoutException:
            raise OpenAIError(400, f"Fetching {url} took longer than {settings.fetch_timeout} s.",
                              param="messages") from None  # fmt: skip
        except httpx.HTTPError as error:
            raise OpenAIError(400, f"Could not fetch {url}: {error}", param="messages") from None
    if scheme in ("", "file"):
        path = Path(unquote(urlparse(url).path) if scheme == "file" else url)
        if not settings.allowed_media_roots or not _under(path, settings.allowed_media_roots):
            raise OpenAIError(403, f"Local media outside the allowed roots are refused: {path} (start the server "
                              "with --allowed-media-root DIR to allow a folder).", param="messages")  # fmt: skip
        if not path.is_file():
            raise OpenAIError(400, f"No such media file: {path}", param="messages")
        if path.stat().st_size > settings.max_media_bytes:
            raise OpenAIError(413, f"{path} is larger than {settings.max_media_bytes} bytes.", param="messages")
        return path.read_bytes()
    raise OpenAIError(400, f"Unsupported media URL scheme {scheme!r} (use http(s), file, data or a path).",
                      param="messages")  # fmt: skip


async def convert_messages(messages, settings: ServeSettings, client: httpx.AsyncClient):
    """OpenAI chat messages -> this package's chat (video / image / text blocks) and the media bytes in order."""
    if not isinstance(messages, list) or not messages:
        raise OpenAIError(400, "`messages` must be a non-empty list.", param="messages")
    chat, pending = [], []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise OpenAIError(400, "Each message needs a `role` of system, user or assistant.", param="messages")
        content = message.get("content")
        if isinstance(content, str):
            chat.append({"role": message["role"], "content": [{"type": "text", "text": content}]})
            continue
        if not isinstance(content, list):
            raise OpenAIError(400, "A message's `content` must be a string or a list of parts.", param="messages")
        blocks = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                blocks.append({"type": "text", "text": str(part.get("text", ""))})
            elif kind in ("video_url", "image_url"):
                url = (part.get(kind) or {}).get("url") if isinstance(part.get(kind), dict) else part.get(kind)
                media = kind.removesuffix("_url")
                blocks.append({"type": media})
                pending.append((media, fetch_media(url, settings, client)))
            else:
                raise OpenAIError(400, f"Unsupported content part type {kind!r} (text, video_url, image_url).",
                                  param="messages")  # fmt: skip
        chat.append({"role": message["role"], "content": blocks})
    if chat[-1]["role"] == "assistant":
        raise OpenAIError(400, "The last message must be the user's (the server writes the assistant's).",
                          param="messages")  # fmt: skip
    datas = await asyncio.gather(*(task for _, task in pending))
    return chat, [(kind, data) for (kind, _), data in zip(pending, datas)]


def _processor_options(body: dict, settings: ServeSettings) -> dict:
    options = {k: body[k] for k in PROCESSOR_OPTIONS if body.get(k) is not None}
    for name in ("num_frames", "fps"):
        if name in options and (not isinstance(options[name], (int, float)) or options[name] <= 0):
            raise OpenAIError(400, f"`{name}` must be a positive number.", param=name)
    if options.get("num_frames", 0) > settings.max_frames:
        raise OpenAIError(400, f"`num_frames` ({options['num_frames']}) is more than this server allows "
                          f"({settings.max_frames}).", param="num_frames")  # fmt: skip
    return options


def create_app(model, processor, settings: ServeSettings, encoder: PromptEncoder | None = None) -> FastAPI:
    """The ASGI app of `videollamb-hf serve` (run it with uvicorn)."""
    encoder = encoder or PromptEncoder(model, processor)
    pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="videollamb-encode")
    state = {"vllm_model": settings.vllm_model}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    backend = httpx.AsyncClient(base_url=settings.vllm_url.rstrip("/"), timeout=settings.vllm_timeout, limits=limits)
    fetcher = httpx.AsyncClient(limits=limits)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await backend.aclose()
        await fetcher.aclose()
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="videollamb_hf", docs_url=None, redoc_url=None, lifespan=lifespan)

    def detokenize(token_ids: list[int]) -> str:
        return processor.decode(token_ids, skip_special_tokens=True)

    vocabulary = processor.tokenizer.get_vocab()
    byte_tokens = {i for token, i in vocabulary.items() if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token)}

    def stable_length(token_ids: list[int]) -> int:
        """How many leading tokens decode to text that later tokens cannot change: all but a trailing run of
        byte-fallback tokens (`<0xE5>`...), which the tokenizer decodes together, valid UTF-8 or replaced."""
        length = len(token_ids)
        while length and token_ids[length - 1] in byte_tokens:
            length -= 1
        return length

    def authorised(request: Request) -> bool:
        return not settings.api_key or request.headers.get("authorization") == f"Bearer {settings.api_key}"

    async def vllm_model_name() -> str:
        if state["vllm_model"] is None:
            response = await _backend_call(backend.get("/v1/models", timeout=10))
            state["vllm_model"] = response.json()["data"][0]["id"]
        return state["vllm_model"]

    @app.exception_handler(OpenAIError)
    async def _openai_error(request, error: OpenAIError):
        return error.response()

    @app.get("/health")
    async def health():
        return {"status": "ok", "encoder_cache": {"hits": encoder.hits, "misses": encoder.misses}}

    @app.get("/v1/models")
    async def models(request: Request):
        if not authorised(request):
            raise OpenAIError(401, "Invalid or missing API key.", kind="authentication_error")
        return {"object": "list", "data": [{"id": settings.served_model_name, "object": "model", "created": 0,
                                            "owned_by": "videollamb_hf"}]}  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        started = time.perf_counter()
        request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if not authorised(request):
            raise OpenAIError(401, "Invalid or missing API key.", kind="authentication_error")
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise OpenAIError(400, "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise OpenAIError(400, "The request body must be a JSON object.")
        if body.get("model") != settings.served_model_name:
            raise OpenAIError(404, f"The model {body.get('model')!r} does not exist here; this server serves "
                              f"{settings.served_model_name!r}.", param="model", code="model_not_found")  # fmt: skip
        if body.get("n", 1) != 1:
            raise OpenAIError(400, "Only `n=1` is supported.", param="n")
        options = _processor_options(body, settings)
        chat, media = await convert_messages(body.get("messages"), settings, fetcher)
        loop = asyncio.get_running_loop()
        encode_started = time.perf_counter()
        try:
            embeds, info = await loop.run_in_executor(pool, encoder.encode, chat, media, options)
        except (ValueError, OSError, TypeError) as error:  # undecodable media, bad options
            raise OpenAIError(400, f"Could not read the media: {str(error).splitlines()[0]}",
                              param="messages") from None  # fmt: skip
        if any(frames > settings.max_frames for frames in info["frames"]):
            raise OpenAIError(400, f"A video samples {max(info['frames'])} frames, more than this server allows "
                              f"({settings.max_frames}).", param="fps")  # fmt: skip
        encode_seconds = time.perf_counter() - encode_started
        completion = {"model": await vllm_model_name(), "prompt_embeds": encode_prompt_embeds(embeds),
                      "max_tokens": body.get("max_tokens") or body.get("max_completion_tokens") or 256,
                      "return_token_ids": True}  # fmt: skip
        for name in ("temperature", "top_p", "seed", "stop"):
            if body.get(name) is not None:
                completion[name] = body[name]

        def log(tokens):
            logger.info("%s frames=%s cache_hits=%d encode=%.2fs tokens=%s total=%.2fs", request_id, info["frames"],
                        info["cache_hits"], encode_seconds, tokens, time.perf_counter() - started)  # fmt: skip

        created = int(time.time())
        name = settings.served_model_name
        if not body.get("stream"):
            response = await _backend_call(backend.post("/v1/completions", json=completion))
            result = response.json()
            choice, usage = result["choices"][0], result.get("usage") or {}
            log(usage.get("completion_tokens"))
            text = (
                choice["text"]
                if "stop" in completion or not choice.get("token_ids")
                else detokenize(choice["token_ids"])
            )
            return {"id": request_id, "object": "chat.completion", "created": created, "model": name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": choice.get("finish_reason"),
                                 # vLLM's extra field (as its own chat API): the generated token ids.
                                 "token_ids": choice.get("token_ids")}],
                    "usage": {"prompt_tokens": usage.get("prompt_tokens", len(embeds)),
                              "completion_tokens": usage.get("completion_tokens"),
                              "total_tokens": usage.get("total_tokens")}}  # fmt: skip

        completion["stream"] = True
        upstream = await _backend_call(
            backend.send(backend.build_request("POST", "/v1/completions", json=completion), stream=True)
        )

        async def events():
            def chunk(delta, finish=None):
                payload = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": name,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
                return f"data: {json.dumps(payload)}\n\n"

            yield chunk({"role": "assistant", "content": ""})
            pieces, token_ids, sent = 0, [], ""
            own_text = "stop" not in completion  # with stop strings, vLLM's text is the truncated one
            try:
                async for line in upstream.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    choice = json.loads(line[6:])["choices"][0]
                    finish = choice.get("finish_reason")
                    if own_text and choice.get("token_ids") is not None:
                        # Detokenized here, as `processor.decode` does, so that the chunks join to the non-streamed
                        # text; a trailing run of byte-fallback tokens waits (it is decoded as one UTF-8 group).
                        token_ids += choice["token_ids"]
                        ready = detokenize(token_ids if finish else token_ids[: stable_length(token_ids)])
                        delta = ready[len(sent) :] if ready.startswith(sent) else ""
                    else:
                        delta = choice.get("text") or ""
                    if delta:
                        pieces += 1
                        sent += delta
                        yield chunk({"content": delta})
                    if finish:
                        yield chunk({}, finish)
            except httpx.HTTPError as error:
                error_body = {"error": {"message": f"The vLLM backend failed mid-stream: {error}",
                                        "type": "server_error", "param": None, "code": None}}  # fmt: skip
                yield f"data: {json.dumps(error_body)}\n\n"
            finally:
                await upstream.aclose()
                log(f"{pieces} chunks")
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


async def _backend_call(awaitable):
    """A call to the vLLM server; unreachable or timing out is a 5xx, its own 4xx is passed on."""
    try:
        response = await awaitable
    except httpx.TimeoutException:
        raise OpenAIError(504, "The vLLM backend did not answer in time.", kind="server_error") from None
    except httpx.HTTPError as error:
        raise OpenAIError(502, f"The vLLM backend is unreachable: {error}", kind="server_error") from None
    if response.status_code >= 400:
        if hasattr(response, "aread"):
            await response.aread()
        try:
            message = response.json().get("error", {}).get("message") or response.text
        except (json.JSONDecodeError, AttributeError):
            message = response.text
        status = 400 if 400 <= response.status_code < 500 else 502
        raise OpenAIError(
            status, f"vLLM: {message}", kind="invalid_request_error" if status == 400 else "server_error"
        )
    return response


def build_parser(parser=None):
    import argparse

    parser = parser or argparse.ArgumentParser(prog="videollamb-hf serve", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ColorfulAI/VideoLLaMB", help="the VideoLLaMB checkpoint (the encoder)")
    parser.add_argument("--vllm-url", required=True, help="the vLLM server serving `export-lm`'s folder")
    parser.add_argument("--vllm-model", help="the name vLLM serves it under (default: the first it lists)")
    parser.add_argument("--served-model-name", help="the model name clients use (default: --model as given)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--allowed-media-root", action="append", default=[], metavar="DIR",
                        help="a folder whose files requests may name (repeatable; none by default)")  # fmt: skip
    parser.add_argument("--no-remote-media", action="store_true", help="refuse http(s) media URLs")
    parser.add_argument("--max-media-mb", type=float, default=256, help="largest media file (default: 256 MB)")
    parser.add_argument("--fetch-timeout", type=float, default=30, help="seconds for one remote media fetch")
    parser.add_argument("--max-frames", type=int, default=512, help="most frames one video may sample")
    parser.add_argument("--encoder-cache-mb", type=float, default=2048, help="encoder-output cache (0: off)")
    parser.add_argument("--workers", type=int, default=2, help="threads decoding and encoding media")
    parser.add_argument("--api-key", default=os.environ.get("VIDEOLLAMB_API_KEY"),
                        help="require `Authorization: Bearer KEY` (default: $VIDEOLLAMB_API_KEY, else none)")  # fmt: skip
    parser.add_argument("--vllm-timeout", type=float, default=600, help="seconds for one vLLM call")
    parser.add_argument("--device", default=None, help="default: the GPU if there is one, else the CPU")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    return parser


def main(argv=None) -> int:
    import sys

    import torch
    import uvicorn
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import videollamb_hf  # noqa: F401  (registers the model, the authors' layout included)

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    roots = [Path(root).resolve() for root in args.allowed_media_root]
    for root in roots:
        if not root.is_dir():
            print(f"videollamb-hf serve: error: --allowed-media-root {root} is not a folder.", file=sys.stderr)
            return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=args.dtype).to(device).eval()
        processor = AutoProcessor.from_pretrained(args.model)
    except (OSError, ValueError) as error:
        print(f"videollamb-hf serve: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    settings = ServeSettings(
        vllm_url=args.vllm_url, served_model_name=args.served_model_name or args.model, vllm_model=args.vllm_model,
        allowed_media_roots=roots, allow_remote_media=not args.no_remote_media,
        max_media_bytes=int(args.max_media_mb * (1 << 20)), fetch_timeout=args.fetch_timeout,
        max_frames=args.max_frames, workers=args.workers, api_key=args.api_key, vllm_timeout=args.vllm_timeout,
    )  # fmt: skip
    encoder = PromptEncoder(model, processor, cache_bytes=int(args.encoder_cache_mb * (1 << 20)))
    app = create_app(model, processor, settings, encoder)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


__all__ = ["OpenAIError", "ServeSettings", "create_app", "fetch_media", "main"]
