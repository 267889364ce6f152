"""Fuzzing (Hypothesis): hostile input at every boundary where data enters -- model configurations and input
tensors, state-dict key/shape/dtype sets (integer keys, sparse and expanded tensors, empty position tables),
weight files (random bytes, truncated files, crafted .npz archives), the metadata a weights file carries, the
JSON files beside it, damaged last.ckpt files, image files (every PIL mode, truncated, lying headers),
train.py / evaluate.py command lines, and datasets: wds: shards and hf: parquet splits built with generated
labels, member names, sizes, path cells and split metadata (the readers' limits set low, so sizes cross them). Every case must end in a correct result or one of the package's errors
(`vit.VitError`) naming what was wrong; anything else -- a bare RuntimeError from inside torch, a TypeError,
an IndexError, a traceback from a script -- fails.

Each case runs under `case_limits`: CASE_SECONDS of wall time (SIGALRM) and CASE_MEMORY of address space above
what the process already holds (RLIMIT_AS), so a case that would hang or allocate without bound fails
as itself instead of stalling or exhausting the machine. Sizes are otherwise kept tiny (width <= 24,
depth <= 2, images <= 16 px) so the file runs in about half a minute; `pytest tests/test_fuzz.py
--hypothesis-show-statistics` shows how many cases ran and how they split between results and errors.

These property-based tests stay in one file rather than in test_model.py, test_weights.py and the others:
they draw from shared strategies (configurations, valid or junk, which a weight file's metadata carries too)
and share one settings profile, one parameter limit and the per-case limits.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import os
import resource
import signal
import struct
import tarfile
import zipfile
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

import vit
from vit.deit import DeiTConfig, config_from_dict
from vit.model import ViTConfig, VisionTransformer
from vit.deit import build_from_config

CASE_SECONDS = 20  # a case's wall time (the first case of a test also imports what it uses)
CASE_MEMORY = 1536 * 2**20  # address space a case may add to what the process holds


class CaseTooSlow(Exception):
    """A case ran past CASE_SECONDS: something hung or looped over a size taken from the input."""


@contextlib.contextmanager
def case_limits(seconds: float = CASE_SECONDS, memory: int = CASE_MEMORY):
    """Run one case with a time limit (SIGALRM raises CaseTooSlow) and a memory limit (RLIMIT_AS: an allocation
    past it fails in the case, as MemoryError or torch's "can't allocate memory"); both restored after."""
    def too_slow(signum, frame):
        raise CaseTooSlow(f"the case ran past {seconds} s")

    held = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = held + memory if hard == resource.RLIM_INFINITY else min(held + memory, hard)
    old_handler = signal.signal(signal.SIGALRM, too_slow)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)


