"""The Gradio demo (`videollamb-hf demo`, extra `demo`): upload or pick a video, chat about it, or watch streaming
captions appear with timestamps and scene thumbnails. Binds to 127.0.0.1 unless told otherwise.

The handlers live on [`DemoSession`] so they can be called (and tested) without a browser; `build_demo` wires them
to the page.
"""

import os
from pathlib import Path

import numpy as np
import torch

from .chat import ChatSession


VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")


def sample_videos(folder=None) -> list[str]:
    """Videos offered as samples: `folder`, else `$VIDEOLLAMB_SAMPLES`, else none."""
    folder = folder or os.environ.get("VIDEOLLAMB_SAMPLES")
    if not folder or not Path(folder).is_dir():
        return []
    return sorted(str(p) for p in Path(folder).iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)


class DemoSession:
    """What the page's buttons call. Videos are encoded once (towers + bridge) and their features reused for every
    question about them; later turns of a conversation reuse the language model's cache of the earlier ones."""

    def __init__(self, model, processor, video_kwargs=None, generate_kwargs=None, stream_fps: float = 1.0):
        self.model, self.processor = model, processor
        self.video_kwargs = dict(video_kwargs or {})
        self.generate_kwargs = {"max_new_tokens": 64, "do_sample": False, **(generate_kwargs or {})}
        self.stream_fps = stream_fps
        self._features = {}
        self._chat = None  # (video key, ChatSession)
        self.random_weights = bool(getattr(model.config, "random_weights", False))

    def _video_path(self, video) -> str:
        if isinstance(video, dict):  # gradio's FileData
            video = video.get("path") or video.get("video", {}).get("path")
        if not video:
            raise ValueError("Upload a video or pick a sample first.")
        return str(video)

    def features(self, video):
        path = self._video_path(video)
        key = (path, os.path.getmtime(path) if os.path.exists(path) else None)
        if key not in self._features:
            inputs = self.processor.video_processor(path, **self.video_kwargs)
            with torch.no_grad():
                pixels = inputs["pixel_values_videos"].to(self.model.device)
                self._features = {key: self.model.get_video_features(pixels, inputs.get("video_frames_mask"))}
        return self._features[key]

    def answer(self, video, question: str, history: list | None = None):
        """Chat handler: `(video, question, history)` -> `(history with the answer, "")`."""
        history = list(history or [])
        question = (question or "").strip()
        if not question:
            return history, ""
        features = self.features(video)
        key = self._video_path(video)
        if self._chat is None or self._chat[0] != key or self._chat[1].features is not features:
            self._chat = (key, ChatSession(self.model, self.processor, features))
        # Rebuild the conversation; the video goes with the first question, as in the original prompt.
        messages = []
        for turn in history + [{"role": "user", "content": question}]:
            content = turn["content"]
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            content = [{"type": "text", "text": block.get("text", "")} for block in content if "text" in block]
            if turn["role"] == "user" and not any(m["role"] == "user" for m in messages):
                content = [{"type": "video"}] + content
            messages.append({"role": turn["role"], "content": content})
        text = self._chat[1].ask(messages, self.generate_kwargs)  # the shared prefix's cache is reused
        if self.random_weights:
            text = f"{text} [random weights]"
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": text}]
        return history, ""

    def stream(self, video):
        """Streaming handler (a generator): yields `(captions as markdown, scene thumbnails)` as scenes close."""
        from .streaming import StreamingCaptioner, iter_video_frames

        path = self._video_path(video)
        captioner = StreamingCaptioner(
            self.model, self.processor, max_new_tokens=self.generate_kwargs["max_new_tokens"],
            generate_kwargs={k: v for k, v in self.generate_kwargs.items() if k != "max_new_tokens"},
        )  # fmt: skip
        lines, thumbnails, frames = [], [], {}

        def frames_kept():
            for timestamp, frame in iter_video_frames(path, self.stream_fps):
                frames[len(frames)] = frame
                yield timestamp, frame

        for event in captioner.run(frames_kept()):
            first = frames.get(event.frames[0])
            if first is not None:
                thumbnails.append((np.asarray(first), f"{event.scene[0]:.1f}-{event.scene[1]:.1f} s"))
            note = " [random weights]" if self.random_weights else ""
            lines.append(
                f"**{event.scene[0]:.1f}-{event.scene[1]:.1f} s** (at {event.timestamp:.1f} s): {event.text}{note}"
            )
            # frames before the scene just described are not needed any more
            for index in [i for i in frames if i <= event.frames[1]]:
                del frames[index]
            yield "\n\n".join(lines), list(thumbnails)
        if not lines:
            yield "(no scene found)", []


def build_demo(model, processor, video_kwargs=None, generate_kwargs=None, samples=None):
    """The Gradio Blocks app around a [`DemoSession`]."""
    import gradio as gr

    session = DemoSession(model, processor, video_kwargs, generate_kwargs)
    title = "VideoLLaMB: long videos with recurrent memory"
    with gr.Blocks(title=title) as app:
        gr.Markdown(f"# {title}")
        if session.random_weights:
            gr.Markdown("**This model has random weights (a tiny test model): its answers are noise.**")
        with gr.Row():
            with gr.Column(scale=1):
                video = gr.Video(label="Video", elem_id="video")
                sample_list = sample_videos(samples)
                if sample_list:
                    sample = gr.Dropdown(
                        [Path(s).name for s in sample_list], value=None, label="Or pick a sample", elem_id="sample"
                    )
                    by_name = {Path(s).name: s for s in sample_list}
                    sample.change(lambda name: by_name.get(name), inputs=sample, outputs=video, api_name="pick_sample")
            with gr.Column(scale=2):
                with gr.Tab("Chat"):
                    chatbot = gr.Chatbot(label="Conversation", elem_id="chatbot", height=360)
                    question = gr.Textbox(label="Question", placeholder="What happens after the cut?",
                                          elem_id="question")  # fmt: skip
                    ask = gr.Button("Ask", variant="primary", elem_id="ask")
                    ask.click(session.answer, inputs=[video, question, chatbot], outputs=[chatbot, question],
                              api_name="answer")  # fmt: skip
                    question.submit(session.answer, inputs=[video, question, chatbot], outputs=[chatbot, question])
                with gr.Tab("Streaming captions"):
                    start = gr.Button("Caption as it plays", elem_id="stream")
                    captions = gr.Markdown(elem_id="captions")
                    gallery = gr.Gallery(label="Scenes", columns=6, height=200, elem_id="scenes")
                    start.click(session.stream, inputs=video, outputs=[captions, gallery], api_name="stream")
    app.session = session
    # `launch(allowed_paths=app.allowed_sample_paths)` lets the page serve the sample videos.
    app.allowed_sample_paths = sorted({str(Path(s).parent) for s in sample_list})
    return app


__all__ = ["DemoSession", "build_demo", "sample_videos"]
