"""The `videollamb-hf` command line (also `python -m videollamb_hf`).

    videollamb-hf describe VIDEO [--prompt TEXT] [--json]     one answer
    videollamb-hf chat VIDEO                                  a conversation about a video (/reset, /quit, EOF)
    videollamb-hf stream VIDEO [--fps 1] [--ask "TIME:question"] [--json]   streaming captions
    videollamb-hf demo [--host 127.0.0.1] [--port 7860]       the Gradio app
    videollamb-hf convert ORIGINAL OUTPUT                     an original checkpoint -> a self-contained repo
    videollamb-hf sft --model_name_or_path M --dataset_name D ...   fine-tuning (TRL's SFT flags and YAML)
    videollamb-hf eval BENCH --questions Q --answers A --video-root DIR   benchmark evaluation
    videollamb-hf make-tiny DIR                               a tiny random model folder to try everything offline

`--model` defaults to ColorfulAI/VideoLLaMB; point it at a local folder to work offline.
"""

import argparse
import json
import sys
import time

from .chat import ChatSession, prompt_ids


DEFAULT_MODEL = "ColorfulAI/VideoLLaMB"
RANDOM_WEIGHTS_NOTE = "[random weights: this model folder was made by `videollamb-hf make-tiny`; its text is noise]"


class CommandError(Exception):
    """A one-line error for the user (printed without a traceback, exit code 2)."""


def _add_common(parser: argparse.ArgumentParser, sampling: bool = True):
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or local folder (default: {DEFAULT_MODEL})")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps ... (default: cuda if available)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--attn-implementation", default=None, help="eager, sdpa, flash_attention_2, ...")
    if sampling:
        parser.add_argument("--num-frames", type=int, default=None, help="frames sampled per video (default 16)")
        parser.add_argument("--fps", type=float, default=None, help="sample by time instead (wins over --num-frames)")
        parser.add_argument("--sampling", choices=["uniform", "scenes"], default=None)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars or notes on stderr")


def _add_chunked(parser: argparse.ArgumentParser):
    parser.add_argument("--chunked-above", type=int, default=256, metavar="N",
                        help="a video sampling more frames is decoded and encoded in chunks of frames, never as one "
                        "pixel tensor (the same answer; default 256)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="videollamb-hf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    describe = commands.add_parser("describe", help="answer one question about a video")
    describe.add_argument("video")
    describe.add_argument("--prompt", default="Describe the video in detail.")
    describe.add_argument("--json", action="store_true", help="answer, scenes with timestamps, timing as JSON")
    _add_common(describe)
    _add_chunked(describe)

    chat = commands.add_parser("chat", help="a conversation about a video in the terminal")
    chat.add_argument("video")
    _add_common(chat)
    _add_chunked(chat)

    stream = commands.add_parser("stream", help="streaming captions, O(1) work per new frame")
    stream.add_argument("video")
    stream.add_argument("--ask", action="append", default=[], metavar="TIME:QUESTION",
                        help="ask QUESTION when the stream reaches TIME seconds (repeatable)")  # fmt: skip
    stream.add_argument("--window", type=int, default=8, help="SceneTilling window W in frames (default 8)")
    stream.add_argument("--min-scene-frames", type=int, default=4)
    stream.add_argument("--max-cache-segments", type=int, default=None, help="bound the memory cache")
    stream.add_argument("--prompt", default=None, help="what is asked at each closed scene")
    stream.add_argument("--json", action="store_true", help="one JSON object per event")
    _add_common(stream, sampling=False)
    stream.set_defaults(max_new_tokens=48)
    # --fps here is the stream's frame rate
    stream.add_argument("--fps", type=float, default=1.0, help="frames per second taken from the video (default 1)")

    demo = commands.add_parser("demo", help="the Gradio app (pip install 'videollamb_hf[demo]')")
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    demo.add_argument("--port", type=int, default=7860)
    demo.add_argument("--share", action="store_true", help="a public gradio.live link (off by default)")
    demo.add_argument("--samples", default=None, help="a folder of videos offered as samples ($VIDEOLLAMB_SAMPLES)")
    _add_common(demo)

    from . import convert_videollamb_original_to_hf as convert

    convert.build_parser(
        commands.add_parser(
            "convert",
            help="an original checkpoint (LLaVA layout) -> a self-contained HF repo",
            description=convert.build_parser().description,
        )  # fmt: skip
    )
    commands.add_parser("sft", help="fine-tune with TRL's SFT script (all `trl sft` flags; see videollamb_hf.sft)",
                        add_help=False)  # fmt: skip
    commands.add_parser("eval", help="multiple-choice benchmarks (EgoSchema, NExT-QA, MVBench, EgoPlan, Video-MME)",
                        add_help=False)  # fmt: skip
    commands.add_parser("niavh", help="Needle in a Video Haystack over a length x depth grid", add_help=False)
    commands.add_parser("serve", help="an OpenAI-compatible video chat endpoint; the language model runs in vLLM",
                        add_help=False)  # fmt: skip
    export = commands.add_parser(
        "export-lm",
        help="the language model as a plain LlamaForCausalLM folder for vLLM (prompt embeddings)",
        description="Write the language model of a VideoLLaMB repo (native or the authors' layout) as a plain "
        "LlamaForCausalLM folder that vLLM serves with --enable-prompt-embeds; the two placeholder rows are dropped.",
    )
    export.add_argument("model", help="hub id or folder of a VideoLLaMB checkpoint")
    export.add_argument("output", help="folder to write (must be empty or absent, unless --overwrite)")
    export.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                        help="dtype of the written weights (default: the checkpoint's)")  # fmt: skip
    export.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default: 5GB)")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    tiny = commands.add_parser("make-tiny", help="write a tiny random VideoLLaMB folder (offline tries)")
    tiny.add_argument("directory")
    tiny.add_argument("--original-layout", action="store_true", help="in the authors' LLaVA layout instead")
    tiny.add_argument("--seed", type=int, default=0)
    return parser


