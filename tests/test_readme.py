"""The README's commands and Python snippets are true."""

import contextlib
import io
import re
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_ci_runs_exactly_the_readme_commands():
    commands = [line for line in blocks("bash")[0].splitlines() if line.strip()]
    assert len(commands) == 2
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command in ci


def test_ci_installs_lmms_eval_with_the_readme_recipe():
    (recipe,) = [block for block in blocks("bash") if "install_lmms_eval.sh" in block]
    script = next(line.split("#")[0].strip() for line in recipe.splitlines() if "install_lmms_eval.sh" in line)
    assert script == "bash scripts/install_lmms_eval.sh" and (ROOT / "scripts" / "install_lmms_eval.sh").is_file()
    assert script in (ROOT / ".ci" / "run").read_text().splitlines()
    installed = (ROOT / "scripts" / "install_lmms_eval.sh").read_text()
    for requirement in (
        '--no-deps "lmms-eval==0.7.3"',
        "sacrebleu",
        "evaluate",
        "tenacity",
        "pytablewriter",
        '"filelock<4"',
    ):
        assert requirement in installed


def test_python_snippets_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    stdout = io.StringIO()
    snippets = [b for b in blocks("python") if "ColorfulAI/" not in b]  # hub snippets: see below
    assert len(snippets) >= 3
    with contextlib.redirect_stdout(stdout):
        for snippet in snippets:  # README paths are relative to the checkout; the tests run elsewhere
            snippet = snippet.replace('"../shared/', f'"{ROOT.parent / "shared"}/')
            exec(compile(snippet, "README.md", "exec"), namespace)
    printed = stdout.getvalue().splitlines()
    assert "[4, 15, 24, 31]" in printed
    assert namespace["output"].shape == (1, namespace["inputs"]["input_ids"].shape[1] + 8)
    assert (tmp_path / "tiny-videollamb" / "config.json").exists()
    model, ids = namespace["model"], namespace["input_ids"]
    assert namespace["generated"].shape == (1, ids.shape[1] + 8)
    assert f"torch.Size([1, {ids.shape[1]}, {model.config.text_config.vocab_size}])" in printed
    # The pipeline section.
    assert len(namespace["batch"]) == 2 and namespace["batch"][0][0]["input_text"] == "Who is there?"
    assert namespace["result"][0]["generated_text"][-1]["role"] == "assistant"
    # The Trainer section trained its two steps, with a loss logged for each.
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 2
    assert 0 < trainer.state.log_history[-1]["train_loss"] < 20  # a cross-entropy over a 402-token vocabulary
    # The streaming section printed its events.
    assert any(line.startswith("[") and " caption " in line for line in printed)


def test_original_checkpoint_snippet_runs_on_a_tiny_original_repo(tmp_path, monkeypatch):
    """The hub snippet, with the hub id replaced by a tiny checkpoint in the authors' layout (offline)."""
    from videollamb_hf.testing_utils import save_tiny_original_repo

    original = save_tiny_original_repo(tmp_path)
    monkeypatch.chdir(original["root"])
    (snippet,) = [b for b in blocks("python") if "ColorfulAI/VideoLLaMB" in b]
    namespace = {}
    exec(compile(snippet.replace("ColorfulAI/VideoLLaMB", original["repo"]), "README.md", "exec"), namespace)
    assert type(namespace["model"]).__name__ == "VideoLlambForConditionalGeneration"
    assert namespace["processor"].video_token_id == namespace["model"].config.video_token_id == 400


@pytest.mark.parametrize(
    "name",
    [
        "bench_scene_tiling.py",
        "bench_long_video.py",
        "bench_video_decode.py",
        "fuzz_video.py",
        "RESULTS.md",
        "parity",
        "bench_streaming.py",
    ],
)
def test_benchmarks_named_in_the_readme_exist(name):
    assert (ROOT / "benchmarks" / name).exists()


def test_example_describe_video_runs_offline(tmp_path):
    import json
    import subprocess
    import sys

    video = ROOT.parent / "shared" / "data" / "videos" / "sample_demo_3.mp4"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "describe_video.py"), str(video), "--max-new-tokens", "4"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600, check=True,
    )  # fmt: skip
    report = json.loads(result.stdout)
    assert report["random_weights"] is True and len(report["frame_timestamps_s"]) == 16
    assert report["frame_timestamps_s"][0] == 0.0 and report["scene_ends_s"][-1] == report["frame_timestamps_s"][-1]
