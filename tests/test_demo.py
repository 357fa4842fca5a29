"""The Gradio demo: handlers answer, the app serves them on loopback (gradio_client), and a real headless browser
can use the page."""

import os
import shutil
import socket
from pathlib import Path

import pytest
from conftest import VIDEOS
from transformers import AutoModelForImageTextToText, AutoProcessor

from videollamb_hf.testing_utils import save_tiny_repo


gradio = pytest.importorskip("gradio")  # the `demo` extra; installed by the `test` extra

ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))
VIDEO = str(VIDEOS / "sample_demo_1.mp4")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from videollamb_hf.demo import build_demo

    repo = save_tiny_repo(tmp_path_factory.mktemp("demo"))
    model = AutoModelForImageTextToText.from_pretrained(repo)
    processor = AutoProcessor.from_pretrained(repo)
    return build_demo(model, processor, generate_kwargs={"max_new_tokens": 4}, samples=str(VIDEOS))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(app):
    port = _free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, show_error=True,
                       allowed_paths=app.allowed_sample_paths)  # fmt: skip
    yield f"http://127.0.0.1:{port}/"
    app.close()


def test_handlers_answer_and_stream(app):
    session = app.session
    history, cleared = session.answer(VIDEO, "What happens?", [])
    assert cleared == "" and [t["role"] for t in history] == ["user", "assistant"]
    assert history[1]["content"].endswith("[random weights]")
    history, _ = session.answer(VIDEO, "And then?", history)  # a second turn; the video was encoded once
    assert len(history) == 4 and len(session._features) == 1
    assert session._chat[1].reused > session.model.config.video_seq_length  # the first turn's cache, slots included
    updates = list(session.stream(VIDEO))
    captions, thumbnails = updates[-1]
    assert captions.count("**") >= 2 and " s**" in captions and len(thumbnails) == captions.count("**") // 2
    with pytest.raises(ValueError, match="Upload a video"):
        session.answer(None, "What?", [])


def test_app_serves_the_handlers_on_loopback(served):
    from gradio_client import Client, handle_file

    client = Client(served, verbose=False)
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/answer", "/stream", "/pick_sample"} <= set(endpoints)
    history, _ = client.predict(handle_file(VIDEO), "What happens?", [], api_name="/answer")
    assert history[-1]["role"] == "assistant" and "[random weights]" in str(history[-1]["content"])
    picked = client.predict("sample_demo_3.mp4", api_name="/pick_sample")
    assert Path(picked["video"] if isinstance(picked, dict) else picked).name == "sample_demo_3.mp4"
    captions, gallery = client.predict(handle_file(VIDEO), api_name="/stream")
    assert "s**" in captions and len(gallery) >= 1


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_a_person_can_use_the_page_in_a_real_browser(served):
    playwright = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(served, wait_until="networkidle")
        assert "VideoLLaMB" in page.title()
        page.locator("#sample input").click()  # pick a sample video
        page.locator("[role=option][aria-label='sample_demo_1.mp4']").click()
        page.locator("#video video").wait_for(timeout=60_000)
        page.locator("#question textarea").fill("What happens in the video?")
        page.locator("#ask").click()
        page.locator("#chatbot").get_by_text("[random weights]").first.wait_for(timeout=120_000)
        page.get_by_role("tab", name="Streaming captions").click()
        page.locator("#stream").click()
        page.locator("#captions").get_by_text("[random weights]").first.wait_for(timeout=120_000)
        page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "demo.png").stat().st_size > 10_000
