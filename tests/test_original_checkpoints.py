"""The authors' LLaVA-layout checkpoints (tiny, built on disk with the real field and key names) load directly,
convert to a self-contained repo, round-trip, load as remote code in isolation and push to a stand-in hub."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from conftest import tiny_video_inputs
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

import videollamb_hf
from videollamb_hf import VideoLlambConfig, VideoLlambForConditionalGeneration, VideoLlambModel
from videollamb_hf.convert_videollamb_original_to_hf import (
    KNOWN_UNUSED_ORIGINAL_KEYS,
    convert_original_checkpoint,
)
from videollamb_hf.convert_videollamb_original_to_hf import (
    main as convert_main,
)
from videollamb_hf.testing_utils import TINY_CORPUS, save_tiny_original_repo


VIDEO_IDS_PROMPT = "USER: <video>\nWhat happens in the video? ASSISTANT:"
TEXT_PROMPT = "USER: What happens in the video? ASSISTANT: A man plays the drums.</s>"


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    return save_tiny_original_repo(tmp_path_factory.mktemp("original"))


@pytest.fixture
def in_root(original, monkeypatch):
    """Run from the folder holding `checkpoints/` (the config's `./checkpoints/LanguageBind_*` paths resolve)."""
    monkeypatch.chdir(original["root"])
    return original


def _copy_repo(original, destination: Path) -> Path:
    shutil.copytree(original["repo"], destination)
    return destination


def _expected_state(model) -> dict:
    """The source model's weights with the placeholder rows as the loader makes them (the mean row)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        rows = state[key][:400]
        state[key] = torch.cat([rows, rows.mean(0, keepdim=True).expand(2, -1)])
    return state


def test_config_is_translated(in_root):
    config = AutoConfig.from_pretrained(in_root["repo"])
    assert type(config) is VideoLlambConfig
    source = in_root["model"].config
    assert config.text_config.vocab_size == 402 and (config.video_token_id, config.image_token_id) == (400, 401)
    assert config.text_config.hidden_size == 32 and config.text_config.num_hidden_layers == 2
    assert config.text_config.rope_parameters["rope_theta"] == 10000.0
    for name in ("bridge_hidden_size", "bridge_intermediate_size", "bridge_num_attention_heads", "num_memory_tokens",
                 "pooled_grid_size", "vision_feature_layer", "num_frames", "bridge_layer_norm_eps"):  # fmt: skip
        assert getattr(config, name) == getattr(source, name), name
    assert config.vision_config.num_hidden_layers == 2 and config.vision_config.image_size == 16
    assert config.image_config.model_type == "clip_vision_model" and config.image_config.patch_size == 4
    assert config._original_layout["video_tower"] == in_root["video_tower"]
    assert "_original_layout" not in config.to_dict() and "_original_layout" not in config.to_json_string()
    # Keyword arguments that name our fields override the translation.
    assert AutoConfig.from_pretrained(in_root["repo"], num_frames=32).num_frames == 32


@pytest.mark.parametrize("entry", ["auto_itt", "class", "auto_model", "trl_name"])
def test_every_weight_lands_where_it_should(in_root, entry):
    expected = _expected_state(in_root["model"])
    if entry == "auto_itt":
        model = AutoModelForImageTextToText.from_pretrained(in_root["repo"])
    elif entry == "class":
        model = VideoLlambForConditionalGeneration.from_pretrained(in_root["repo"])
    elif entry == "trl_name":  # what TRL resolves from `architectures: ["LlavaLlamaForCausalLMRMT"]`
        model = transformers.LlavaLlamaForCausalLMRMT.from_pretrained(in_root["repo"])
    else:
        model = AutoModel.from_pretrained(in_root["repo"])
        assert type(model) is VideoLlambModel
        expected = {k.removeprefix("model."): v for k, v in expected.items() if k.startswith("model.")}
    assert isinstance(model, (VideoLlambForConditionalGeneration, VideoLlambModel))
    state = model.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    # Towers frozen, as the config says.
    assert not any(p.requires_grad for n, p in model.named_parameters() if "_tower." in n)


def test_tower_weights_come_from_languagebind_folders_when_absent(tmp_path, original):
    without = save_tiny_original_repo(tmp_path / "no_towers", include_towers=False)
    with safe_open(os.path.join(without["repo"], "model-00001-of-00002.safetensors"), "pt") as f:
        assert not any("_tower" in k for k in f.keys())
    model = VideoLlambForConditionalGeneration.from_pretrained(
        without["repo"], video_tower=without["video_tower"], image_tower=without["image_tower"]
    )
    expected = _expected_state(without["model"])
    state = model.state_dict()
    for key in expected:
        assert torch.equal(state[key], expected[key]), key
    # Without the folders (and offline), the error says what to pass.
    with pytest.raises(ValueError, match="pass `video_tower=`"):
        VideoLlambForConditionalGeneration.from_pretrained(without["repo"])


def test_bin_tower_folder_needs_the_explicit_opt_in(tmp_path):
    without = save_tiny_original_repo(tmp_path / "bin_towers", include_towers=False)
    for folder in (without["video_tower"], without["image_tower"]):
        state = load_file(os.path.join(folder, "model.safetensors"))
        torch.save(state, os.path.join(folder, "pytorch_model.bin"))
        os.remove(os.path.join(folder, "model.safetensors"))
    towers = {"video_tower": without["video_tower"], "image_tower": without["image_tower"]}
    with pytest.raises(ValueError, match="use_safetensors=None"):
        VideoLlambForConditionalGeneration.from_pretrained(without["repo"], **towers)
    # The main checkpoint is safetensors; the opt-in lets the towers' .bin load (weights_only=True).
    model = VideoLlambForConditionalGeneration.from_pretrained(without["repo"], use_safetensors=None, **towers)
    assert torch.equal(
        model.model.video_tower.pre_layrnorm.weight, without["model"].model.video_tower.pre_layrnorm.weight
    )


def test_bin_only_checkpoint_is_refused_by_default(tmp_path, in_root):
    repo = _copy_repo(in_root, tmp_path / "bin_repo")
    state = {}
    for shard in sorted(repo.glob("*.safetensors")):
        state.update(load_file(str(shard)))
        shard.unlink()
    (repo / "model.safetensors.index.json").unlink()
    torch.save(state, repo / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        VideoLlambForConditionalGeneration.from_pretrained(str(repo))
    model = VideoLlambForConditionalGeneration.from_pretrained(str(repo), use_safetensors=False)
    assert torch.equal(model.lm_head.weight[:400], in_root["model"].lm_head.weight[:400])


def _rewrite_shard(repo: Path, edit):
    shard = repo / "model-00001-of-00002.safetensors"
    state = load_file(str(shard))
    edit(state)
    save_file(state, str(shard), metadata={"format": "pt"})
    index = json.loads((repo / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard.name}
    index["weight_map"].update(dict.fromkeys(state, shard.name))
    (repo / "model.safetensors.index.json").write_text(json.dumps(index))


def test_unexpected_and_missing_keys_are_errors(tmp_path, in_root):
    repo = _copy_repo(in_root, tmp_path / "extra")
    _rewrite_shard(repo, lambda s: s.update({"model.mm_projector.projector.pos_emb.weight": torch.zeros(4, 32)}))
    with pytest.raises(ValueError, match="unexpected.*pos_emb"):
        AutoModelForImageTextToText.from_pretrained(str(repo))

    repo = _copy_repo(in_root, tmp_path / "missing")

    def drop(state):
        for key in [k for k in state if k.startswith("model.mm_projector.")]:
            state.pop(key)

    _rewrite_shard(repo, drop)
    with pytest.raises(ValueError, match="missing.*memory_bridge"):
        AutoModelForImageTextToText.from_pretrained(str(repo))

    # The known-unused buffers older transformers saved are accepted.
    assert any("position_ids" in p for p in KNOWN_UNUSED_ORIGINAL_KEYS)
    repo = _copy_repo(in_root, tmp_path / "buffers")
    position_ids = torch.arange(17)[None]
    _rewrite_shard(repo, lambda s: s.update({"model.video_tower.video_tower.embeddings.position_ids": position_ids}))
    model = AutoModelForImageTextToText.from_pretrained(str(repo))
    assert torch.equal(model.lm_head.weight[:400], in_root["model"].lm_head.weight[:400])


@pytest.mark.parametrize("projector", ["mlp2x_gelu", "linear", "rmt_transformer1x"])
def test_other_llava_projectors_get_a_clear_error(tmp_path, in_root, projector):
    repo = _copy_repo(in_root, tmp_path / projector)
    config = json.loads((repo / "config.json").read_text())
    config["mm_projector_type"] = projector
    (repo / "config.json").write_text(json.dumps(config))
    for load in (AutoConfig.from_pretrained, AutoModelForImageTextToText.from_pretrained):
        with pytest.raises(ValueError, match=f"Unsupported `mm_projector_type` '{projector}'"):
            load(str(repo))


def test_tokenizer_converts_with_identical_ids(in_root):
    import sentencepiece as spm

    processor = AutoProcessor.from_pretrained(in_root["repo"])
    tokenizer = processor.tokenizer
    assert tokenizer.is_fast
    sp = spm.SentencePieceProcessor(model_file=os.path.join(in_root["repo"], "tokenizer.model"))
    texts = [t.replace("</s>", "") for t in TINY_CORPUS] + ["Hello world 2024!", "ünïcödé → bytes"]
    for text in texts + ["line\nbreak", "tabs\tand trailing space "]:
        assert tokenizer(text)["input_ids"] == [sp.bos_id()] + sp.encode(text), text
    # A leading space: the fast tokenizer adds no dummy prefix there; the processor's prompt pieces (the way the
    # authors' slow tokenizer sees them) still get sentencepiece's ids.
    for text in ("  two spaces", " one space", "\nnewline first"):
        assert processor._tokenize_piece(text, 0)[0] == sp.encode(text), text
    # Special tokens in text are parsed as such (as the authors' slow tokenizer does).
    assert tokenizer("drums.</s>", add_special_tokens=False)["input_ids"][-1] == sp.eos_id() == 2
    assert (processor.video_token_id, processor.image_token_id) == (400, 401)
    assert tokenizer.pad_token == "<unk>" and tokenizer.eos_token == "</s>"
    assert processor.video_seq_length == 32 and processor.image_seq_length == 4
    assert processor.video_processor.crop_size == {"height": 16, "width": 16}
    assert processor.image_processor.do_pad  # image_aspect_ratio: pad


def test_direct_load_generates_from_a_real_video(in_root):
    from conftest import VIDEOS

    processor = AutoProcessor.from_pretrained(in_root["repo"])
    model = AutoModelForImageTextToText.from_pretrained(in_root["repo"])
    inputs = processor(text=VIDEO_IDS_PROMPT, videos=str(VIDEOS / "sample_demo_1.mp4"), return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    assert new.shape[0] >= 1 and not set(new.tolist()) & {400, 401}
    # The same tokens as the source model (same weights) gives.
    expected = in_root["model"].generate(**inputs, max_new_tokens=5, do_sample=False)
    assert torch.equal(out, expected)


def _logits(model, config, seed=0):
    with torch.no_grad():
        return model(**tiny_video_inputs(config, seed)).logits


def test_conversion_round_trip_is_exact(tmp_path, in_root):
    output = tmp_path / "converted"
    assert convert_main([in_root["repo"], str(output)]) == 0
    names = {p.name for p in output.iterdir()}
    for expected in ("config.json", "generation_config.json", "processor_config.json", "tokenizer.json",
                     "chat_template.jinja", "README.md", "modeling_videollamb.py", "configuration_videollamb.py",
                     "processing_videollamb.py", "video_processing_videollamb.py"):  # fmt: skip
        assert expected in names, expected
    assert not list(tmp_path.glob(".converted.incomplete-*"))
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "videollamb" and "auto_map" in config and "_original_layout" not in config
    generation = json.loads((output / "generation_config.json").read_text())
    assert (generation["eos_token_id"], generation["pad_token_id"], generation["do_sample"]) == (2, 0, False)
    with safe_open(str(next(output.glob("*.safetensors"))), "pt") as f:
        keys = set(f.keys())
    direct = AutoModelForImageTextToText.from_pretrained(in_root["repo"])
    assert keys == set(direct.state_dict())  # native names, nothing else
    converted = AutoModelForImageTextToText.from_pretrained(str(output))
    for key, value in direct.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), key
    assert torch.equal(_logits(converted, converted.config), _logits(direct, direct.config))
    card = (output / "README.md").read_text()
    assert "trust_remote_code=True" in card and "@article{videollamb" in card and in_root["repo"] in card
    # save_pretrained -> from_pretrained keeps the native names.
    converted.save_pretrained(tmp_path / "resaved")
    with safe_open(str(tmp_path / "resaved" / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == keys
    # The converted processor equals the direct one.
    a = AutoProcessor.from_pretrained(str(output))(text=TEXT_PROMPT)["input_ids"]
    b = AutoProcessor.from_pretrained(in_root["repo"])(text=TEXT_PROMPT)["input_ids"]
    assert a.tolist() == b.tolist()


def test_converter_refuses_to_overwrite_and_is_idempotent(tmp_path, in_root, capsys):
    output = tmp_path / "out"
    assert convert_main([in_root["repo"], str(output)]) == 0
    first = {p.name: p.read_bytes() for p in output.iterdir()}
    assert convert_main([in_root["repo"], str(output)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in output.iterdir()} == first
    assert convert_main([in_root["repo"], str(output), "--overwrite"]) == 0
    assert {p.name: p.read_bytes() for p in output.iterdir()} == first


def test_injected_failure_leaves_nothing_that_looks_complete(tmp_path, in_root, monkeypatch):
    from videollamb_hf import VideoLlambProcessor

    def fail(*args, **kwargs):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(VideoLlambProcessor, "save_pretrained", fail)
    output = tmp_path / "out"
    with pytest.raises(OSError, match="injected"):
        convert_original_checkpoint(in_root["repo"], output)
    assert not output.exists()
    assert list(tmp_path.iterdir()) == []


def test_dtype_and_attention_pass_through(in_root):
    model = AutoModelForImageTextToText.from_pretrained(
        in_root["repo"], dtype=torch.bfloat16, attn_implementation="eager"
    )
    assert model.dtype == torch.bfloat16 and model.model.memory_bridge.read_memory_emb.dtype == torch.bfloat16
    assert model.config.text_config._attn_implementation == "eager"
    assert torch.equal(model.lm_head.weight[:400], in_root["model"].lm_head.weight[:400].bfloat16())


ISOLATED_LOADER = r"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "videollamb_hf":
            raise ModuleNotFoundError("videollamb_hf is not importable here")
sys.meta_path.insert(0, Block())
sys.path = [p for p in sys.path if p not in ("", ".")]
try:
    import videollamb_hf
    raise SystemExit("videollamb_hf is importable")
except ModuleNotFoundError:
    pass
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor
repo, inputs, out = sys.argv[1:4]
model = AutoModelForImageTextToText.from_pretrained(repo, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(repo, trust_remote_code=True)
assert "videollamb_hf" not in sys.modules and type(model).__module__.startswith("transformers_modules")
with torch.no_grad():
    logits = model(**torch.load(inputs)).logits
ids = processor(text="USER: What happens in the video? ASSISTANT: A man plays the drums.</s>")["input_ids"]
torch.save({"logits": logits, "ids": ids, "module": type(model).__module__}, out)
"""


def test_remote_code_loads_in_isolation_with_identical_logits(tmp_path, in_root):
    output = convert_original_checkpoint(in_root["repo"], tmp_path / "remote")
    model = AutoModelForImageTextToText.from_pretrained(str(output))
    inputs = tiny_video_inputs(model.config, seed=3)
    torch.save(inputs, tmp_path / "inputs.pt")
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    script = tmp_path / "isolated.py"
    script.write_text(ISOLATED_LOADER)
    run = subprocess.run(
        [sys.executable, "-I", str(script), str(output), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = torch.load(tmp_path / "out.pt")
    assert result["module"].startswith("transformers_modules")
    with torch.no_grad():
        assert torch.equal(result["logits"], model(**inputs).logits)
    expected_ids = AutoProcessor.from_pretrained(str(output))(text=TEXT_PROMPT)["input_ids"]
    assert torch.equal(torch.as_tensor(result["ids"]), torch.as_tensor(expected_ids))


class StandInHub:
    """Records what would be uploaded: `create_repo`, `create_commit` (model.push_to_hub) and `upload_folder`."""

    def __init__(self, root: Path):
        self.root = root
        self.commits = []

    def create_repo(self, repo_id, **kwargs):
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def create_commit(self, repo_id, operations, **kwargs):
        destination = self.root / repo_id
        for operation in operations:
            target = destination / operation.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(operation.path_or_fileobj, target)
        self.commits.append((repo_id, sorted(op.path_in_repo for op in operations)))

    def upload_folder(self, repo_id, folder_path, **kwargs):
        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True)
        self.commits.append((repo_id, sorted(p.name for p in Path(folder_path).iterdir())))


@pytest.fixture
def stand_in_hub(tmp_path, monkeypatch):
    import transformers.utils.hub as hub

    stand_in = StandInHub(tmp_path / "hub")
    monkeypatch.setattr(hub, "_hf_api", stand_in)
    monkeypatch.setattr(hub, "create_and_tag_model_card", lambda *a, **k: __import__("huggingface_hub").ModelCard(""))
    return stand_in


def test_push_to_hub_uploads_a_remote_code_repo(tmp_path, in_root, stand_in_hub):
    output = convert_original_checkpoint(in_root["repo"], tmp_path / "pushed", push_to_hub="me/videollamb-tiny")
    repo_id, files = stand_in_hub.commits[-1]
    assert repo_id == "me/videollamb-tiny" and set(files) == {p.name for p in output.iterdir()}
    model = AutoModelForImageTextToText.from_pretrained(str(output))
    model.push_to_hub("me/videollamb-model")
    uploaded = stand_in_hub.root / "me/videollamb-model"
    assert (uploaded / "modeling_videollamb.py").exists() and (uploaded / "model.safetensors").exists()
    assert json.loads((uploaded / "config.json").read_text())["auto_map"]["AutoModelForImageTextToText"] == (
        "modeling_videollamb.VideoLlambForConditionalGeneration"
    )
    reloaded = AutoModelForImageTextToText.from_pretrained(str(uploaded))
    assert torch.equal(_logits(reloaded, reloaded.config), _logits(model, model.config))


def test_package_registers_the_original_names():
    assert transformers.LlavaLlamaForCausalLMRMT is VideoLlambForConditionalGeneration
    assert transformers.LlavaLlamaForCausalLM is VideoLlambForConditionalGeneration
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    assert CONFIG_MAPPING["llava_llama"] is videollamb_hf.VideoLlambOriginalConfig


def test_trl_builds_our_model_from_an_original_repo(in_root):
    from trl.trainer.utils import create_model_from_path

    model = create_model_from_path(in_root["repo"])  # TRL's own resolution (`architectures` -> transformers.X)
    assert type(model) is VideoLlambForConditionalGeneration and model.dtype == torch.float32
    assert torch.equal(model.lm_head.weight[:400], in_root["model"].lm_head.weight[:400])


def test_towers_resolve_to_the_languagebind_hub_repos_through_the_cache(tmp_path, original, monkeypatch):
    """`./checkpoints/LanguageBind_Video_merge` (absent here) -> `LanguageBind/LanguageBind_Video_merge`, read from
    a hub cache (`cache_dir`), offline."""
    without = save_tiny_original_repo(tmp_path / "hubtowers", include_towers=False)
    cache = tmp_path / "hub-cache"
    for folder, repo in ((without["video_tower"], "LanguageBind--LanguageBind_Video_merge"),
                         (without["image_tower"], "LanguageBind--LanguageBind_Image")):  # fmt: skip
        snapshot = cache / f"models--{repo}" / "snapshots" / ("0" * 40)
        shutil.copytree(folder, snapshot)
        (cache / f"models--{repo}" / "refs").mkdir()
        (cache / f"models--{repo}" / "refs" / "main").write_text("0" * 40)
    monkeypatch.chdir(tmp_path)  # the config's relative paths do not exist from here
    model = VideoLlambForConditionalGeneration.from_pretrained(without["repo"], cache_dir=str(cache))
    assert model.config._original_layout["video_tower"] == "LanguageBind/LanguageBind_Video_merge"
    expected = _expected_state(without["model"])
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_module_entry_point_converts_to_bfloat16(tmp_path, in_root):
    output = tmp_path / "bf16"
    run = subprocess.run(
        [sys.executable, "-m", "videollamb_hf.convert_videollamb_original_to_hf", in_root["repo"], str(output),
         "--dtype", "bfloat16"],
        capture_output=True, text=True, cwd=in_root["root"], env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().endswith(str(output))
    with safe_open(str(output / "model.safetensors"), "pt") as f:
        assert f.get_tensor("lm_head.weight").dtype == torch.bfloat16
    run = subprocess.run([sys.executable, "-m", "videollamb_hf", "convert", in_root["repo"], str(output)],
                         capture_output=True, text=True, cwd=in_root["root"], timeout=600)  # fmt: skip
    assert run.returncode == 1 and "--overwrite" in run.stderr


def test_quantized_loads_keep_towers_and_bridge_unquantized():
    from transformers import BitsAndBytesConfig

    from videollamb_hf.modeling_videollamb import UNQUANTIZED_MODULES, keep_unquantized

    config = keep_unquantized(BitsAndBytesConfig(load_in_4bit=True))
    assert config.llm_int8_skip_modules == UNQUANTIZED_MODULES
    assert keep_unquantized(
        BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["x"])
    ).llm_int8_skip_modules == ["x"]
    assert keep_unquantized({"load_in_4bit": True})["llm_int8_skip_modules"] == UNQUANTIZED_MODULES


def test_device_map_and_local_files_only_pass_through(in_root):
    for device_map in ("cpu", "auto", {"": "cpu"}):
        model = AutoModelForImageTextToText.from_pretrained(
            in_root["repo"], device_map=device_map, local_files_only=True
        )
        assert {p.device.type for p in model.parameters()} == {"cpu"}
        assert torch.equal(model.lm_head.weight[:400], in_root["model"].lm_head.weight[:400])


def test_pipelines_load_original_layout_repos(in_root):
    """`pipeline(...)` loads the processor with `dtype="auto"`: the translated config must take it (it once failed
    with `torch has no attribute 'auto'`)."""
    from conftest import VIDEOS
    from transformers import pipeline

    assert AutoConfig.from_pretrained(in_root["repo"], dtype="auto").model_type == "videollamb"
    pipe = pipeline("video-text-to-text", model=in_root["repo"])
    out = pipe(str(VIDEOS / "sample_demo_1.mp4"), "What happens?", max_new_tokens=2, return_full_text=False)
    assert isinstance(out[0]["generated_text"], str) and pipe.model.config.model_type == "videollamb"


_CONVERT_MEMORY_SCRIPT = r"""
import json, resource, sys
import psutil
from videollamb_hf.convert_videollamb_original_to_hf import convert_original_checkpoint

repo, towers, output, warm = sys.argv[1:5]
# A first, tiny conversion: what importing and first calls cost is not what is measured.
from videollamb_hf.testing_utils import save_random_checkpoint
tiny = save_random_checkpoint(warm + "/in", size="tiny", layout="original")
convert_original_checkpoint(tiny["repo"], warm + "/out", video_tower=tiny["video_tower"], image_tower=tiny["image_tower"])
baseline = psutil.Process().memory_info().rss
convert_original_checkpoint(repo, output, video_tower=towers + "/LanguageBind_Video_merge",
                            image_tower=towers + "/LanguageBind_Image", max_shard_size="40MB")
peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024  # this process only (ru_maxrss keeps a parent's peak across exec)
print(json.dumps({"baseline": baseline, "peak": peak}))
"""


def test_conversion_streams_instead_of_holding_the_model(tmp_path):
    """`convert` holds about one input shard and one tensor, never the model: a 150 MB checkpoint in 8 shards
    converts with its peak memory less than 40% of the weights above the memory before (measured: about 20%, one
    shard; load -> save_pretrained held all of it, and more)."""
    from videollamb_hf.testing_utils import TINY_TEXT, get_tiny_config, save_random_checkpoint

    text = dict(TINY_TEXT, hidden_size=512, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=8,
                num_key_value_heads=8, vocab_size=402)  # fmt: skip
    config = get_tiny_config(text_config=text, video_token_id=400, image_token_id=401)
    written = save_random_checkpoint(tmp_path / "in", size="tiny", layout="original", dtype=torch.float32,
                                     num_shards=8, config=config)  # fmt: skip
    assert written["total_bytes"] > 140e6 and written["largest_shard_bytes"] < 25e6
    run = subprocess.run(
        [sys.executable, "-c", _CONVERT_MEMORY_SCRIPT, written["repo"], str(tmp_path / "in" / "checkpoints"),
         str(tmp_path / "out"), str(tmp_path / "warm")],
        capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    memory = json.loads(run.stdout.strip().splitlines()[-1])
    grown = memory["peak"] - memory["baseline"]
    assert grown < 0.4 * written["total_bytes"], (grown / 1e6, written["total_bytes"] / 1e6)
    # ... and writes the same weights the loader loads.
    direct = AutoModelForImageTextToText.from_pretrained(
        written["repo"], video_tower=written["video_tower"], image_tower=written["image_tower"]
    )
    converted = AutoModelForImageTextToText.from_pretrained(tmp_path / "out")
    assert len(list((tmp_path / "out").glob("model-*.safetensors"))) >= 4
    for key, value in direct.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), key
