"""Pretrained weights: save/load round trips, every import format against its own implementation, errors.

Reference implementations are the independent ones (torchvision, transformers, timm's npz loader and
resampling functions); tolerances are stated per test (max abs logit difference, fp32).
"""

import os
import pickle

import pytest
import torch

import vit
from vit.weights import read_checkpoint

torch.backends.mkldnn.deterministic = True

LOGIT_ATOL = 1e-5  # issue 3: max abs logit difference against the reference implementations, fp32


def tiny(**overrides):
    """A registered variant cut down to test size (depth 2, 8x8 patch grid)."""
    kw = dict(depth=2, num_classes=5)
    kw.update(overrides)
    return vit.create_model("vit_tiny_patch4_32", **kw).eval()


def images(model, batch=2, seed=0):
    c = model.config
    H, W = vit.model.to_2tuple(c.img_size)
    return torch.randn(batch, c.in_chans, H, W, generator=torch.Generator().manual_seed(seed))


def max_diff(a, b):
    return (a - b).abs().max().item()


# ---- save_pretrained / create_model(pretrained=path)


def test_round_trip_rebuilds_from_the_file_alone(tmp_path):
    model = tiny()
    names = [f"class_{i}" for i in range(5)]
    path = vit.save_pretrained(model, tmp_path / "best.safetensors", class_names=names)
    loaded = vit.create_model(pretrained=path).eval()
    x = images(model)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.config == model.config
    assert loaded.class_names == names
    assert loaded.preprocess == model.preprocess
    info = vit.read_metadata(path)
    assert info.config == model.config and info.class_names == names and info.format_version == 1
    assert not [p for p in tmp_path.iterdir() if p.name != "best.safetensors"], "temporary file left behind"


def test_named_load_with_new_size_and_classes(tmp_path):
    model = tiny()
    path = vit.save_pretrained(model, tmp_path / "w.safetensors")
    loaded = vit.create_model("vit_tiny_patch4_32", pretrained=str(path), depth=2, num_classes=3, img_size=48)
    assert loaded.config.num_classes == 3 and loaded.patch_embed.grid_size == (12, 12)
    assert loaded.preprocess.input_size == (3, 48, 48)
    assert torch.equal(loaded.blocks[1].attn.qkv.weight, model.blocks[1].attn.qkv.weight)
    assert loaded(images(loaded)).shape == (2, 3)


def test_named_load_keeps_the_files_head(tmp_path):
    model = tiny()
    path = vit.save_pretrained(model, tmp_path / "w.safetensors", class_names=list("abcde"))
    loaded = vit.create_model("vit_tiny_patch4_32", pretrained=path, depth=2)
    assert loaded.num_classes == 5 and loaded.class_names == list("abcde")
    assert torch.equal(loaded.head.weight, model.head.weight)


def test_training_checkpoint_metadata(tmp_path):
    model = tiny()
    path = tmp_path / "last.ckpt"
    torch.save({"model": model.state_dict(), "config": model.config.to_dict(), "epoch": 3,
                "class_names": list("abcde")}, path)
    info = vit.read_metadata(path)
    assert info.config == model.config and info.class_names == list("abcde")
    loaded = vit.create_model(pretrained=path).eval()
    x = images(model)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
