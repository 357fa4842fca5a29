"""benchmarks/gpu_suite.py on the CPU at the tiny size: the same code paths as on a GPU at 7B, so the suite cannot
rot while no GPU is lent. Run as the device machine runs it (a subprocess, offline, PyAV replaced by the
placeholder), and checked line by line: one finite number per named figure, the CLI's chunked path at the largest
frame count, flash_attention_2 skipped with its reason where flash_attn is missing, the budget guard."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_suite.py"


def load_suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the script imports only the standard library at its top
    return module


suite = load_suite()


def run_suite(*args, tmp_path):
    output = tmp_path / "lines.jsonl"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--size", "tiny", "--without-pyav", "--output", str(output),
         *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    lines = [json.loads(line) for line in result.stdout.splitlines()]  # every stdout line is JSON
    assert output.read_text().splitlines() == result.stdout.splitlines()
    return result, lines


def figure_lines(lines, attn):
    """{(figure, frames): line} for one attention implementation; no figure is printed twice."""
    found = {}
    for line in lines:
        if "figure" in line and line["attn"] == attn:
            key = (line["figure"], line["frames"])
            assert key not in found, f"{key} printed twice"
            found[key] = line
    return found


def expected_keys(plan):
    keys = {(name, None) for name in suite.INIT_FIGURES}
    keys |= {(name, frames) for name in suite.PER_FRAME_COUNT for frames in plan.describe_frames}
    stream = ("stream_per_frame_s", "stream_captions", "stream_encode_per_frame_s")
    keys |= {(name, plan.stream_frames) for name in stream}
    keys |= {(name, plan.sft_frames) for name in ("sft_step_s", "sft_step_peak_mem_gb", "sft_loss")}
    assert {name for name, _ in keys} == set(suite.FIGURES)
    return keys


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return run_suite(tmp_path=tmp_path_factory.mktemp("gpu-suite"))


def test_every_figure_is_one_finite_number(tiny_run):
    result, lines = tiny_run
    assert result.returncode == 0, result.stderr[-3000:]
    plan = suite.PLANS["tiny"]
    sdpa = figure_lines(lines, "sdpa")
    assert set(sdpa) == expected_keys(plan)
    for (name, _), line in sdpa.items():
        assert isinstance(line["value"], float) and math.isfinite(line["value"]), line
        assert line["value"] >= 0 and line["unit"] == suite.FIGURES[name], line
        assert (line["size"], line["device"]) == ("tiny", "cpu")
    wall = [line for line in lines if line.get("figure") == "suite_wall_s"]
    assert len(wall) == 1 and wall[0]["value"] > 0


def test_figures_measure_what_they_say(tiny_run):
    _, lines = tiny_run
    plan = suite.PLANS["tiny"]
    sdpa = figure_lines(lines, "sdpa")
    environment = lines[0]["environment"]
    assert environment["pyav"] == "placeholder" and environment["device"] == "cpu"
    # bf16 weights: 2 bytes per parameter, plus the buffers
    parameters = sdpa[("load_or_init_s", None)]["parameters"]
    assert 2 * parameters <= sdpa[("weights_gb", None)]["value"] * 1e9 < 2.1 * parameters
    largest = max(plan.describe_frames)
    for frames in plan.describe_frames:
        latency, encode = sdpa[("describe_latency_s", frames)], sdpa[("describe_encode_s", frames)]
        assert latency["value"] >= encode["value"] > 0  # the answer comes after the encoding, in the same calls
        assert latency["path"] == ("chunked" if frames == largest else "one_tensor")
        assert latency["new_tokens"] == plan.max_new_tokens
        assert sdpa[("describe_peak_mem_gb", frames)]["memory"] == "process_rss"
    captions = sdpa[("stream_captions", plan.stream_frames)]["value"]
    assert captions == int(captions) >= 1  # the synthetic stream changes scene every 16 frames
    # a random language model's loss is about ln(vocabulary) on any text
    assert abs(sdpa[("sft_loss", plan.sft_frames)]["value"] - math.log(402)) < 1.0
    assert sdpa[("sft_step_peak_mem_gb", plan.sft_frames)]["activation_checkpointing"] is True


def test_flash_attention_is_measured_or_skipped_with_its_reason(tiny_run):
    _, lines = tiny_run
    flash = figure_lines(lines, "flash_attention_2")
    assert set(flash) == expected_keys(suite.PLANS["tiny"])
    if importlib.util.find_spec("flash_attn") is None:
        for line in flash.values():
            assert line["value"] is None and "flash_attn is not installed" in line["skipped"], line


def test_budget_guard_starts_no_measurement(tmp_path, capsys):
    # In this process (PyAV is installed here, so no placeholder replaces it): a spent budget builds no model.
    output = tmp_path / "lines.jsonl"
    argv = ["--device", "cpu", "--size", "tiny", "--attn", "sdpa", "--budget-s", "0", "--output", str(output)]
    assert suite.main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert output.read_text().splitlines() == printed
    lines = [json.loads(line) for line in printed]
    assert lines[0]["environment"]["pyav"] == "installed"
    sdpa = figure_lines(lines, "sdpa")
    assert set(sdpa) == expected_keys(suite.PLANS["tiny"])
    for line in sdpa.values():
        assert line["value"] is None and "--budget-s 0" in line["skipped"], line


def test_figures_are_documented():
    for name in list(suite.FIGURES) + list(suite.RUN_FIGURES):
        assert f"    {name} " in suite.__doc__ or f"`{name}`" in suite.__doc__, name


def test_pyav_placeholder_fails_on_use_only():
    av = suite.pyav_placeholder()
    assert getattr(av, "__file__", None) is None  # what module scanners probe
    with pytest.raises(ImportError, match="PyAV is not installed"):
        av.open("video.mp4")
    assert av.__spec__.name == "av"  # `importlib.util.find_spec("av")` on it answers instead of raising
