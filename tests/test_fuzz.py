"""Fuzzing: random valid and invalid model configurations and inputs for the model, random key
sets, shapes and dtypes (and random bytes) for the weight loader. Every case must end in a correct output
or one of the package's errors (`vit.VitError`); anything else -- a bare RuntimeError from inside torch, a
TypeError, an IndexError -- fails.

Sizes are kept tiny (width <= 24, depth <= 2, images <= 12 px) so a few hundred examples run in seconds.

These property-based tests stay in one file rather than in test_model.py and test_weights.py: the model and
the weight loader draw from the same strategies (configurations, valid or junk, which a weight file's
metadata carries too) and share one settings profile and parameter limit; `pytest tests/test_fuzz.py
--hypothesis-show-statistics` shows how all the drawn cases split between outputs and errors.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import vit
from vit.model import ViTConfig, VisionTransformer


@pytest.fixture(autouse=True, scope="module")
def small_models():
    """Drawn junk such as mlp_ratio 1e9 must be refused before it is built: a low parameter limit here."""
    saved = os.environ.get("VIT_MAX_PARAMS")
    os.environ["VIT_MAX_PARAMS"] = "2000000"
    yield
    if saved is None:
        del os.environ["VIT_MAX_PARAMS"]
    else:
        os.environ["VIT_MAX_PARAMS"] = saved


# Fields a drawn configuration leaves out come from here (ViTConfig's own defaults are ViT-B at 224 px).
TINY = dict(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=1, num_heads=2)
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def junk():
    """Values of the wrong kind for any field."""
    return st.one_of(st.none(), st.text(max_size=3), st.floats(allow_nan=True, allow_infinity=True),
                     st.integers(-3, 3), st.booleans(), st.lists(st.integers(-2, 12), max_size=3))


def config_fields(with_junk: bool = True):
    """Any subset of ViTConfig's fields (plus an unknown one), each valid in kind or, with_junk, anything."""
    def maybe(valid):
        return st.one_of(valid, junk()) if with_junk else valid

    side = st.integers(1, 12) if with_junk else st.sampled_from([4, 8, 12])

    return st.fixed_dictionaries({}, optional={
        "img_size": maybe(st.one_of(side, st.tuples(side, side))),
        "patch_size": maybe(st.integers(1, 6) if with_junk else st.sampled_from([1, 2, 4])),
        "in_chans": maybe(st.integers(1, 4)),
        "num_classes": maybe(st.integers(0, 5)),
        "global_pool": maybe(st.sampled_from(["token", "avg"])),
        "embed_dim": maybe(st.integers(1, 24) if with_junk else st.sampled_from([4, 8, 12, 16, 24])),
        "depth": maybe(st.integers(1, 2)),
        "num_heads": maybe(st.integers(1, 6) if with_junk else st.sampled_from([1, 2, 4])),
        "mlp_ratio": maybe(st.floats(0.05, 4.0)),
        "qkv_bias": st.booleans(),
        "qk_norm": st.booleans(),
        "init_values": st.one_of(st.none(), st.floats(1e-6, 1.0)),
        "class_token": st.booleans(),
        "reg_tokens": maybe(st.integers(0, 3)),
        "no_embed_class": st.booleans(),
        "pos_embed": maybe(st.sampled_from(["learn", "sincos"])),
        "fc_norm": st.one_of(st.none(), st.booleans()),
        "dynamic_img_size": st.booleans(),
        "distilled": st.booleans(),
        "drop_rate": maybe(st.floats(0.0, 0.9)),
        "drop_path_rate": maybe(st.floats(0.0, 0.9)),
        **({"bogus_option": st.integers()} if with_junk else {}),
    })


def build(fields: dict):
    """The model, or the VitError its configuration raised."""
    try:
        return VisionTransformer(ViTConfig.from_dict({**TINY, **fields}))
    except vit.VitError as e:
        return e


def input_for(model, draw):
    """A random input: mostly right, sometimes wrong in size, channels, rank, dtype or batch."""
    c = model.config
    H, W = (c.img_size, c.img_size) if isinstance(c.img_size, int) else c.img_size
    B = draw(st.integers(0, 3))
    C = draw(st.sampled_from([c.in_chans, c.in_chans, c.in_chans + 1]))
    H = draw(st.sampled_from([H, H, H + 1, 2 * H, max(H - 1, 1)]))
    W = draw(st.sampled_from([W, W, W + c.patch_size]))
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float64, torch.float16, torch.uint8,
                                  torch.int64, torch.bool]))
    shape = draw(st.sampled_from([(B, C, H, W), (B, C, H, W), (C, H, W), (B, 1, C, H, W)]))
    return torch.zeros(shape, dtype=dtype) if dtype == torch.bool else (torch.rand(shape) * 4 - 2).to(dtype)


