"""Tiny, structurally complete VideoLLaMB pieces for tests, benchmarks and offline smoke runs, and the literal
(slow) SceneTilling reference that the fast one is checked against."""

import torch

from .configuration_videollamb import VideoLlambConfig


TINY_TOWER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "projection_dim": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 16,
    "patch_size": 4,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}

TINY_TEXT = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "vocab_size": 100,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "tie_word_embeddings": False,
}


# A small language model whose attention head size (64) vLLM's CPU attention supports (the tiny one's 8 is not).
SERVING_TEXT = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 2, "num_key_value_heads": 2}


def get_tiny_config(**overrides) -> VideoLlambConfig:
    """A tiny VideoLLaMB: towers of 2 layers and width 32 on 16x16 px frames (patch 4: a 4x4 grid pooled to 2x2),
    LLaMA of hidden 32 and vocabulary 100 (placeholders 98 `<video>` and 99 `<image>`), a bridge of 4 memory tokens.
    A video then takes 8 x 4 = 32 slots, an image 4. `overrides` replace any field (sub-configs as dicts)."""
    fields = {
        "text_config": dict(TINY_TEXT),
        "vision_config": dict(TINY_TOWER),
        "image_config": dict(TINY_TOWER, model_type="clip_vision_model"),
        "video_token_id": 98,
        "image_token_id": 99,
        "num_memory_tokens": 4,
        "bridge_hidden_size": 32,
        "bridge_num_attention_heads": 4,
        "bridge_intermediate_size": 64,
        "pooled_grid_size": 2,
        "tower_chunk_size": 16,
    }
    fields.update(overrides)
    return VideoLlambConfig(**fields)


def get_tiny_model(seed: int = 0, **overrides):
    """A randomly initialised tiny [`VideoLlambForConditionalGeneration`] in eval mode (see `get_tiny_config`)."""
    from .modeling_videollamb import VideoLlambForConditionalGeneration

    torch.manual_seed(seed)
    return VideoLlambForConditionalGeneration(get_tiny_config(**overrides)).eval()


def literal_depth_scores(similarities: torch.Tensor) -> torch.Tensor:
    """Depth scores exactly as the spec words them (and the original computes them): for each gap, climb left and
    right while the similarity does not decrease. Two nested Python loops, O(n^2) in the worst case."""
    n = similarities.shape[0]
    depth = torch.zeros_like(similarities)
    for i in range(n):
        left = similarities[i]
        for j in range(i - 1, -1, -1):
            if similarities[j] >= left:
                left = similarities[j]
            else:
                break
        right = similarities[i]
        for j in range(i + 1, n):
            if similarities[j] >= right:
                right = similarities[j]
            else:
                break
        depth[i] = left + right - 2 * similarities[i]
    return depth


def literal_scene_boundaries(
    features: torch.Tensor, mode: str = "top_k", top_k: int = 3, alpha: float = 0.5, max_boundaries: int = 15
) -> list[int]:
    """SceneTilling boundaries from `literal_depth_scores`, with the documented choices of `find_scene_boundaries`
    where the original is undefined (k clamped, one frame, fewer than 3 gaps in threshold mode, half precision)."""
    if features.shape[0] == 1:
        return [0]
    if features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    similarities = torch.cosine_similarity(features[:-1], features[1:])
    return literal_boundaries_from_similarities(similarities, mode, top_k, alpha, max_boundaries)


def literal_boundaries_from_similarities(
    similarities: torch.Tensor, mode: str = "top_k", top_k: int = 3, alpha: float = 0.5, max_boundaries: int = 15
) -> list[int]:
    """The literal definition from the similarity curve on (nested-loop depths, then selection)."""
    n = similarities.shape[0] + 1
    depth = literal_depth_scores(similarities)
    if mode == "top_k":
        found = torch.topk(depth, min(top_k, n - 1)).indices.sort()[0].tolist()
    elif n - 1 < 3:
        found = []
    else:
        std, mean = torch.std_mean(depth)
        found = (depth > mean + alpha * std).nonzero().squeeze(-1).tolist()
        if len(found) > max_boundaries:
            found = torch.topk(depth, max_boundaries).indices.sort()[0].tolist()
    if not found or found[-1] != n - 1:
        found.append(n - 1)
    return found


TINY_CORPUS = [
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions.",
    "USER: What is happening in the video? ASSISTANT: A man is playing the drums on a street.</s>",
    "Answer with the option's letter from the given choices directly.",
    "A. dancing\nB. reading a book\nC. cooking dinner\nD. sleeping 0123456789",
    "The young man seated on a cloud in the sky is reading a book. Describe the video in one sentence.",
    "What happens after the cut? A baby reads; hands arrange pepper slices; the drummer plays.",
]