def limited(test):
    """Each Hypothesis case of `test` under `case_limits` (put it under @given)."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        with case_limits():
            return test(*args, **kwargs)
    return run


def test_the_limits_hold():
    """Teeth: an allocation past CASE_MEMORY and a loop past the time limit each fail inside the case."""
    with pytest.raises((MemoryError, RuntimeError), match="alloc|memory|^$"):
        with case_limits():
            torch.empty(2 * CASE_MEMORY, dtype=torch.uint8).fill_(1)
    with pytest.raises(CaseTooSlow):
        with case_limits(seconds=0.2):
            while True:
                pass
    torch.empty(2 * CASE_MEMORY, dtype=torch.uint8)  # and both are lifted after the case


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
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


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
        return build_from_config(config_from_dict({**TINY, **fields}))
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
@limited
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


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(fields=config_fields(with_junk=False))
@limited
def test_valid_configs_round_trip_and_train(fields):
    """Whatever builds also survives to_dict/from_dict and a backward pass on a correct input."""
    model = build(fields)
    assume(not isinstance(model, vit.VitError))
    assert config_from_dict(model.config.to_dict()) == model.config
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


@settings(FUZZ, max_examples=30)
@given(state=benign_states())
@limited
def test_weight_loader_accepts_benign_changes(state):
    model = VisionTransformer(SMALL)
    vit.load_pretrained(model, state)
    check_loaded(model)


@FUZZ
@given(state=mutated_states())
@limited
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
@limited
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


def hostile_scalars():
    """Values a crafted file may put in any field: wrong kinds, strings standing for bools and numbers, sizes
    far past any real model, NaN and infinities (JSON as Python writes it carries them)."""
    return st.one_of(st.none(), st.booleans(), st.sampled_from(["true", "no", "0", "", "NaN", "1e9", "bicubic"]),
                     st.integers(-3, 70), st.sampled_from([10**9, 2**31, 2**63, 10**30, -(10**9)]),
                     st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, 5e-324, -0.0]))


def hostile_values():
    return st.recursive(hostile_scalars(), lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=3)), max_leaves=8)


GOOD_PREPROCESS = dict(input_size=[1, 8, 8], mean=[0.5], std=[0.5], interpolation="bicubic", crop_pct=0.9)


def metadata_field(base: dict, keys: list[str]):
    """One metadata entry as save_pretrained writes it (a JSON string): `base` with up to three fields replaced
    by hostile values, any JSON value, or text that is no JSON at all."""
    changed = st.dictionaries(st.sampled_from(keys), hostile_values(), max_size=3)
    return st.one_of(st.just(json.dumps(base)), changed.map(lambda c: json.dumps({**base, **c})),
                     hostile_values().map(json.dumps), st.text(max_size=10))


def weight_metadata():
    config_keys = [f.name for f in DeiTConfig.__dataclass_fields__.values()] + ["bogus"]
    names = st.one_of(st.lists(st.text(max_size=3), min_size=2, max_size=4).map(json.dumps),  # 3 classes
                      hostile_values().map(json.dumps), st.text(max_size=6))
    return st.fixed_dictionaries({"config": metadata_field(TINY, config_keys)}, optional={
        "preprocess": metadata_field(GOOD_PREPROCESS, [*GOOD_PREPROCESS, "bogus"]),
        "class_names": names,
        "format_version": st.one_of(st.sampled_from(["1", "2", "0", "-1", "01", "1" * 5000]), st.text(max_size=4)),
    })


@settings(max_examples=60, deadline=None)
@given(meta=weight_metadata())
@limited
def test_hostile_weight_metadata(tmp_path_factory, meta):
    """The config, preprocessing and class names a weights file carries (save_pretrained's safetensors
    metadata) are untrusted: a model that runs, with finite positive normalisation and one string per class,
    or a CheckpointError naming the file -- never a model sized by junk, a NaN later, or another exception."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("meta") / "w.safetensors"
    save_file(reference_state(), str(path), metadata={"format": "vit", **meta})
    try:
        model = vit.create_model(pretrained=str(path))
    except vit.VitError as e:
        event("rejected")
        assert str(path) in str(e), e
        return
    event("loaded")
    check_loaded(model)
    pre = model.preprocess
    assert pre is None or (pre.input_size[0] == model.config.in_chans and all(math.isfinite(m) for m in pre.mean)
                           and all(0 < s < math.inf for s in pre.std))
    names = model.class_names
    assert names is None or (len(names) == model.num_classes and all(isinstance(n, str) for n in names))


@settings(max_examples=60, deadline=None)
@given(blob=st.one_of(st.binary(max_size=512), st.integers(1, 99).map(lambda pct: ("truncate", pct))),
       suffix=st.sampled_from([".pt", ".pth", ".bin", ".safetensors", ".npz", ".ckpt"]))
@example(blob=b"X\xff\xff\xff\x7f", suffix=".pt")  # a pickled string whose length field claims 2 GiB
@limited
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
@limited
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
@limited
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


# --------------------------------------------------------------------------------------------------------
# State dicts with what a crafted file can hold: integer keys, sparse and expanded tensors, an empty position
# table, values that are no tensors


@st.composite
def hostile_states(draw):
    state = draw(mutated_states())
    keys = sorted(k for k in state if isinstance(k, str))
    for change in draw(st.lists(st.sampled_from(["int key", "sparse", "empty pos_embed", "not a tensor", "expanded",
                                                 "0-dim"]), min_size=1, max_size=3)):
        key = draw(st.sampled_from(keys)) if keys else "pos_embed"
        if change == "int key":
            state[draw(st.integers(-2, 3))] = torch.zeros(2)
        elif change == "sparse" and isinstance(state.get(key), torch.Tensor) and state[key].ndim \
                and state[key].is_floating_point():
            state[key] = state[key].to_sparse()
        elif change == "empty pos_embed":
            state["pos_embed"] = torch.zeros(1, 0, SMALL.embed_dim)
        elif change == "not a tensor":
            state[key] = draw(st.sampled_from([3, "three", [1.0], None, {"a": torch.zeros(1)}]))
        elif change == "expanded":  # one stored value, a view of up to 10^12 elements: must never be materialised
            n = draw(st.sampled_from([10**3, 10**6, 10**9]))
            state[draw(st.sampled_from([key, "pos_embed"]))] = torch.zeros(1, 1, 1).expand(1, n, SMALL.embed_dim)
        elif change == "0-dim":
            state[key] = torch.tensor(1.0)
    return state