def expected_ok(model, x) -> bool:
    """Whether the model should accept x (the documented contract, written independently of the code)."""
    c = model.config
    H, W = (c.img_size, c.img_size) if isinstance(c.img_size, int) else c.img_size
    if x.ndim != 4 or x.dtype != torch.float32 or x.shape[1] != c.in_chans:
        return False
    if c.dynamic_img_size:
        return x.shape[2] % c.patch_size == 0 and x.shape[3] % c.patch_size == 0
    return tuple(x.shape[2:]) == (H, W)


@FUZZ
@given(fields=st.one_of(config_fields(with_junk=False), config_fields()), data=st.data())
def test_model_configs_and_inputs(fields, data):
    model = build(fields)
    if isinstance(model, vit.VitError):
        event("config rejected")  # --hypothesis-show-statistics shows how the cases split
        assert isinstance(model, (vit.ConfigError,)), model
        assert str(model)  # it says something
        return
    model.eval()
    x = input_for(model, data.draw)
    try:
        with torch.no_grad():
            y = model(x)
    except vit.InputError as e:
        event("input rejected")
        assert not expected_ok(model, x), f"valid input {tuple(x.shape)} {x.dtype} rejected: {e}"
        return
    event("output")
    assert expected_ok(model, x), f"invalid input {tuple(x.shape)} {x.dtype} accepted"
    width = model.num_classes or model.embed_dim
    assert y.shape == (x.shape[0], width) and y.dtype == torch.float32
    assert torch.isfinite(y).all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(fields=config_fields(with_junk=False))
def test_valid_configs_round_trip_and_train(fields):
    """Whatever builds also survives to_dict/from_dict and a backward pass on a correct input."""
    model = build(fields)
    assume(not isinstance(model, vit.VitError))
    assert ViTConfig.from_dict(model.config.to_dict()) == model.config
    c = model.config
    H, W = (c.img_size, c.img_size) if isinstance(c.img_size, int) else c.img_size
    model(torch.randn(2, c.in_chans, H, W)).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------------------------
# The weight loader

SMALL = ViTConfig(**TINY)
# Keys that steer format detection and conversion, so the fuzzer reaches every converter.
MARKER_KEYS = [
    "conv_proj.weight", "class_token", "encoder.pos_embedding", "encoder.layers.encoder_layer_0.ln_1.weight",
    "encoder.layers.encoder_layer_0.self_attention.in_proj_weight", "heads.head.weight",
    "vit.embeddings.patch_embeddings.projection.weight", "embeddings.cls_token",
    "encoder.layer.0.attention.attention.query.weight", "encoder.layer.0.attention.attention.key.weight",
    "layers.0.attention.q_proj.bias", "embedding/kernel", "params/embedding/kernel", "cls",
    "Transformer/posembed_input/pos_embedding", "Transformer/encoderblock_0/LayerNorm_0/scale",
    "Transformer/encoderblock/LayerNorm_0/scale", "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel",
    "head/kernel", "pos_embedding", "module.pos_embed", "_orig_mod.cls_token",
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.uint8, torch.bool,
          torch.complex64]


def reference_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return VisionTransformer(SMALL).state_dict()


@st.composite
def benign_states(draw):
    """Changes the loader must accept: another float dtype, no head (a fresh one stays), position
    embeddings for another square grid (resampled), a DistributedDataParallel "module." prefix."""
    state = reference_state()
    for k in draw(st.lists(st.sampled_from(sorted(state)), max_size=3, unique=True)):
        state[k] = state[k].to(draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float64])))
    if draw(st.booleans()):
        del state["head.weight"], state["head.bias"]
    if draw(st.booleans()):
        g = draw(st.integers(1, 6))
        state["pos_embed"] = torch.randn(1, 1 + g * g, SMALL.embed_dim)
    if draw(st.booleans()):
        state = {f"module.{k}": v for k, v in state.items()}
    return state


@st.composite
def mutated_states(draw):
    """A correct state dict with random keys dropped, added, reshaped or retyped."""
    state = draw(benign_states())
    keys = sorted(state)
    for k in draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
        del state[k]
    for k in draw(st.lists(st.sampled_from(keys + MARKER_KEYS), max_size=4, unique=True)):
        shape = tuple(draw(st.lists(st.integers(0, 9), min_size=0, max_size=4)))
        state[k] = torch.randn(shape) if draw(st.booleans()) else torch.zeros(shape)
    for k in draw(st.lists(st.sampled_from(sorted(state)), max_size=2, unique=True)) if state else []:
        state[k] = state[k].to(draw(st.sampled_from(DTYPES)))
    return state


