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


# ---- reference implementations: torchvision, transformers, timm's JAX loader


def randomize_(module, seed=0):
    """Random values in every parameter (the libraries zero-init heads and biases, which would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.1
            is_norm_scale = p.ndim == 1 and any(s in name for s in ("norm", "ln", "layernorm")) and name.endswith("weight")
            p.copy_(noise + 1.0 if is_norm_scale else noise)
    return module.eval()


def test_torchvision_parity():
    from torchvision.models import VisionTransformer as TorchvisionViT

    ref = randomize_(TorchvisionViT(image_size=32, patch_size=4, num_layers=2, num_heads=3, hidden_dim=192,
                                    mlp_dim=768, num_classes=5))
    model = tiny()
    vit.load_pretrained(model, ref.state_dict())
    x = images(model)
    with torch.no_grad():
        assert max_diff(model(x), ref(x)) <= LOGIT_ATOL


def hf_vit(num_labels=5, **kw):
    from transformers import ViTConfig as HFConfig, ViTForImageClassification

    cfg = HFConfig(hidden_size=192, num_hidden_layers=2, num_attention_heads=3, intermediate_size=768,
                   image_size=32, patch_size=4, num_labels=num_labels, layer_norm_eps=1e-6, **kw)
    return randomize_(ViTForImageClassification(cfg))


def test_transformers_parity_hub_files_and_memory_names(tmp_path):
    ref = hf_vit()
    ref.save_pretrained(tmp_path)  # the hub layout: model.safetensors with the v4 names, config.json
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert "vit.encoder.layer.0.attention.attention.query.weight" in f.keys()  # v4 names on disk
    x = images(tiny())
    with torch.no_grad():
        expected = ref(pixel_values=x).logits
        from_file = tiny()
        vit.load_pretrained(from_file, tmp_path / "model.safetensors")
        assert max_diff(from_file(x), expected) <= LOGIT_ATOL
        from_memory = tiny()  # transformers 5 names: vit.layers.{i}.attention.q_proj ...
        vit.load_pretrained(from_memory, ref.state_dict())
        assert max_diff(from_memory(x), expected) <= LOGIT_ATOL
        # the folder alone: architecture and labels from config.json
        rebuilt = vit.create_model(pretrained=tmp_path).eval()
        assert rebuilt.config.depth == 2 and rebuilt.class_names == [f"LABEL_{i}" for i in range(5)]
        assert max_diff(rebuilt(x), expected) <= LOGIT_ATOL


def test_transformers_headless_vitmodel():
    from transformers import ViTModel

    ref = ViTModel(hf_vit().config)  # with its pooler, names without the "vit." prefix
    randomize_(ref)
    assert "pooler.dense.weight" in ref.state_dict() and "embeddings.cls_token" in ref.state_dict()
    model = tiny(num_classes=0)
    vit.load_pretrained(model, ref.state_dict())
    x = images(model)
    with torch.no_grad():
        assert max_diff(model.forward_features(x), ref(pixel_values=x).last_hidden_state) <= LOGIT_ATOL
    with_head = tiny(num_classes=7)  # headless weights into a classifier: the new head stays
    head = with_head.head.weight.clone()
    vit.load_pretrained(with_head, ref.state_dict())
    assert torch.equal(with_head.head.weight, head)


def jax_arrays(depth=2, dim=64, heads=4, patch=4, grid=8, classes=5, big_vision=False, scanned=False, seed=0):
    """Random arrays with the names and shapes of the original JAX ViT checkpoints (google-research/
    vision_transformer) or big_vision's, as documented in those repositories' model code."""
    import numpy as np

    rng = np.random.default_rng(seed)
    hd, hidden = dim // heads, 4 * dim

    def r(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    mha, ln2, mlp = ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0") if big_vision else \
                    ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
    w = {"embedding/kernel": r(patch, patch, 3, dim), "embedding/bias": r(dim), "cls": r(1, 1, dim),
         "Transformer/encoder_norm/scale": 1 + r(dim), "Transformer/encoder_norm/bias": r(dim),
         "head/kernel": r(dim, classes), "head/bias": r(classes)}
    w["pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"] = r(1, 1 + grid * grid, dim)
    blocks = []
    for _ in range(depth):
        b = {"LayerNorm_0/scale": 1 + r(dim), "LayerNorm_0/bias": r(dim),
             f"{ln2}/scale": 1 + r(dim), f"{ln2}/bias": r(dim),
             f"{mha}/out/kernel": r(heads, hd, dim), f"{mha}/out/bias": r(dim),
             f"{mlp}/Dense_0/kernel": r(dim, hidden), f"{mlp}/Dense_0/bias": r(hidden),
             f"{mlp}/Dense_1/kernel": r(hidden, dim), f"{mlp}/Dense_1/bias": r(dim)}
        for n in ("query", "key", "value"):
            b[f"{mha}/{n}/kernel"], b[f"{mha}/{n}/bias"] = r(dim, heads, hd), r(heads, hd)
        blocks.append(b)
    if scanned:
        w.update({f"Transformer/encoderblock/{k}": np.stack([b[k] for b in blocks]) for k in blocks[0]})
    else:
        w.update({f"Transformer/encoderblock_{i}/{k}": v for i, b in enumerate(blocks) for k, v in b.items()})
    return w


@pytest.mark.parametrize("layout", ["vision_transformer", "opt/target", "big_vision", "big_vision_scanned"])
def test_jax_npz_parity_with_timms_loader(tmp_path, layout):
    import numpy as np
    import timm

    w = jax_arrays(big_vision=layout.startswith("big_vision"), scanned=layout.endswith("scanned"))
    prefix = {"opt/target": "opt/target/", "big_vision": "params/", "big_vision_scanned": "params/"}.get(layout, "")
    path = tmp_path / "ViT.npz"
    np.savez(path, **{prefix + k: v for k, v in w.items()})
    kw = dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4, num_classes=5)
    ref = timm.models.VisionTransformer(**kw).eval()
    ref.load_pretrained(str(path))  # timm's own _load_weights
    model = vit.VisionTransformer(**kw).eval()
    vit.load_pretrained(model, path)
    x = images(model)
    with torch.no_grad():
        assert max_diff(model(x), ref(x)) <= LOGIT_ATOL