@settings(max_examples=50, deadline=None)
@given(state=hostile_states(), through_file=st.booleans())
@limited
def test_weight_loader_on_hostile_state_dicts(tmp_path_factory, state, through_file):
    """In memory (load_pretrained) and through a torch file (create_model): loaded and running, or a
    CheckpointError (naming the file where there is one)."""
    model = VisionTransformer(SMALL)
    try:
        if through_file:
            path = tmp_path_factory.mktemp("hostile") / "w.pt"
            torch.save(state, path)
            model = vit.create_model("vit_nano_patch2_8", pretrained=str(path), **{
                k: getattr(SMALL, k) for k in ("embed_dim", "depth", "num_heads", "num_classes")})
        else:
            vit.load_pretrained(model, state)
    except vit.VitError as e:
        event("rejected")
        assert not through_file or str(path) in str(e), e
        return
    event("loaded")
    check_loaded(model)


# --------------------------------------------------------------------------------------------------------
# .npz archives: members of any dtype and shape, headers that lie, truncated members, directories that lie


NPZ_KEYS = ["embedding/kernel", "cls", "head/kernel", "Transformer/posembed_input/pos_embedding", "x"]
NPY_DTYPES = ["<f4", "<f2", "<i8", "|u1", "|b1", "<c8", "|V2", "<U2", "O", [("x", "<f4"), ("y", "<i4")]]


@st.composite
def npz_archives(draw) -> bytes:
    members = []
    for name in draw(st.lists(st.sampled_from(NPZ_KEYS), min_size=1, max_size=3, unique=True)):
        dtype = np.dtype(draw(st.sampled_from(NPY_DTYPES)))
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        buf = io.BytesIO()
        np.save(buf, np.zeros(shape, dtype=dtype), allow_pickle=True)  # object arrays become a pickle
        data = buf.getvalue()
        if draw(st.booleans()):  # a header claiming another shape over the same data
            head = io.BytesIO()
            lie = draw(st.sampled_from([(10**12,), (2**31, 2**31), (0,), (3, 10**6), (2**62,)]))
            np.lib.format.write_array_header_1_0(head, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                        "fortran_order": False, "shape": lie})
            data = head.getvalue() + data[len(data) - int(np.prod(shape)) * dtype.itemsize:]
        if draw(st.booleans()):
            data = data[: draw(st.integers(0, len(data)))]
        members.append((name + ".npy", data))
    if draw(st.integers(0, 9)) == 0:  # an .npy named .npz
        return members[0][1]
    method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=method) as z:
        for name, data in members:
            z.writestr(name, data)
    archive = bytearray(out.getvalue())
    if draw(st.booleans()):  # the directory lies about the first member's size (a bomb, or a truncated file)
        size = draw(st.sampled_from([2**20, 2**27, 2**32 - 1, 0]))
        local, central = archive.find(b"PK\x03\x04"), archive.find(b"PK\x01\x02")
        for at in (local + 22, central + 24):  # the uncompressed size
            struct.pack_into("<I", archive, at, size)
    if draw(st.booleans()):
        archive = archive[: draw(st.integers(0, len(archive)))]
    return bytes(archive)


@settings(max_examples=50, deadline=None)
@given(archive=npz_archives())
@limited
def test_npz_archives(tmp_path_factory, archive):
    """JAX-style .npz weights as a crafted file may be: read (and then loaded or refused like any state dict),
    or a CheckpointError naming the file -- never an allocation the archive's few bytes do not hold."""
    path = tmp_path_factory.mktemp("npz") / "w.npz"
    path.write_bytes(archive)
    try:
        state, _ = vit.weights.read_weights_file(path)
    except vit.VitError as e:
        event("refused")
        assert str(path) in str(e), e
        return
    event("read")
    assert all(isinstance(v, torch.Tensor) and v.dtype == torch.float32 for v in state.values())
    assert sum(v.numel() * 4 for v in state.values()) <= 4 * len(archive) + 4096 or \
        zipfile.ZipFile(path).infolist()[0].compress_type == zipfile.ZIP_DEFLATED