def check_loaded(model):
    """After a successful load, the model holds float32 weights and runs (logits, or features when headless)."""
    for name, p in model.state_dict().items():
        assert p.dtype == torch.float32, name
    c = model.config
    H, W = (c.img_size, c.img_size) if isinstance(c.img_size, int) else c.img_size
    with torch.no_grad():
        y = model(torch.randn(2, c.in_chans, H, W))
    assert y.shape == (2, model.num_classes or model.embed_dim)


@FUZZ
@given(state=benign_states())
def test_weight_loader_accepts_benign_changes(state):
    model = VisionTransformer(SMALL)
    vit.load_pretrained(model, state)
    check_loaded(model)


@FUZZ
@given(state=mutated_states())
def test_weight_loader_on_random_state_dicts(state):
    model = VisionTransformer(SMALL)
    try:
        vit.load_pretrained(model, state)
    except vit.CheckpointError as e:
        event("rejected")
        assert str(e)
        return
    event("loaded")
    check_loaded(model)


@settings(max_examples=40, deadline=None)
@given(state=mutated_states(), fmt=st.sampled_from(["pt", "safetensors"]))
def test_weight_loader_on_random_files(tmp_path_factory, state, fmt):
    """The same through files, read back by create_model(pretrained=...)."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("fuzz") / f"w.{fmt}"
    if fmt == "pt":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    try:
        model = vit.create_model("vit_nano_patch2_8", pretrained=str(path), **{
            k: getattr(SMALL, k) for k in ("embed_dim", "depth", "num_heads", "num_classes")})
    except vit.VitError as e:
        assert str(path) in str(e), f"the error does not name the file: {e}"
        return
    check_loaded(model)


@settings(max_examples=60, deadline=None)
@given(fields=st.one_of(config_fields(with_junk=False), config_fields()),
       extra=st.dictionaries(st.sampled_from(["preprocess", "class_names", "format_version"]),
                             st.one_of(st.text(max_size=8), st.just("{}"), st.just('{"mean": [0.5]}'),
                                       st.just('["a", "b", "c"]'), st.just("2"))))
def test_weight_loader_on_random_metadata(tmp_path_factory, fields, extra):
    """The config a file carries (as vit.save_pretrained writes it) is untrusted input too."""
    import json

    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("meta") / "w.safetensors"
    config = {**TINY, **fields}
    save_file(reference_state(), str(path), metadata={"format": "vit", "config": json.dumps(config), **extra})
    try:
        model = vit.create_model(pretrained=str(path))
    except vit.VitError as e:
        event("rejected")
        assert str(path) in str(e) or "metadata" in str(e) or "config" in str(e), e
        return
    event("loaded")
    check_loaded(model)


@settings(max_examples=60, deadline=None)
@given(blob=st.one_of(st.binary(max_size=512), st.integers(1, 99).map(lambda pct: ("truncate", pct))),
       suffix=st.sampled_from([".pt", ".pth", ".bin", ".safetensors", ".npz", ".ckpt"]))
def test_weight_loader_on_random_bytes(tmp_path_factory, blob, suffix):
    """Random bytes, and a real checkpoint cut at a random point: always a CheckpointError naming the file."""
    d = tmp_path_factory.mktemp("bytes")
    path = d / f"w{suffix}"
    if isinstance(blob, tuple):  # truncate a real file of the same kind at pct %
        full = d / f"full{suffix}"
        model = VisionTransformer(SMALL)
        if suffix == ".safetensors":
            vit.save_pretrained(model, full)
        elif suffix == ".npz":
            import numpy as np

            np.savez(full, **{k.replace(".", "/"): v.numpy() for k, v in model.state_dict().items()})
        else:
            torch.save(model.state_dict(), full)
        data = full.read_bytes()
        blob = data[: len(data) * blob[1] // 100]
    path.write_bytes(blob)
    with pytest.raises(vit.CheckpointError) as e:
        vit.create_model("vit_nano_patch2_8", pretrained=str(path))
    assert str(path) in str(e.value)


def test_fuzz_contract_is_not_vacuous():
    """The oracle above accepts real inputs and rejects wrong ones (guards against a fuzzer that only ever
    sees errors)."""
    model = VisionTransformer(SMALL).eval()
    assert expected_ok(model, torch.zeros(2, 1, 8, 8)) and not expected_ok(model, torch.zeros(2, 1, 8, 8).double())
    assert math.isfinite(model(torch.randn(1, 1, 8, 8)).sum().item())


def json_values():
    """Any JSON value: what a config.json or preprocessor_config.json beside downloaded weights may hold."""
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=False),
                        st.text(max_size=6))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                        max_leaves=12)


def sidecar_json():
    """A transformers config.json, a timm one, or a preprocessor_config.json, with any field replaced."""
    hf = dict(model_type="vit", hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
              image_size=8, patch_size=2, num_channels=1, id2label={"0": "a", "1": "b", "2": "c"})
    timm_cfg = dict(architecture="vit_nano_patch2_8", num_classes=3, label_names=list("abc"),
                    model_args=dict(embed_dim=8, depth=1, num_heads=2),
                    pretrained_cfg=dict(input_size=[1, 8, 8], mean=[0.5], std=[0.5], crop_pct=1.0))
    pre = dict(image_mean=[0.5], image_std=[0.5], size=8, resample=2)
    base = st.sampled_from([("config.json", hf), ("config.json", timm_cfg), ("preprocessor_config.json", pre)])
    return st.tuples(base, st.dictionaries(st.sampled_from(sorted({*hf, *timm_cfg, *pre})), json_values(),
                                           max_size=3), st.booleans())


@settings(max_examples=60, deadline=None)
@given(case=sidecar_json())
def test_sidecar_json_files(tmp_path_factory, case):
    """Weights without metadata, described by the JSON files beside them: each case builds a model that runs,
    or ends in a VitError naming the JSON file, never another exception or a model built from junk."""
    import json

    from safetensors.torch import save_file

    (name, base), changes, whole = case
    d = tmp_path_factory.mktemp("sidecar")
    save_file(VisionTransformer(SMALL).state_dict(), str(d / "model.safetensors"))
    (d / name).write_text(json.dumps({**base, **changes} if whole else list(changes.values())))
    try:
        if name == "config.json":  # the architecture from the file
            model = vit.create_model(pretrained=str(d))
        else:
            model = vit.create_model("vit_nano_patch2_8", pretrained=str(d), **{
                k: getattr(SMALL, k) for k in ("embed_dim", "depth", "num_heads", "num_classes")})
    except vit.VitError as e:
        event("rejected")
        assert str(d) in str(e), e  # the folder, or the JSON file in it
        return
    event("loaded")
    check_loaded(model)


def checkpoint_mutations():
    """A last.ckpt entry (or a field of its state, config or budget) set to any value, or deleted."""
    entries = ["config", "recipe", "model_config", "class_names", "model", "optimizer", "scheduler", "ema",
               "scaler", "rng", "state", "budget", "version", "format", "state.epoch", "state.batch",
               "state.step", "state.best_top1", "config.model", "config.dataset", "budget.total_steps",
               "budget.decided", "budget.replans"]
    return st.lists(st.tuples(st.sampled_from(entries), st.one_of(st.just("delete"), json_values())), max_size=3)


@settings(max_examples=60, deadline=None)
@given(changes=checkpoint_mutations())
def test_damaged_last_ckpt(tmp_path_factory, changes):
    """A last.ckpt with entries deleted or replaced by any value: read_checkpoint gives a Checkpoint whose
    entries have their documented types, or a CheckpointError naming the file."""
    from vit import runs

    path = tmp_path_factory.mktemp("ckpt") / runs.LAST
    obj = runs.Checkpoint(
        config={"model": "vit_nano_patch2_8", "dataset": "digits"}, recipe="digits", model_config=TINY,
        class_names=list("abc"), model=VisionTransformer(SMALL).state_dict(), optimizer={"state": {}},
        scheduler={}, ema=None, scaler=None, rng={}, budget={"budget_s": 60.0, "total_steps": 9}).to_dict()
    for key, value in changes:
        parent, _, leaf = key.rpartition(".")
        target = obj.get(parent) if parent else obj
        if isinstance(target, dict):
            target.pop(leaf, None) if value == "delete" else target.__setitem__(leaf, value)
    torch.save(obj, path)
    try:
        ckpt = runs.read_checkpoint(path)
    except vit.VitError as e:
        event("rejected")
        assert str(path) in str(e), e
        return
    event("read")
    assert isinstance(ckpt.config, dict) and isinstance(ckpt.state, runs.State)
    assert all(isinstance(getattr(ckpt.state, f), (int, float)) and getattr(ckpt.state, f) >= 0
               for f in ("epoch", "batch", "step"))
    assert ckpt.budget is None or runs.Budget.from_dict(ckpt.budget).total_steps >= 0