def save_tiny_tokenizer(directory, vocab_size: int | None = None) -> str:
    """Train a tiny sentencepiece BPE model with LLaMA's trainer settings (byte fallback, dummy prefix, split
    digits, identity normalisation, whitespace-only pieces; ids 0/1/2 = unk/bos/eos) and write `tokenizer.model` +
    `tokenizer_config.json` to `directory` (vocabulary: 400 pieces). `vocab_size` (e.g. LLaMA's 32000): pad the
    vocabulary to that many ids with `UNUSED` pieces (never produced by encoding), so that `<video>` / `<image>`
    get the ids the released model reserves. Returns the directory."""
    import io
    import json
    from pathlib import Path

    import sentencepiece as spm

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TINY_CORPUS * 20),
        model_writer=model,
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    serialized = model.getvalue()
    if vocab_size is not None:
        from sentencepiece import sentencepiece_model_pb2

        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(serialized)
        if vocab_size < len(proto.pieces):
            raise ValueError(f"`vocab_size` {vocab_size} is below the trained vocabulary ({len(proto.pieces)}).")
        for i in range(len(proto.pieces), vocab_size):
            piece = proto.pieces.add()
            piece.piece, piece.score, piece.type = (
                f"<unused{i}>",
                0.0,
                sentencepiece_model_pb2.ModelProto.SentencePiece.UNUSED,
            )
        serialized = proto.SerializeToString()
    (directory / "tokenizer.model").write_bytes(serialized)
    config = {"tokenizer_class": "LlamaTokenizer", "legacy": False, "add_bos_token": True, "add_eos_token": False,
              "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "padding_side": "left"}  # fmt: skip
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return str(directory)


def get_tiny_processor(directory):
    """A [`VideoLlambProcessor`] for the tiny model: the tiny tokenizer (written to `directory`), 16 px frames and
    images, 32 slots per video and 4 per image (as `get_tiny_config`'s bridge gives)."""
    from transformers import AutoTokenizer

    from .image_processing_videollamb import VideoLlambImageProcessor
    from .processing_videollamb import VideoLlambProcessor
    from .video_processing_videollamb import VideoLlambVideoProcessor

    tokenizer = AutoTokenizer.from_pretrained(save_tiny_tokenizer(directory))
    size, crop = {"shortest_edge": 16}, {"height": 16, "width": 16}
    return VideoLlambProcessor(
        image_processor=VideoLlambImageProcessor(size=size, crop_size=crop),
        video_processor=VideoLlambVideoProcessor(size=size, crop_size=crop),
        tokenizer=tokenizer,
        video_seq_length=32,
        image_seq_length=4,
    )


def save_tiny_repo(directory, seed: int = 0, text: dict | None = None, **overrides) -> str:
    """Write a complete tiny VideoLLaMB folder (random weights): the tiny processor and a tiny model whose
    vocabulary and placeholder ids match its tokenizer. Loadable with `AutoModelForImageTextToText` and
    `AutoProcessor`; what it generates is noise. `text`: language-model fields that differ from `TINY_TEXT` (e.g.
    `SERVING_TEXT`, whose head size vLLM's CPU attention takes); `overrides`: other config fields. Returns the
    directory."""
    import torch

    from .modeling_videollamb import VideoLlambForConditionalGeneration

    processor = get_tiny_processor(directory)
    text = dict(
        TINY_TEXT, **(text or {}), vocab_size=len(processor.tokenizer), pad_token_id=processor.tokenizer.pad_token_id
    )
    config = get_tiny_config(
        text_config=text, video_token_id=processor.video_token_id, image_token_id=processor.image_token_id,
        **overrides,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = VideoLlambForConditionalGeneration(config)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.config.random_weights = True  # tools label what such a model says as noise
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)


def original_keys(config) -> list[str]:
    """The authors' `state_dict()` key names for a model of `config`'s sizes, written out from their module
    structure (LLaVA's LLaMA, LanguageBind towers, `rmt_r_transformer1x` bridge + retriever; for the
    VideoLLaMB_Mem variant, `segment_position_embeddings > 0`: a CLIP video tower under `vision_model` and
    `abs_vid_pe`)."""
    mem = config.segment_position_embeddings > 0

    def linear(prefix):
        return [f"{prefix}.weight", f"{prefix}.bias"]

    keys = ["lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"]
    for i in range(config.text_config.num_hidden_layers):
        p = f"model.layers.{i}"
        keys += [f"{p}.self_attn.{x}_proj.weight" for x in "qkvo"]
        keys += [f"{p}.mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
        keys += [f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight"]
    video_prefix = "model.video_tower.video_tower" + (".vision_model" if mem else "")
    for tower, layers, temporal in (
        (video_prefix, config.vision_config.num_hidden_layers, config.vision_config.add_time_attn),
        ("model.image_tower.image_tower", config.image_config.num_hidden_layers, False),
    ):
        keys += [f"{tower}.embeddings.class_embedding", f"{tower}.embeddings.patch_embedding.weight"]
        keys += [f"{tower}.embeddings.position_embedding.weight"]
        keys += linear(f"{tower}.pre_layrnorm") + linear(f"{tower}.post_layernorm")
        for i in range(layers):
            p = f"{tower}.encoder.layers.{i}"
            for attn in ("self_attn", "temporal_attn") if temporal else ("self_attn",):
                for x in ("q", "k", "v", "out"):
                    keys += linear(f"{p}.{attn}.{x}_proj")
            keys += linear(f"{p}.layer_norm1") + linear(f"{p}.layer_norm2")
            keys += linear(f"{p}.mlp.fc1") + linear(f"{p}.mlp.fc2")
            if temporal:
                keys += [f"{p}.temporal_embedding"] + linear(f"{p}.temporal_layer_norm1")
    attention = ["q_proj", "k_proj", "v_proj", "residual.dense", "residual.layernorm"]
    for i in range(config.bridge_num_layers):
        p = f"model.mm_projector.projector.layers.{i}"
        for part in ("selfattention", "crossattention"):
            for x in attention:
                keys += linear(f"{p}.{part}.{x}")
        keys += linear(f"{p}.mlp.0") + linear(f"{p}.residual.dense") + linear(f"{p}.residual.layernorm")
    keys += linear("model.mm_projector.projector.proj.0")
    keys += ["model.mm_projector.projector.read_memory_emb", "model.mm_projector.projector.memory_tokens"]
    for part in ("selfattention", "crossattention"):
        for x in attention:
            keys += linear(f"model.mm_projector.retrieval.layers.0.{part}.{x}")
    if mem:
        keys.append("model.mm_projector.abs_vid_pe.weight")
    return keys


def original_state_dict(model) -> dict:
    """`model`'s weights under the authors' key names, with their 2-row-smaller vocabulary (no placeholders)."""
    from .original_format import convert_original_key

    ours = model.state_dict()
    inverse = {convert_original_key(k): k for k in original_keys(model.config)}
    state = {inverse[k]: v.clone() for k, v in ours.items()}
    vocab = model.config.text_config.vocab_size - 2
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        state[key] = state[key][:vocab].clone()
    return state


def _languagebind_folder(
    directory, tower_state: dict, config, temporal: bool, kind: str | None = None, lora: dict | None = None
) -> None:
    """A LanguageBind-layout (or, with `kind="clip"`, OpenAI CLIP-layout) folder: a whole CLIP config
    (`vision_config` + `text_config`) and `model.safetensors` with `vision_model.*` (`tower_state`: the tower's
    weights under our names, which are LanguageBind's), a tiny text half and the projections. `lora` (`{"r": ..., "alpha": ...}`): the encoder as `LanguageBindImage` saves it LoRA-wrapped
    (see `lora_wrap_encoder_state`), with `lora_r` / `lora_alpha` in its config."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vision = {k: getattr(config, k) for k in TINY_TOWER}
    vision.update(add_time_attn=temporal, num_frames=8, lora_r=lora["r"] if lora else 0,
                  lora_alpha=lora["alpha"] if lora else 16, lora_dropout=0.0, force_patch_dropout=0.0,
                  video_decode_backend="decord")  # fmt: skip
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
            "vocab_size": 100, "max_position_embeddings": 77, "projection_dim": 32}  # fmt: skip
    kind = kind or ("LanguageBindVideo" if temporal else "LanguageBindImage")
    if kind == "clip":
        for key in ("add_time_attn", "num_frames", "lora_r", "lora_alpha", "lora_dropout", "force_patch_dropout",
                    "video_decode_backend"):  # fmt: skip
            vision.pop(key)
        header = {"model_type": "clip", "architectures": ["CLIPModel"]}
    else:
        header = {"model_type": kind, "architectures": [kind]}
    config_json = {**header, "projection_dim": 32, "text_config": text, "vision_config": vision}
    (directory / "config.json").write_text(json.dumps(config_json, indent=2))
    if kind == "clip":  # OpenAI's CLIP repos ship their image processor
        size = vision["image_size"]
        preprocessor = {"crop_size": size, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                        "feature_extractor_type": "CLIPFeatureExtractor", "image_processor_type": "CLIPImageProcessor",
                        "image_mean": [0.48145466, 0.4578275, 0.40821073], "resample": 3,
                        "image_std": [0.26862954, 0.26130258, 0.27577711], "size": size}  # fmt: skip
        (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    state = {f"vision_model.{k}": v.contiguous().clone() for k, v in tower_state.items()}
    if lora:
        state = lora_wrap_encoder_state(state, "vision_model.encoder.", lora["r"], lora["alpha"])
    generator = torch.Generator().manual_seed(1)
    state["text_model.embeddings.token_embedding.weight"] = torch.randn(100, 32, generator=generator)
    state["text_model.final_layer_norm.weight"] = torch.ones(32)
    state["text_projection.weight"] = torch.randn(32, 32, generator=generator)
    state["visual_projection.weight"] = torch.randn(32, 32, generator=generator)
    state["logit_scale"] = torch.tensor(2.6592)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


def original_flat_config(
    config, video_tower_path: str, image_tower: bool = True, hard_coded: dict | None = None, dtype: str = "float32"
) -> dict:
    """The authors' flat `llava_llama` config.json for a model of `config`'s sizes (field for field as the released
    `ColorfulAI/VideoLLaMB` has them). `hard_coded`: numbers the authors' code hard-codes (memory tokens, pool) that
    differ from the release, stated under `"videollamb_hf"` (the tiny checkpoints)."""
    text = config.text_config
    flat = {
        "_name_or_path": "./checkpoints/videollamb-llava-1.5-7b",
        "architectures": ["LlavaLlamaForCausalLMRMT"],
        "model_type": "llava_llama",
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
        "hidden_act": "silu", "hidden_size": text.hidden_size, "intermediate_size": text.intermediate_size,
        "initializer_range": 0.02, "max_position_embeddings": text.max_position_embeddings,
        "num_attention_heads": text.num_attention_heads, "num_hidden_layers": text.num_hidden_layers,
        "num_key_value_heads": text.num_key_value_heads, "pretraining_tp": 1, "rms_norm_eps": 1e-5,
        "rope_scaling": None, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": dtype,
        "transformers_version": "4.39.1", "use_cache": True, "vocab_size": text.vocab_size - 2,
        "X": ["VIDEO", "IMAGE"], "freeze_mm_mlp_adapter": False, "image_aspect_ratio": "pad",
        "mm_attention_probs_dropout_prob": 0.1, "mm_hidden_act": "gelu", "mm_hidden_dropout_prob": 0.1,
        "mm_hidden_size": config.bridge_hidden_size, "mm_image_tower": "./checkpoints/LanguageBind_Image",
        "mm_intermediate_size": config.bridge_intermediate_size, "mm_layer_norm_eps": 1e-12,
        "mm_num_attention_heads": config.bridge_num_attention_heads, "mm_projector_lr": None,
        "mm_projector_type": "rmt_r_transformer1x", "mm_use_x_patch_token": False, "mm_use_x_start_end": False,
        "mm_video_tower": video_tower_path,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2, "num_frames": 16, "tokenizer_model_max_length": 2048,
        "tokenizer_padding_side": "right", "tune_mm_mlp_adapter": False, "use_mm_proj": True,
    }  # fmt: skip
    if hard_coded:
        flat["videollamb_hf"] = dict(hard_coded)
    if not image_tower:
        flat["X"] = ["VIDEO"]
        del flat["mm_image_tower"]
    return flat


def lora_wrap_encoder_state(state: dict, encoder_prefix: str, rank: int, lora_alpha: float, seed: int = 2) -> dict:
    """`state` as PEFT saves a LoRA-wrapped encoder (LanguageBindImage with `lora_r != 0`): every key under
    `encoder_prefix` moves below `base_model.model.`; each `self_attn.{q,k,v,out}_proj` becomes `base_layer.{weight,
    bias}` + random nonzero `lora_A.default.weight` (r, in) / `lora_B.default.weight` (out, r), with the base weight
    chosen so that the merged `W + (lora_alpha / r) * B @ A` is the original weight (to float32 rounding)."""
    generator = torch.Generator().manual_seed(seed)
    wrapped = {}
    for key, value in state.items():
        if not key.startswith(encoder_prefix):
            wrapped[key] = value
            continue
        inner = key.removeprefix(encoder_prefix)
        base = f"{encoder_prefix}base_model.model."
        module, _, leaf = inner.rpartition(".")
        if module.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj", "out_proj") and ".self_attn." in f".{module}":
            if leaf == "weight":
                lora_a = 0.3 * torch.randn(rank, value.shape[1], generator=generator)
                lora_b = 0.3 * torch.randn(value.shape[0], rank, generator=generator)
                wrapped[f"{base}{module}.base_layer.weight"] = value - (lora_alpha / rank) * (lora_b @ lora_a)
                wrapped[f"{base}{module}.lora_A.default.weight"] = lora_a
                wrapped[f"{base}{module}.lora_B.default.weight"] = lora_b
            else:
                wrapped[f"{base}{module}.base_layer.{leaf}"] = value
        else:
            wrapped[f"{base}{inner}"] = value
    return wrapped


def save_tiny_original_repo(
    directory,
    seed: int = 0,
    include_towers: bool = True,
    num_shards: int = 2,
    variant: str = "main",
    tower: dict | None = None,
    image_tower: bool = True,
    image_tower_lora: dict | None = None,
) -> dict:
    """A tiny checkpoint in the authors' LLaVA layout, as `ColorfulAI/VideoLLaMB` is on the Hub (real field and key
    names, tiny sizes): flat `llava_llama` config.json with `mm_*` fields and the towers named as
    `./checkpoints/LanguageBind_*`, `num_shards` safetensors shards + index under the original key names (32,000 ->
    here 400 vocabulary rows, no placeholders), a sentencepiece `tokenizer.model` and no processor files; beside it
    `checkpoints/LanguageBind_Video_merge` and `checkpoints/LanguageBind_Image` folders in LanguageBind's layout
    (the config's relative tower paths resolve when the working directory is `directory`, as the authors ran it).
    The numbers the authors hard-code (memory tokens, pool) are stated under the config's `"videollamb_hf"` key.

    `variant="mem"` writes the `ColorfulAI/VideoLLaMB_Mem` layout instead: the video tower a plain CLIP
    (`./checkpoints/clip-vit-large-patch14-336`, an OpenAI-CLIP-layout folder), `abs_vid_pe` in the bridge, and
    the tiny bridge pools the 4 x 4 patch grid to 3 x 3 (overlapping windows, as 24 -> 14).

    `tower`: fields of both towers that differ from `TINY_TOWER` (e.g. `{"hidden_size": 128,
    "num_attention_heads": 2, "intermediate_size": 256}`; the bridge takes the same width). `image_tower=False`: a
    video-only checkpoint (no `mm_image_tower`, `X: ["VIDEO"]`, no image-tower weights or folder), as MM-NIAVH
    writes VideoLLaMB_Mem. `image_tower_lora` (`{"r": 2, "alpha": 16}`): the image encoder LoRA-wrapped as
    `LanguageBindImage` saves it (`lora_wrap_encoder_state`), in the checkpoint and in its tower folder.

    Returns a dict: `repo` (the checkpoint folder), `video_tower`, `image_tower` (the tower folders), `model` (the
    HF-layout model whose weights were written, vocabulary 402).
    """
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from .modeling_videollamb import VideoLlambForConditionalGeneration

    root = Path(directory)
    repo = root / "videollamb-llava-1.5-7b"
    save_tiny_tokenizer(repo)
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}
    (repo / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    tokenizer_config = json.loads((repo / "tokenizer_config.json").read_text())
    tokenizer_config.update(pad_token="<unk>", padding_side="right", model_max_length=2048)
    (repo / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    from .original_format import MEM_VARIANT_FIELDS

    if variant not in ("main", "mem"):
        raise ValueError(f"`variant` must be 'main' or 'mem', got {variant!r}.")
    vocab = 400
    tower = dict(TINY_TOWER, **(tower or {}))
    extra = {"vision_config": dict(tower), "image_config": dict(tower, model_type="clip_vision_model"),
             "bridge_hidden_size": tower["hidden_size"]}  # fmt: skip
    if variant == "mem":
        extra.update(MEM_VARIANT_FIELDS, pooled_grid_size=3, vision_config=dict(tower, add_time_attn=False))
    config = get_tiny_config(
        text_config=dict(TINY_TEXT, vocab_size=vocab + 2), video_token_id=vocab, image_token_id=vocab + 1, **extra
    )
    torch.manual_seed(seed)
    model = VideoLlambForConditionalGeneration(config).eval()
    with torch.no_grad():  # read_memory_emb (and abs_vid_pe) start at zero: make every bridge weight matter
        for name, parameter in model.named_parameters():
            if "memory_bridge" in name or "projector" in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
    state = original_state_dict(model)
    if not include_towers:
        state = {k: v for k, v in state.items() if ".video_tower." not in k and ".image_tower." not in k}
    if not image_tower:
        state = {k: v for k, v in state.items() if ".image_tower." not in k}
    elif image_tower_lora:
        state = lora_wrap_encoder_state(
            state, "model.image_tower.image_tower.encoder.", image_tower_lora["r"], image_tower_lora["alpha"]
        )
    video_name = "clip-vit-large-patch14-336" if variant == "mem" else "LanguageBind_Video_merge"
    hard_coded = {k: getattr(config, k) for k in ("num_memory_tokens", "pooled_grid_size", "tower_chunk_size")}
    flat = original_flat_config(config, f"./checkpoints/{video_name}", image_tower, hard_coded=hard_coded)
    (repo / "config.json").write_text(json.dumps(flat, indent=2))
    keys = sorted(state)
    shards = [keys[i::num_shards] for i in range(num_shards)]
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{num_shards:05d}.safetensors"
        save_file({k: state[k].contiguous() for k in shard}, str(repo / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(v.numel() * v.element_size() for v in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (repo / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    towers = root / "checkpoints"
    kind = "clip" if variant == "mem" else None
    _languagebind_folder(towers / video_name, model.model.video_tower.state_dict(), config.vision_config,
                         variant == "main", kind)  # fmt: skip
    if image_tower:
        _languagebind_folder(towers / "LanguageBind_Image", model.model.image_tower.state_dict(),
                             config.image_config, False, lora=image_tower_lora)  # fmt: skip
    return {"repo": str(repo), "video_tower": str(towers / video_name),
            "image_tower": str(towers / "LanguageBind_Image"), "root": str(root), "model": model}  # fmt: skip


# -- random checkpoints at the released shapes ---------------------------------------------------------------------

# "mid": the released towers and bridge with a LLaMA of 8 layers at width 1024 (about 0.17B parameters of the
# 0.93B), small enough for fp32 and bf16 forwards on two CPU cores in minutes.
MID_TEXT = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 16,
            "num_key_value_heads": 16}  # fmt: skip
RANDOM_SIZES = ("tiny", "mid", "7b")


def random_checkpoint_config(size: str = "7b") -> VideoLlambConfig:
    """The config of a random checkpoint: `"7b"` is the released `ColorfulAI/VideoLLaMB` (LLaMA-7B: hidden 4096, 32
    layers, 32 heads, FFN 11008, vocabulary 32000 + the 2 placeholders; LanguageBind ViT-L/14 towers at 224 px, 24
    layers, width 1024, 16 heads, 8-frame temporal attention in the video tower; the bridge of width 1024, 8 heads,
    FFN 4096, 32 memory tokens, 12x12 pool), which is `VideoLlambConfig()`'s default. `"mid"`: the same with the
    LLaMA of `MID_TEXT`. `"tiny"`: `get_tiny_config` with the tiny tokenizer's vocabulary (400 + 2)."""
    if size == "tiny":
        return get_tiny_config(text_config=dict(TINY_TEXT, vocab_size=402), video_token_id=400, image_token_id=401)
    if size == "7b":
        return VideoLlambConfig()
    if size == "mid":
        from .configuration_videollamb import _LLAMA_7B

        return VideoLlambConfig(text_config=dict(_LLAMA_7B, **MID_TEXT))
    raise ValueError(f"`size` must be one of {RANDOM_SIZES}, got {size!r}.")


def random_weight_plan(config, layout: str = "native") -> dict:
    """What a random checkpoint of `config` holds: `{key: (shape, init, native_key)}` in the model's order, `init`
    being "normal" (std 0.02), "ones" (norm weights) or "zeros" (biases). `layout="original"`: the authors' key
    names (`original_keys`) and their vocabulary (2 rows fewer). Built on the meta device: no memory."""
    from .modeling_videollamb import VideoLlambForConditionalGeneration
    from .original_format import ORIGINAL_VOCAB_KEYS, convert_original_key

    if layout not in ("native", "original"):
        raise ValueError(f"`layout` must be 'native' or 'original', got {layout!r}.")
    with torch.device("meta"):
        model = VideoLlambForConditionalGeneration(config)
    persistent = set(model.state_dict())
    plan = {}
    for module_name, module in model.named_modules():
        for name, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            key = f"{module_name}.{name}" if module_name else name
            if key not in persistent or key in plan:
                continue
            if name == "bias":
                init = "zeros"
            elif name == "weight" and "norm" in type(module).__name__.lower():
                init = "ones"
            else:
                init = "normal"
            plan[key] = (tuple(tensor.shape), init, key)
    if layout == "native":
        return plan
    inverse = {convert_original_key(k): k for k in original_keys(config)}
    if set(inverse) != set(plan):
        raise AssertionError(f"original_keys and the model disagree: {sorted(set(inverse) ^ set(plan))[:8]}")
    vocab_keys = {native: original for original, native in ORIGINAL_VOCAB_KEYS.items()}
    original = {}
    for key, (shape, init, _) in plan.items():
        if key in vocab_keys:
            shape = (shape[0] - 2, *shape[1:])
        original[inverse[key]] = (shape, init, key)
    return original


def random_tensor(native_key: str, shape, init: str, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """The random value of one weight: seeded by its (our) key name, so that the same weight has the same values
    in every layout and file it is written to (an original checkpoint's vocabulary rows are the first rows)."""
    import zlib

    if init == "ones":
        return torch.ones(shape, dtype=dtype)
    if init == "zeros":
        return torch.zeros(shape, dtype=dtype)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(native_key.encode()))
    return torch.randn(shape, generator=generator).mul_(0.02).to(dtype)


def _nbytes(shape, dtype) -> int:
    return torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()


def random_shard_groups(plan: dict, dtype, num_shards: int) -> list[list[str]]:
    """`plan`'s keys in order, cut into `num_shards` groups where the running size passes each multiple of
    total / `num_shards` (so no shard exceeds its share by more than one tensor)."""
    total = sum(_nbytes(shape, dtype) for shape, _, _ in plan.values())
    groups, filled = [[]], 0
    for key, (shape, _, _) in plan.items():
        if groups[-1] and len(groups) < num_shards and filled >= total * len(groups) / num_shards:
            groups.append([])
        groups[-1].append(key)
        filled += _nbytes(shape, dtype)
    return groups


def _write_random_shards(directory, plan: dict, dtype, seed: int, num_shards: int) -> dict:
    """Write `plan`'s weights as `num_shards` safetensors shards of about equal size + the index, one shard in
    memory at a time. Returns the index."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    groups = random_shard_groups(plan, dtype, num_shards)
    weight_map = {}
    for index, keys in enumerate(groups, start=1):
        name = f"model-{index:05d}-of-{len(groups):05d}.safetensors"
        tensors = {k: random_tensor(plan[k][2], plan[k][0], plan[k][1], dtype, seed) for k in keys}
        save_file(tensors, str(Path(directory) / name), metadata={"format": "pt"})
        del tensors
        weight_map.update(dict.fromkeys(keys, name))
    total = sum(_nbytes(shape, dtype) for shape, _, _ in plan.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (Path(directory) / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return index


def save_random_checkpoint(
    directory,
    size: str = "7b",
    layout: str = "native",
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    num_shards: int | None = None,
    config: VideoLlambConfig | None = None,
) -> dict:
    """A random-weight checkpoint at the released shapes (`random_checkpoint_config(size)`), written shard by shard
    (one shard's tensors in memory at a time: 7B in bf16 is 15 GB on disk, under 4 GB in memory), for measuring
    conversion, loading, dtypes and memory where the real weights cannot be downloaded. Weights: normal(0, 0.02),
    norms 1, biases 0 (`random_tensor`). Its answers are noise.

    `layout="native"`: our folder (config, `num_shards` shards + index, processor with a tokenizer padded to the
    vocabulary, remote code), loadable with `AutoModelForImageTextToText`. `layout="original"`: the authors' layout
    as on the Hub (`<directory>/videollamb-llava-1.5-7b`: flat `llava_llama` config, shards under their key names,
    `tokenizer.model`; beside it `checkpoints/LanguageBind_Video_merge` and `checkpoints/LanguageBind_Image` with
    the towers' weights, equal to those in the checkpoint). `num_shards`: 4 for "7b" (as released), else 2.
    `config`: another shape (its placeholders the two ids after a 32,000 vocabulary, or after 400 for `size="tiny"`,
    whose 400-piece tokenizer is not padded).

    Returns a dict: `repo`, `video_tower` / `image_tower` (original layout), `config`, `total_bytes`,
    `largest_shard_bytes`, `shards` (paths).
    """
    import json
    from pathlib import Path

    config = config or random_checkpoint_config(size)
    num_shards = num_shards or (4 if size == "7b" else 2)
    plan = random_weight_plan(config, layout)
    root = Path(directory)
    vocab = None if size == "tiny" else config.text_config.vocab_size - 2
    dtype_name = str(dtype).removeprefix("torch.")
    result = {"config": config}
    if layout == "native":
        from transformers import AutoTokenizer

        from .image_processing_videollamb import VideoLlambImageProcessor
        from .modeling_videollamb import VideoLlambForConditionalGeneration
        from .processing_videollamb import VideoLlambProcessor
        from .video_processing_videollamb import VideoLlambVideoProcessor

        repo = root
        repo.mkdir(parents=True, exist_ok=True)
        tokenizer = AutoTokenizer.from_pretrained(save_tiny_tokenizer(repo / "_tokenizer", vocab))
        size_px = config.vision_config.image_size
        side, crop = {"shortest_edge": size_px}, {"height": size_px, "width": size_px}
        processor = VideoLlambProcessor(
            image_processor=VideoLlambImageProcessor(size=side, crop_size=crop),
            video_processor=VideoLlambVideoProcessor(size=side, crop_size=crop, num_frames=config.num_frames),
            tokenizer=tokenizer, video_seq_length=config.video_seq_length, image_seq_length=config.image_seq_length,
        )  # fmt: skip
        if (processor.video_token_id, processor.image_token_id) != (config.video_token_id, config.image_token_id):
            raise AssertionError("the padded tokenizer's placeholder ids differ from the config's")
        config.dtype = dtype
        config.random_weights = True  # tools label what such a model says as noise
        with torch.device("meta"):
            model = VideoLlambForConditionalGeneration(config).to(dtype)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(repo, state_dict={})  # config, generation config, remote code; no weights
        processor.save_pretrained(repo)
        import shutil

        shutil.rmtree(repo / "_tokenizer")
    elif layout == "original":
        repo = root / "videollamb-llava-1.5-7b"
        save_tiny_tokenizer(repo, vocab)
        special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}
        (repo / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
        tokenizer_config = json.loads((repo / "tokenizer_config.json").read_text())
        tokenizer_config.update(pad_token="<unk>", padding_side="right", model_max_length=2048)
        (repo / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
        hard_coded = None
        if size == "tiny":
            hard_coded = {k: getattr(config, k) for k in ("num_memory_tokens", "pooled_grid_size", "tower_chunk_size")}
        flat = original_flat_config(config, "./checkpoints/LanguageBind_Video_merge", hard_coded=hard_coded,
                                    dtype=dtype_name)  # fmt: skip
        (repo / "config.json").write_text(json.dumps(flat, indent=2))
        native = random_weight_plan(config, "native")
        for tower, name, sub, temporal in (
            ("video_tower", "LanguageBind_Video_merge", config.vision_config, True),
            ("image_tower", "LanguageBind_Image", config.image_config, False),
        ):
            prefix = f"model.{tower}."
            state = {k.removeprefix(prefix): random_tensor(k, shape, init, dtype, seed)
                     for k, (shape, init, _) in native.items() if k.startswith(prefix)}  # fmt: skip
            _languagebind_folder(root / "checkpoints" / name, state, sub, temporal)
            result[tower] = str(root / "checkpoints" / name)
            del state
    else:
        raise ValueError(f"`layout` must be 'native' or 'original', got {layout!r}.")
    index = _write_random_shards(repo, plan, dtype, seed, num_shards)
    shards = sorted({repo / name for name in index["weight_map"].values()})
    result.update(repo=str(repo), total_bytes=index["metadata"]["total_size"], shards=[str(p) for p in shards],
                  largest_shard_bytes=max(p.stat().st_size for p in shards))  # fmt: skip
    return result


__all__ = [
    "DecodeWatchdog",
    "MID_TEXT",
    "original_flat_config",
    "random_checkpoint_config",
    "random_shard_groups",
    "random_tensor",
    "random_weight_plan",
    "save_random_checkpoint",
    "lora_wrap_encoder_state",
    "original_keys",
    "original_state_dict",
    "save_tiny_original_repo",
    "save_tiny_repo",
    "TINY_CORPUS",
    "mutate_video_bytes",
    "get_tiny_processor",
    "save_tiny_tokenizer",
    "get_tiny_config",
    "get_tiny_model",
    "literal_boundaries_from_similarities",
    "literal_depth_scores",
    "literal_scene_boundaries",
]


# -- server processes (the serving tests and benchmark) -----------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(command: list[str], log, env: dict | None = None):
    """`command` in a session of its own (so that `stop_server` ends it and its children), offline, its output
    into the file `log`."""
    import os
    import subprocess

    with open(log, "w") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, HF_HUB_OFFLINE="1", **(env or {})))  # fmt: skip


def wait_for_http(url: str, process, timeout: float, log) -> None:
    """Until `url` answers below 500; `RuntimeError` with the log's tail if `process` exits or time runs out."""
    import time
    from pathlib import Path

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {process.returncode}:\n{Path(log).read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} did not come up in {timeout} s:\n{Path(log).read_text()[-4000:]}")


def stop_server(process) -> None:
    """SIGTERM to the process's session, SIGKILL after 30 s."""
    import os
    import signal
    import subprocess

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def fuzz_worker_main(size: int = 32, num_frames: int = 8):
    """Child process of `DecodeWatchdog`: read length-prefixed inputs on stdin, decode each, answer one JSON line
    per input on stdout."""
    import json
    import struct
    import sys
    import warnings

    import torch

    from .video_processing_videollamb import VideoLlambVideoProcessor

    warnings.simplefilter("ignore")
    processor = VideoLlambVideoProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    stdin, stdout = sys.stdin.buffer, sys.stdout
    while header := stdin.read(4):
        data = stdin.read(struct.unpack("<I", header)[0])
        try:
            pixels = processor(data, num_frames=num_frames)["pixel_values_videos"]
            good = pixels.shape == (1, num_frames, 3, size, size) and bool(torch.isfinite(pixels).all())
            answer = ["decoded", ""] if good else ["other", f"bad output {tuple(pixels.shape)}"]
        except (ValueError, FileNotFoundError, TypeError) as error:
            answer = ["clear error", type(error).__name__]
        except Exception as error:  # noqa: BLE001 - the point is to count these
            answer = ["other", f"{type(error).__name__}: {error}"]
        stdout.write(json.dumps(answer) + "\n")
        stdout.flush()


class DecodeWatchdog:
    """Decodes untrusted video bytes in a child process with a time bound enforced from outside (FFmpeg can hang
    or crash inside a process). `outcome(data)` returns `(kind, detail)`, kind one of "decoded" (a finite tensor of
    the right shape), "clear error" (a documented `ValueError`/`FileNotFoundError`/`TypeError`), "other" (any other
    exception, or the child crashed) and "over the time bound" (the child is killed and restarted). Use as a
    context manager."""

    def __init__(self, timeout_s: float = 10.0, size: int = 32, num_frames: int = 8, startup_s: float = 120.0):
        self.timeout_s, self.size, self.num_frames, self.startup_s = timeout_s, size, num_frames, startup_s
        self._process = None

    def _start(self):
        import subprocess
        import sys

        code = f"from videollamb_hf.testing_utils import fuzz_worker_main; fuzz_worker_main({self.size}, {self.num_frames})"
        self._process = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        self._fresh = True

    def _stop(self):
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def outcome(self, data: bytes) -> tuple[str, str]:
        import json
        import select
        import struct

        if self._process is None or self._process.poll() is not None:
            self._start()
        try:
            self._process.stdin.write(struct.pack("<I", len(data)) + data)
            self._process.stdin.flush()
        except OSError:
            self._stop()
            return "other", "decoder process died"
        limit = self.timeout_s + (self.startup_s if self._fresh else 0.0)  # the first answer waits for imports
        ready, _, _ = select.select([self._process.stdout], [], [], limit)
        if not ready:
            self._stop()
            return "over the time bound", f"> {self.timeout_s} s"
        line = self._process.stdout.readline()
        if not line:
            code = self._process.poll()
            self._stop()
            return "other", f"decoder process died (exit code {code})"
        self._fresh = False
        kind, detail = json.loads(line)
        return kind, detail

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._process is not None:
            try:
                self._process.stdin.close()
                self._process.wait(timeout=10)
            except Exception:  # noqa: BLE001
                pass
        self._stop()


def mutate_video_bytes(data: bytes, other: bytes, rng) -> bytes:
    """One random corruption of a video file: truncation, bit flips, an overwritten or zeroed range, a removed or
    duplicated chunk, or a header spliced onto another file's body. `rng`: a `random.Random`."""
    n = len(data)
    kind = rng.randrange(6)
    if kind == 0:
        return data[: rng.randrange(n)]
    buffer = bytearray(data)
    if kind == 1:
        for _ in range(rng.randint(1, 64)):
            buffer[rng.randrange(n)] ^= 1 << rng.randrange(8)
    elif kind == 2:
        start = rng.randrange(n)
        length = rng.randint(1, 4096)
        buffer[start : start + length] = bytes(rng.randrange(256) for _ in range(min(length, n - start)))
    elif kind == 3:
        start = rng.randrange(n)
        buffer[start : start + rng.randint(1, 65536)] = b""
    elif kind == 4:
        start, length = rng.randrange(n), rng.randint(1, 8192)
        buffer[start:start] = buffer[start : start + length]
    else:
        cut = rng.randrange(1, min(n, 4096))
        return bytes(buffer[:cut]) + other[rng.randrange(len(other)) :]
    return bytes(buffer)