# --------------------------------------------------------------------------------------------------------
# Image files: every PIL mode in every format, truncated files, headers that claim huge sizes, random bytes


PIL_MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "I", "I;16", "F", "LA", "YCbCr", "HSV", "LAB"]
IMAGE_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "BMP": ".bmp", "GIF": ".gif", "WEBP": ".webp",
                 "PPM": ".ppm"}


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header (IHDR, with its CRC) claims width x height pixels."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@st.composite
def image_files(draw) -> tuple[bytes, str]:
    kind = draw(st.sampled_from(["image", "image", "image", "truncated", "huge header", "random bytes"]))
    if kind == "random bytes":
        return draw(st.binary(max_size=256)), draw(st.sampled_from(list(IMAGE_FORMATS.values())))
    if kind == "huge header":
        return png_claiming(*draw(st.sampled_from([(12000, 12000), (100000, 100000), (2**31 - 1, 1), (0, 5)]))), ".png"
    mode, fmt = draw(st.sampled_from(PIL_MODES)), draw(st.sampled_from(sorted(IMAGE_FORMATS)))
    w, h = draw(st.integers(1, 16)), draw(st.integers(1, 16))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if mode in ("I", "I;16", "F"):
        values = {"I": rng.integers(-2**31, 2**31 - 1, (h, w), dtype=np.int32),
                  "I;16": rng.integers(0, 2**16, (h, w), dtype=np.uint16),
                  "F": rng.standard_normal((h, w)).astype(np.float32) * draw(st.sampled_from([1.0, 1e30]))}[mode]
        if mode == "F" and draw(st.booleans()):
            values[0, 0] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        im = Image.fromarray(values)  # int32: "I", uint16: "I;16", float32: "F"
    else:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").convert(mode)
    buf = io.BytesIO()
    try:
        im.save(buf, fmt)
    except (OSError, ValueError, KeyError, TypeError):  # a mode the format cannot hold
        buf = io.BytesIO()
        im.convert("RGB").save(buf, fmt)
    data = buf.getvalue()
    if kind == "truncated":
        data = data[: draw(st.integers(0, len(data) - 1))]
    return data, IMAGE_FORMATS[fmt]


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL's about the damaged files it is given here
@settings(max_examples=40, deadline=None)
@given(image=image_files(), channels=st.sampled_from([1, 3]))
@limited
def test_image_files(tmp_path_factory, image, channels):
    """Every reader of images goes through vit.data.load_image: an image in the asked mode that the evaluation
    transform turns into finite numbers, or a DataError naming the file."""
    from vit import data, transforms

    encoded, suffix = image
    path = tmp_path_factory.mktemp("img") / f"x{suffix}"
    path.write_bytes(encoded)
    mode = "L" if channels == 1 else "RGB"
    try:
        im = data.load_image(str(path), mode)
    except vit.DataError as e:
        event("refused")
        assert str(path) in str(e), e
        return
    event("read")
    assert im.mode == mode and 0 < im.width * im.height <= 16 * 16
    pre = vit.Preprocess((channels, 8, 8), (0.5,) * channels, (0.25,) * channels, "bilinear", 1.0)
    x = transforms.file_transforms(pre, train=False)(im)
    assert x.shape == (channels, 8, 8) and torch.isfinite(x).all()


# --------------------------------------------------------------------------------------------------------
# Command lines: train.py and evaluate.py with hostile flag values


def flag_numbers(integer: bool):
    if integer:
        return st.one_of(st.integers(-3, 6), st.sampled_from([2**31, 2**63, 10**30, -(2**63)])).map(str)
    return st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                     st.sampled_from(["nan", "inf", "-inf", "1e308", "0", "-1", "0.5", "abc", ""]))