# -- model ------------------------------------------------------------------------------------------------------------


def load_model(args):
    """Model and processor for `args.model`, or a `CommandError` that says how to work offline."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import videollamb_hf  # noqa: F401  (registers everything)

    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs = {"dtype": args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)}
    if args.attn_implementation:
        kwargs["attn_implementation"] = args.attn_implementation
    try:
        processor = AutoProcessor.from_pretrained(args.model)
        model = AutoModelForImageTextToText.from_pretrained(args.model, **kwargs)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CommandError(
            f"cannot load the model {args.model!r} ({first}). Offline or not on the Hub? Pass --model with a local "
            "folder, e.g. one written by `videollamb-hf make-tiny DIR` or `videollamb-hf convert`."
        ) from error
    model = model.to(device).eval()
    if getattr(model.config, "random_weights", False) and not args.quiet:
        print(RANDOM_WEIGHTS_NOTE, file=sys.stderr)
    return model, processor


def generation_kwargs(args) -> dict:
    kwargs = {"max_new_tokens": args.max_new_tokens}
    if args.temperature and args.temperature > 0:
        kwargs.update(do_sample=True, temperature=args.temperature)
    else:
        kwargs.update(do_sample=False)
    return kwargs


def video_kwargs(args) -> dict:
    kwargs = {}
    for name in ("num_frames", "fps", "sampling"):
        value = getattr(args, name, None)
        if value is not None:
            kwargs[name] = value
    return kwargs


def _progress(args, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=args.quiet, file=sys.stderr, leave=False)


def encode_video(model, processor, video: str, args):
    """Decode, sample and encode a video once (towers + SceneTilling + bridge). Returns (features, metadata)."""
    import torch

    video_processor = processor.video_processor
    try:
        count = video_processor.sampled_frame_count(video, **video_kwargs(args))
    except (FileNotFoundError, ValueError, TypeError) as error:
        raise CommandError(str(error)) from error
    chunked_above = getattr(args, "chunked_above", None)
    if count is not None and chunked_above is not None and count > chunked_above:
        # A long video: decoded and encoded chunk by chunk (only each frame's pooled patches and CLS are kept).
        with _progress(args, count, "frames") as bar:
            try:
                metadata, chunks = video_processor.iter_pixel_chunks(
                    video, model.config.tower_chunk_size, **video_kwargs(args)
                )
            except (FileNotFoundError, ValueError, TypeError) as error:
                raise CommandError(str(error)) from error

            def counted(chunks):
                for chunk in chunks:
                    yield chunk
                    bar.update(len(chunk))

            with torch.no_grad():
                features = model.encode_video_chunks(counted(chunks))
        return features, metadata
    with _progress(args, 2, "video") as bar:
        bar.set_postfix_str("decoding")
        try:
            inputs = video_processor(video, return_metadata=True, **video_kwargs(args))
        except (FileNotFoundError, ValueError, TypeError) as error:
            raise CommandError(str(error)) from error
        bar.update(1)
        bar.set_postfix_str("encoding")
        pixels = inputs["pixel_values_videos"].to(model.device)
        with torch.no_grad():
            features = model.get_video_features(pixels, inputs.get("video_frames_mask"))
        bar.update(1)
    return features, inputs["video_metadata"][0]


def answer_from_features(model, processor, features, messages, args, streamer=None) -> str:
    import torch

    ids = torch.tensor([prompt_ids(processor, messages)], device=model.device)
    torch.manual_seed(args.seed)
    with torch.no_grad():
        output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), video_features=features,
                                streamer=streamer, **generation_kwargs(args))  # fmt: skip
    return processor.decode(output[0, ids.shape[1] :], skip_special_tokens=True).strip()


# -- commands ---------------------------------------------------------------------------------------------------------


def cmd_describe(args) -> int:
    started = time.perf_counter()
    model, processor = load_model(args)
    loaded = time.perf_counter()
    features, metadata = encode_video(model, processor, args.video, args)
    encoded = time.perf_counter()
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": args.prompt}]}]
    answer = answer_from_features(model, processor, features, messages, args)
    done = time.perf_counter()
    if not args.json:
        print(answer)
        return 0
    times = metadata.timestamps
    boundaries = features.scene_boundaries[0]
    scenes, start = [], 0
    for end in boundaries:
        scenes.append({"frames": [start, end], "start_s": round(times[start], 3), "end_s": round(times[end], 3)})
        start = end + 1
    print(json.dumps({
        "answer": answer,
        "video": args.video,
        "frames_sampled": len(times),
        "frame_timestamps_s": [round(t, 3) for t in times],
        "scenes": scenes,
        "timing_s": {"load": round(loaded - started, 3), "encode": round(encoded - loaded, 3),
                     "generate": round(done - encoded, 3), "total": round(done - started, 3)},
        "model": args.model,
        "random_weights": bool(getattr(model.config, "random_weights", False)),
    }))  # fmt: skip
    return 0


def cmd_chat(args) -> int:
    import torch
    from transformers import TextStreamer

    model, processor = load_model(args)
    features, metadata = encode_video(model, processor, args.video, args)  # once per video, not per turn
    if not args.quiet:
        print(f"[{args.video}: {len(metadata.timestamps)} frames, {len(features.scene_boundaries[0])} scenes. "
              "Ask about it; /reset forgets the conversation, /quit or EOF ends.]", file=sys.stderr)  # fmt: skip
    history: list[dict] = []
    session = ChatSession(model, processor, features)  # later turns reuse the cache of the earlier ones
    streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    while True:
        try:
            print("you> ", end="", flush=True, file=sys.stderr)
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            break
        if not line:
            break
        question = line.strip()
        if not question:
            continue
        if question == "/quit":
            break
        if question == "/reset":
            history = []
            session.reset()
            print("[conversation reset]", file=sys.stderr)
            continue
        content = [{"type": "text", "text": question}]
        if not history:  # the video goes with the first question, as in the original prompt
            content.insert(0, {"type": "video"})
        history.append({"role": "user", "content": content})
        print("videollamb> ", end="", flush=True)
        torch.manual_seed(args.seed)
        answer = session.ask(history, generation_kwargs(args), streamer=streamer)
        history.append({"role": "assistant", "content": answer})
    return 0


def _parse_questions(asks: list[str]) -> dict[float, str]:
    questions = {}
    for item in asks:
        when, sep, question = item.partition(":")
        try:
            seconds = float(when)
        except ValueError:
            seconds = None
        if not sep or seconds is None or not question.strip():
            raise CommandError(f"--ask takes TIME:QUESTION (seconds, then the question), got {item!r}.")
        questions[seconds] = question.strip()
    return questions


def cmd_stream(args) -> int:
    from .streaming import CAPTION_PROMPT, StreamingCaptioner

    questions = _parse_questions(args.ask)
    model, processor = load_model(args)
    captioner = StreamingCaptioner(
        model, processor, window=args.window, min_scene_frames=args.min_scene_frames,
        max_cache_segments=args.max_cache_segments, caption_prompt=args.prompt or CAPTION_PROMPT,
        max_new_tokens=args.max_new_tokens, generate_kwargs={k: v for k, v in generation_kwargs(args).items()
                                                             if k != "max_new_tokens"},
    )  # fmt: skip
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(args.seed)

    def progress(**kwargs):
        return tqdm(disable=args.quiet, file=sys.stderr, leave=False, **kwargs)

    try:
        for event in captioner.run_file(args.video, fps=args.fps, questions=questions, progress=progress):
            if args.json:
                print(json.dumps(event.to_dict()), flush=True)
            elif event.kind == "caption":
                print(f"[{event.timestamp:7.2f}s] scene {event.scene[0]:.1f}-{event.scene[1]:.1f}s: {event.text}",
                      flush=True)  # fmt: skip
            else:
                print(f"[{event.timestamp:7.2f}s] Q: {event.question}\n{'':11}A: {event.text}", flush=True)
    except (FileNotFoundError, ValueError) as error:
        raise CommandError(str(error)) from error
    return 0


def cmd_demo(args) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError as error:
        raise CommandError("the demo needs gradio: pip install 'videollamb_hf[demo]'") from error
    from .demo import build_demo

    model, processor = load_model(args)
    app = build_demo(model, processor, video_kwargs=video_kwargs(args), generate_kwargs=generation_kwargs(args),
                     samples=args.samples)  # fmt: skip
    app.queue().launch(server_name=args.host, server_port=args.port, share=args.share,
                       allowed_paths=app.allowed_sample_paths)  # fmt: skip
    return 0


def cmd_make_tiny(args) -> int:
    from .testing_utils import save_tiny_original_repo, save_tiny_repo

    if args.original_layout:
        path = save_tiny_original_repo(args.directory, seed=args.seed)["repo"]
    else:
        path = save_tiny_repo(args.directory, seed=args.seed)
    print(path)
    print("A tiny VideoLLaMB with RANDOM weights (what it says is noise), for trying the commands offline: "
          f"videollamb-hf describe VIDEO --model {path}", file=sys.stderr)  # fmt: skip
    return 0


def cmd_export_lm(args) -> int:
    import videollamb_hf  # noqa: F401  (registers the authors' layout too)

    from .serving import export_language_model

    try:
        output = export_language_model(args.model, args.output, dtype=None if args.dtype == "auto" else args.dtype,
                                       max_shard_size=args.max_shard_size, overwrite=args.overwrite)  # fmt: skip
    except (FileExistsError, FileNotFoundError, ValueError, OSError) as error:
        raise CommandError(str(error).splitlines()[0]) from None
    print(output)
    return 0


COMMANDS = {"describe": cmd_describe, "chat": cmd_chat, "stream": cmd_stream, "demo": cmd_demo,
            "make-tiny": cmd_make_tiny, "export-lm": cmd_export_lm}  # fmt: skip


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["sft"]:  # TRL's own parser takes the rest
        from . import sft

        return sft.main(argv[1:])
    if argv[:1] == ["niavh"]:
        from .evaluation.niavh import main as niavh_main

        return niavh_main(argv[1:])
    if argv[:1] == ["serve"]:
        from .server import main as serve_main

        return serve_main(argv[1:])
    if argv[:1] == ["eval"]:
        from .evaluation.benchmarks import main as evaluation_main

        return evaluation_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "convert":
        from . import convert_videollamb_original_to_hf as convert

        return convert.main(argv[argv.index("convert") + 1 :])
    try:
        return COMMANDS[args.command](args)
    except CommandError as error:
        print(f"videollamb-hf {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `videollamb-hf stream ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