def run_script(main, argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a script's main(argv), run here (argparse exits with SystemExit)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


TRAIN_FLAGS = {
    **{f: flag_numbers(True) for f in ["--seed", "--split-seed", "--batch-size", "--epochs", "--steps",
                                        "--accum-steps", "--num-classes", "--save-every", "--crop-pad",
                                        "--repeat-aug", "--eval-shift"]},
    "--max-steps": st.sampled_from(["1", "2", "-1", "x"]),  # the run stays one or two steps long
    **{f: flag_numbers(False) for f in ["--lr", "--min-lr", "--warmup-epochs", "--weight-decay", "--label-smoothing",
                                         "--drop-path", "--patch-drop", "--mixup", "--cutmix", "--hflip", "--reprob",
                                         "--clip-grad", "--ema-decay", "--val-size", "--augment-min-epochs",
                                         "--patch-drop-end"]},
    "--threads": st.sampled_from(["0", "1", "2", "-1", "5000", str(2**63)]),
    "--img-size": st.sampled_from(["0", "1", "7", "8", "16", "-8", "4096", str(10**9)]),
    "--randaug": st.one_of(st.sampled_from(["rand-m9-mstd0.5-inc1", "rand-n2", "bogus-m9", "rand-m99999999999",
                                            "rand-mnan", "augmix", "rand--"]), st.text(max_size=8)),
    "--budget": st.one_of(st.sampled_from(["15m", "0s", "-1m", "1e9h", "nanm", "1h30"]), st.text(max_size=5)),
    "--device": st.sampled_from(["cpu", "meta", "cuda:7", "xla", "", "cpu:0", "mps", "auto"]),
    "--precision": st.sampled_from(["fp32", "bf16", "fp16", "auto", "int8"]),
    "--opt": st.sampled_from(["adamw", "sgd", "muon", "lamb"]),
    "--model": st.sampled_from(["vit_nano_patch2_8", "vit_nano_patch2_8", "vit_huge_patch14_224", "nope", ""]),
    "--dataset": st.sampled_from(["digits", "digits", "folder", "mnist", "cifar10", "junk"]),
    "--data-mode": st.sampled_from(["auto", "memory", "loader", "disk"]),
    "--on-corrupt": st.sampled_from(["skip", "error", "ignore"]),
}


@settings(max_examples=30, deadline=None)
@given(flags=st.dictionaries(st.sampled_from(sorted(TRAIN_FLAGS)), st.none(), min_size=1, max_size=4).flatmap(
    lambda chosen: st.fixed_dictionaries({f: TRAIN_FLAGS[f] for f in chosen})))
@limited
def test_train_command_lines(tmp_path_factory, flags):
    """train.py with up to four hostile flag values (one step at most): it trains, or exits 2 with one
    `error:` line (argparse's usage line and `error:` for a value of the wrong kind), or 1 for a non-finite
    loss -- never a traceback."""
    from vit import train

    out = tmp_path_factory.mktemp("flags") / "run"
    argv = ["--quiet", "--device", "cpu", "--epochs", "1", "--max-steps", "1", "--batch-size", "64",
            "--output", str(out), *(a for f, v in flags.items() for a in (f, v))]
    code, _, err = run_script(train.main, argv)
    event(f"exit {code}")
    assert "Traceback" not in err, err
    assert code in (0, 1, 2), (code, err)
    if code:
        assert "error:" in err or "non-finite loss" in err, err


@pytest.fixture(scope="module")
def predict_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    model = VisionTransformer(SMALL)
    model.preprocess = vit.Preprocess((1, 8, 8), (0.5,), (0.5,), "bicubic", 1.0)
    vit.save_pretrained(model, d / "w.safetensors", class_names=list("abc"))
    Image.new("L", (9, 7), 128).save(d / "x.png")
    return d


EVALUATE_FLAGS = {
    "--batch-size": flag_numbers(True), "--topk": flag_numbers(True), "--workers": flag_numbers(True),
    "--eval-shift": flag_numbers(True),
    "--split-seed": flag_numbers(True), "--val-size": flag_numbers(False),
    "--device": st.sampled_from(["cpu", "meta", "cuda:7", "", "auto"]),
    "--precision": st.sampled_from(["fp32", "bf16", "fp16", "auto", "int8"]),
    "--model": st.sampled_from(["vit_nano_patch2_8", "nope", ""]),
    "--split": st.sampled_from(["val", "test", "train"]), "--on-corrupt": st.sampled_from(["skip", "error", "x"]),
}


@settings(max_examples=30, deadline=None)
@given(flags=st.dictionaries(st.sampled_from(sorted(EVALUATE_FLAGS)), st.none(), min_size=1, max_size=4).flatmap(
    lambda chosen: st.fixed_dictionaries({f: EVALUATE_FLAGS[f] for f in chosen})))
@limited
def test_evaluate_command_lines(predict_files, flags):
    """evaluate.py --predict with up to four hostile flag values: predictions, or exit 2 with an `error:` line."""
    from vit.evaluate import main

    argv = [str(predict_files / "w.safetensors"), "--predict", str(predict_files / "x.png"), "--device", "cpu",
            "--output", str(predict_files / "out"), *(a for f, v in flags.items() for a in (f, v))]
    code, out, err = run_script(main, argv)
    event(f"exit {code}")
    assert "Traceback" not in err, err
    assert code in (0, 2), (code, err)
    assert "error:" in err if code else "1. " in out


# --------------------------------------------------------------------------------------------------------
# Datasets: wds: shards and hf: datasets built with generated member names, labels, sizes and split metadata

# Low limits, so that a drawn size crosses them: what a case may hold, and what it must be refused for.
READER_LIMITS = {"VIT_MAX_CLASSES": "50", "VIT_MAX_MEMBER_BYTES": "4096", "VIT_MAX_SHARDS": "8"}
BIG = b"\0" * 5000  # appended to a member or cell: over VIT_MAX_MEMBER_BYTES


@contextlib.contextmanager
def reader_limits():
    saved = {k: os.environ.get(k) for k in READER_LIMITS}
    os.environ.update(READER_LIMITS)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def tiny_png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4), value % 256, np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def read_labels(source) -> list[int]:
    """Every label a split yields: in memory, or streamed once through the evaluation loader (no workers)."""
    from vit import data

    if isinstance(source, data.TensorData):
        return source.labels.tolist()
    loader = data.eval_loader(source, lambda im: torch.from_numpy(np.asarray(im).copy()), channels=1,
                              on_corrupt="skip", batch_size=4, workers=0, rank=0, world=1, pin_memory=False)
    return [label for _, y, _ in loader if y is not None for label in y.tolist()]


CLS_TEXTS = ["0", "1", "2", " 1\n", "-1", "1.9", "1e3", "\u00b2", "", "49", "50", "1000000000000"]
JSON_LABELS = [0, 1, 2, 1.9, True, None, "1", -1, 49, 50, 10**12]


@st.composite
def shard_sets(draw):
    """Tar shards written member by member: keys with and without webdataset's "__" prefix, images that are PNGs,
    junk or over the size limit, labels of every kind, an _info.json whose counts and classes may lie. Returns
    (files, pattern, label_key, expected): expected, the labels a streamed pass must give where every part of the
    set is well formed, else None."""
    hostile = draw(st.booleans())  # else every part is well formed, and the result must be exact
    label_key = draw(st.sampled_from(["", "json:label"]))
    shards, clean, expected = [], True, []
    for s in range(draw(st.integers(1, 3))):
        members, real = [], 0
        for j in range(draw(st.integers(0, 4))):
            prefix = draw(st.sampled_from(["", "", "", "__", "dir/"]))
            key = f"{prefix}k{s}{j}"
            image = draw(st.sampled_from(["png", "png", "png", "junk", "big", "none"] if hostile else ["png"]))
            if label_key:
                value = draw(st.sampled_from(JSON_LABELS + ["missing"] if hostile else [0, 1, 2]))
                label = None if value == "missing" else (f"{key}.json", json.dumps({"label": value}).encode())
                good = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 50
                number = value
            else:
                text = draw(st.sampled_from(CLS_TEXTS + ["missing"] if hostile else ["0", "1", "2", " 1\n"]))
                label = None if text == "missing" else (f"{key}.cls", text.encode())
                good = text.strip().isascii() and text.strip().isdigit() and int(text) < 50
                number = int(text) if good else None
            parts = {"png": [(f"{key}.png", tiny_png(j))], "junk": [(f"{key}.png", b"not a png")],
                     "big": [(f"{key}.png", tiny_png(j) + BIG)], "none": []}[image]
            parts += [label] if label else []
            members += draw(st.permutations(parts))
            if key.startswith("__") or not parts:
                continue  # no sample, for the scan and the reader alike
            real += 1
            if image == "png" and good and label:
                expected.append(number)
            else:
                clean = False
        shards.append((f"train-{s:04d}.tar", members, real))
    info = draw(st.sampled_from(["none", "true", "lie"] if hostile else ["none", "true"]))
    classes = [f"c{i}" for i in range(draw(st.sampled_from([0, 1, 2, 3, 4] if hostile else [0, 3, 4])))] \
        if info != "none" else []
    if info == "true":
        lengths = [real for _, _, real in shards]
    else:
        lengths = [draw(st.sampled_from([real, real + 1, 0, 10**12, 1.9, "3", -1])) for _, _, real in shards]
        clean = clean and info == "none"
    k = len(classes) if classes else max(expected, default=-1) + 1
    clean = clean and bool(expected) and k >= 2 and all(y < k for y in expected)
    files = {}
    for name, members, _ in shards:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for member, payload in members:
                ti = tarfile.TarInfo(member)
                ti.size = len(payload)
                tar.addfile(ti, io.BytesIO(payload))
        files[name] = buf.getvalue()
    if info != "none":
        files["_info.json"] = json.dumps({"classes": classes, "splits": {"train": {
            "name": "train", "filenames": [n for n, _, _ in shards], "shard_lengths": lengths}}}).encode()
    n = len(shards)
    pattern = draw(st.sampled_from([f"train-{{0000..{n - 1:04d}}}.tar", "train-{0000..9999}.tar",
                                    "train-{0..9}{0..9}{0..9}{0..9}{0..9}{0..9}{0..9}{0..9}{0..9}.tar",
                                    "pipe:cat train-0000.tar"] if hostile else [f"train-{{0000..{n - 1:04d}}}.tar"]))
    clean = clean and pattern.startswith("train-{0000..")
    return files, pattern, label_key, (sorted(expected) if clean else None)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=shard_sets(), memory=st.booleans())
@limited
def test_wds_shards(tmp_path_factory, case, memory):
    """wds: over generated shards: every label a split yields lies in [0, classes), a well-formed set gives
    exactly its samples' labels, and anything else is a VitError -- within the case's time and memory, never a
    class list or a read sized by a number in a file."""
    from vit import sources

    files, pattern, label_key, expected = case
    folder = tmp_path_factory.mktemp("wds")
    for name, payload in files.items():
        (folder / name).write_bytes(payload)
    with reader_limits():
        try:
            got = sources.load_dataset(f"wds:{folder}/{pattern}" if not pattern.startswith("pipe:") else
                                       f"wds:{pattern}", "train", data_mode="memory" if memory else "loader",
                                       img_size=4, channels=1, val_size=1, label_key=label_key)
            labels = read_labels(got)
        except vit.VitError as e:
            event("refused")
            # in memory, train is carved (--val-size 1), which a single sample cannot give
            assert expected is None or memory and len(expected) < 2, f"a well-formed set was refused: {e}"
            return
    event("read")
    assert all(0 <= y < len(got.classes) for y in labels), (labels, got.classes)
    if expected is not None and not memory:  # a streamed pass yields every sample once
        assert sorted(labels) == expected


NAMES = ["cat", "dog", "emu", "yak"]


@st.composite
def hf_tables(draw):
    """A train split (and perhaps a validation split): labels in a ClassLabel (names in any order, the validation
    split's perhaps reordered or with a name train lacks) or a bare integer column (any value), image cells of
    PNG bytes, junk, bytes over the limit, or paths to a file inside the dataset's folder, outside it, or to a
    FIFO. Stored by save_to_disk (which keeps each split's ClassLabel), or as parquet files where a cell names a
    path (save_to_disk would read the file into the cell; parquet splits share one set of features). Returns
    (splits, storage, expected): expected, the validation labels in train's order where all is well formed,
    else None."""
    hostile = draw(st.booleans())  # else every cell and label is well formed, and the result must be exact
    kinds = ["png", "png", "png", "junk", "big", "inside", "outside", "fifo"] if hostile else ["png", "inside"]
    cells = {split: draw(st.lists(st.sampled_from(kinds), min_size=2, max_size=5))
             for split in ["train"] + (["validation"] if draw(st.booleans()) else [])}
    storage = "parquet" if any(c in ("inside", "outside", "fifo") for v in cells.values() for c in v) else "disk"
    train_names = draw(st.permutations(NAMES[:draw(st.integers(2, 4))]))
    named = draw(st.booleans())
    splits, clean, expected = {}, all(c in ("png", "inside") for v in cells.values() for c in v), None
    for split, kinds in cells.items():
        names = train_names
        if split == "validation" and named and storage == "disk":
            names = draw(st.sampled_from([train_names, draw(st.permutations(train_names))] +
                                         ([[*train_names, "zebu"]] if hostile else [])))
            clean = clean and set(names) <= set(train_names)
        if named:
            labels = [draw(st.integers(0, len(names) - 1)) for _ in kinds]
        else:
            labels = [draw(st.sampled_from([0, 1, 1, 2, -1, 49, 50, 5 * 10**7] if hostile else [0, 1, 2]))
                      for _ in kinds]
            clean = clean and all(0 <= y < 50 for y in labels)
        splits[split] = (kinds, labels, list(names) if named else None)
    if "validation" in splits and clean:
        _, labels, names = splits["validation"]
        train_top = max(splits["train"][1])  # without names, the classes are 0..train_top: two at least
        if named or 1 <= train_top and max(labels) <= train_top:
            expected = [train_names.index(names[y]) for y in labels] if named else labels
    return splits, storage, expected


@pytest.fixture(scope="module")
def datasets_cache(tmp_path_factory):
    """The datasets library's cache for parquet turned into Arrow, offline, for this module."""
    datasets = pytest.importorskip("datasets")
    saved = datasets.config.HF_DATASETS_CACHE, datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_DATASETS_CACHE, datasets.config.HF_HUB_OFFLINE = tmp_path_factory.mktemp("hf-cache"), True
    yield
    datasets.config.HF_DATASETS_CACHE, datasets.config.HF_HUB_OFFLINE = saved


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=hf_tables(), memory=st.booleans())
@limited
def test_hf_datasets(tmp_path_factory, datasets_cache, case, memory):
    """hf: over generated parquet splits: labels in [0, classes) in train's order (a validation split naming the
    classes in another order read by name), or a VitError; a path cell reads only a regular file inside the
    dataset's folder (a FIFO would hang the case past its time limit)."""
    import datasets

    from vit import sources

    splits, storage, expected = case
    folder = tmp_path_factory.mktemp("hf")
    outside = tmp_path_factory.mktemp("elsewhere") / "x.png"
    outside.write_bytes(tiny_png(7))
    (folder / "inside.png").write_bytes(tiny_png(9))
    os.mkfifo(folder / "fifo.png")
    image = {"png": lambda i: {"bytes": tiny_png(i), "path": None},
             "junk": lambda i: {"bytes": b"junk", "path": None},
             "big": lambda i: {"bytes": tiny_png(i) + BIG, "path": None},
             "inside": lambda i: {"bytes": None, "path": str(folder / "inside.png")},
             "outside": lambda i: {"bytes": None, "path": str(outside)},
             "fifo": lambda i: {"bytes": None, "path": str(folder / "fifo.png")}}
    built = {}
    for split, (cells, labels, names) in splits.items():
        label = datasets.ClassLabel(names=names) if names else datasets.Value("int64")
        features = datasets.Features({"image": datasets.Image(), "label": label})
        built[split] = datasets.Dataset.from_dict({"image": [image[c](i) for i, c in enumerate(cells)],
                                                   "label": labels}, features=features)
        if storage == "parquet":
            built[split].to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    if storage == "disk":
        datasets.DatasetDict(built).save_to_disk(str(folder / "saved"))
        folder = folder / "saved"
    kw = dict(data_mode="memory" if memory else "loader", img_size=4, channels=1, val_size=1, on_corrupt="error")
    with reader_limits():
        try:
            got = {split: sources.load_dataset(f"hf:{folder}", split, **kw) for split in ("train", "val")}
            labels = {split: read_labels(source) for split, source in got.items()}
        except vit.VitError as e:
            event("refused")
            assert expected is None, f"a well-formed dataset was refused: {e}"
            return
    event("read")
    for split, source in got.items():
        assert all(0 <= y < len(source.classes) for y in labels[split]), (split, labels[split], source.classes)
    if expected is not None:
        assert labels["val"] == expected


@settings(max_examples=150, deadline=None)
@given(pattern=st.lists(st.sampled_from(["a", "{", "}", ",", "..", "0", "3", "-1", "\\", "x", "{1..3}", "{a,b}",
                                          "{0..2..2}", "{C..a}", "{,}"]), max_size=8).map("".join))
def test_brace_patterns_are_counted_as_braceexpand_expands_them(pattern):
    """vit.files.count_braces, which bounds a pattern before any name is made, counts what braceexpand yields."""
    import braceexpand

    from vit.files import count_braces

    try:
        want = len(list(braceexpand.braceexpand(pattern)))
    except braceexpand.UnbalancedBracesError:
        with pytest.raises(vit.DataError, match="unbalanced braces"):
            count_braces(pattern)
        return
    assert count_braces(pattern) == want
