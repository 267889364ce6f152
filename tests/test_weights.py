"""vit.weights: save/load round trips, every import format against its own implementation, the folders written
for transformers and timm loaded by those libraries, uploads to a stand-in hub, and every kind of bad file or
state dict ending in a CheckpointError that names it.

Reference implementations are the independent ones (torchvision, transformers, timm's npz loader and
resampling functions); tolerances are stated per test (max abs logit difference, fp32).
"""

import json
import os
import re

import pytest
import torch

import vit
from vit.weights import read_weights_file

from conftest import NANO, assert_no_code_ran, tiny_nano

torch.backends.mkldnn.deterministic = True

LOGIT_ATOL = 1e-5  # max abs logit difference against the reference implementations, fp32


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
    """train.py's last.ckpt: a dict with the state dict under "model" beside optimizer state and configs."""
    model = tiny()
    path = tmp_path / "last.ckpt"
    torch.save({"format": "vit-train", "version": 1, "config": {"model": "vit_tiny_patch4_32", "lr": 1e-3},
                "model_config": model.config.to_dict(), "class_names": list("abcde"), "model": model.state_dict(),
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]}, "ema": None, "rng": {"seed": 0}}, path)
    info = vit.read_metadata(path)
    assert info.config == model.config and info.class_names == list("abcde")
    loaded = vit.create_model(pretrained=path).eval()
    x = images(model)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_timm_config_json_names_an_architecture_the_registry_resolves(tmp_path):
    """vit.weights reports a timm config.json's architecture as it is; vit.read_metadata resolves the name."""
    import json

    from safetensors.torch import save_file

    model = vit.create_model("vit_tiny_patch16_224", depth=2, img_size=32, num_classes=3)
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch16_224.augreg_in21k_ft_in1k", "num_classes": 3,
        "model_args": {"depth": 2, "img_size": 32}, "label_names": list("abc")}))
    raw = vit.weights.read_stored_metadata(tmp_path)
    assert raw.config is None and raw.architecture == "vit_tiny_patch16_224"
    assert raw.model_args == {"depth": 2, "img_size": 32, "num_classes": 3}
    info = vit.read_metadata(tmp_path)
    assert info.config == model.config and info.class_names == list("abc")


@pytest.mark.parametrize("name, content, match", [
    ("config.json", [1, 2], "holds a JSON list"),
    ("config.json", {"model_type": "vit", "hidden_size": 0}, "config.json cannot be used"),
    ("config.json", {"model_type": "vit", "num_hidden_layers": 10**9}, "config.json cannot be used: .*parameters"),
    ("config.json", {"model_type": "vit", "qkv_bias": "no", "image_size": "224"}, "config.json cannot be used"),
    ("preprocessor_config.json", {"image_mean": [0.5], "image_std": [0.0], "size": 32}, "std"),
    ("preprocessor_config.json", "text", "holds a JSON str"),
])
def test_hostile_sidecar_json_names_the_file(tmp_path, name, content, match):
    """A config.json or preprocessor_config.json beside the weights is a file we did not write: any field of
    the wrong type or range is a CheckpointError naming it, before anything is built from it."""
    import json

    from safetensors.torch import save_file

    save_file(vit.create_model("vit_nano_patch2_8").state_dict(), tmp_path / "model.safetensors")
    (tmp_path / name).write_text(json.dumps(content))
    with pytest.raises(vit.CheckpointError, match=match) as e:
        vit.read_metadata(tmp_path)
    assert name in str(e.value)


NANO_1 = dict(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=64, depth=1, num_heads=4)


@pytest.mark.parametrize("meta, match", [
    ({"config": {**NANO_1, "depth": 10**9}}, r"'config': this configuration has ~.* parameters, over the limit"),
    ({"config": {**NANO_1, "mlp_ratio": 1e308}}, r"'config': mlp_ratio must be a positive finite number"),
    ({"config": {**NANO_1, "embed_dim": 2**40}}, r"'config': embed_dim must be a positive integer up to"),
    ({"config": {**NANO_1, "qkv_bias": "false"}}, r"'config': qkv_bias must be True or False, got 'false'"),
    ({"config": [1, 2]}, r"'config' must be a JSON object of model settings, got \[1, 2\]"),
    ({"config": "{"}, r"'config' is not JSON"),
    ({"preprocess": {"input_size": [1, 8, 8], "mean": [0.5], "std": [0]}}, r"'preprocess': .*std"),
    ({"preprocess": {"input_size": [1, 8, 8], "mean": [0.5], "std": [0.5], "interpolation": "cubic"}},
     r"'preprocess': preprocessing interpolation must be one of"),
    ({"class_names": '"abcdefghij"'}, r"'class_names' must be a JSON list of strings, got 'abcdefghij'"),
    ({"class_names": list(range(10))}, r"'class_names' must be a list of strings"),
    ({"format_version": "2"}, r"format_version 2; this vit reads versions 1 to 1"),
    ({"format_version": "1" * 5000}, r"format_version '1111.*\(5002 characters\)"),
], ids=["depth-1e9", "mlp-1e308", "width-2**40", "bool-as-string", "config-list", "config-not-json", "std-0",
        "interpolation", "names-string", "names-ints", "newer-version", "version-5000-digits"])
def test_hostile_metadata_names_the_file_and_field(tmp_path, meta, match):
    """A weights file's own metadata (as save_pretrained writes it: JSON strings) is untrusted: every field is
    type- and range-checked before a model is sized by it, and the error names the file, the field and the value."""
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    strings = {k: v if isinstance(v, str) else json.dumps(v) for k, v in {"config": NANO_1, **meta}.items()}
    save_file(tiny_nano().state_dict(), str(path), metadata={"format": "vit", **strings})
    for read in (vit.read_metadata, lambda p: vit.create_model(pretrained=p)):
        with pytest.raises(vit.CheckpointError, match=match) as e:
            read(path)
        assert str(e.value).startswith(f"{path}: metadata ")


def test_a_config_claiming_far_more_than_the_file_holds_is_refused_before_building(tmp_path, monkeypatch):
    """A 708-byte file whose config says depth 70000 (the model would take 5 GB, as the tensors found missing
    afterwards): its config's parameter count is set against the values the file stores, before any model is
    built; a file that holds its model's weights loads as before."""
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    lie = {**NANO_1, "depth": 70000}
    save_file({"cls_token": torch.zeros(1, 1, 64)}, str(path), metadata={"format": "vit", "config": json.dumps(lie)})
    assert path.stat().st_size < 1000

    def built(*args, **kwargs):
        raise AssertionError("a model was built")

    with monkeypatch.context() as m:
        m.setattr(vit.registry, "build_from_config", built)
        with pytest.raises(vit.CheckpointError, match=rf"{path}: its config describes a model of ~[\d.e+]+ parameters "
                                                      r"\(depth 70000, width 64\), but the file holds 64 values"):
            vit.create_model(pretrained=path)
    good = vit.save_pretrained(tiny_nano(), tmp_path / "good.safetensors")
    assert vit.create_model(pretrained=good).config.depth == 1


def conv_stem_model():
    """A conv-stem tiny whose BatchNorm statistics have moved from their start (one training-mode forward)."""
    model = tiny(stem="conv").train()
    with torch.no_grad():
        model(images(model, batch=4, seed=1))
    return model.eval()


def test_conv_stem_round_trips_with_its_batchnorm_statistics(tmp_path):
    """save_pretrained's file holds the conv stem's weights and running statistics: built from the file alone or
    under its registered name (whose config has the patchify stem: the file's stem is built), the logits are
    the saved model's. An RGB conv stem serves a gray model as the patchify stem does."""
    model = conv_stem_model()
    path = vit.save_pretrained(model, tmp_path / "conv.safetensors")
    x = images(model)
    for loaded in (vit.create_model(pretrained=path), vit.create_model("vit_tiny_patch4_32", pretrained=path, depth=2)):
        assert loaded.config == model.config and loaded.config.stem == "conv"
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
        with torch.no_grad():
            assert torch.equal(loaded.eval()(x), model(x))
    assert model.patch_embed.backbone[0].bn.running_var.ne(1).any()  # the statistics compared are not the initial ones
    gray = vit.create_model("vit_tiny_patch4_32", pretrained=path, depth=2, in_chans=1).eval()
    g = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert max_diff(gray(g), model(g.repeat(1, 3, 1, 1))) <= LOGIT_ATOL


def test_conv_stem_weights_fit_only_a_conv_stem_of_their_patch_size(tmp_path):
    conv = vit.save_pretrained(conv_stem_model(), tmp_path / "conv.safetensors")
    patch = vit.save_pretrained(tiny(), tmp_path / "patch.safetensors")
    with pytest.raises(vit.ConfigError, match=r"the checkpoint's conv stem \(2 convs, a 1x1 projection\) is not the "
                                              r"one of patch_size 8 \(3 convs, a 1x1 projection\): a conv stem is not "
                                              r"resampled to another patch size"):
        vit.create_model("vit_tiny_patch4_32", pretrained=conv, depth=2, patch_size=8, img_size=64)
    with pytest.raises(vit.CheckpointError, match=r"has a patchify stem \(stem='patch'\) and the model a conv stem"):
        vit.create_model("vit_tiny_patch4_32", pretrained=patch, depth=2, stem="conv")
    with pytest.raises(vit.CheckpointError, match=r"has a conv stem \(stem='conv'\) and the model a patchify stem"):
        vit.create_model(pretrained=conv, stem="patch")
    with pytest.raises(vit.ConfigError, match=r"timm's VisionTransformer cannot be built with stem='conv'"):
        vit.save_pretrained(conv_stem_model(), tmp_path / "timm", format="timm")
    assert not (tmp_path / "timm").exists()


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
    from transformers import ViTImageProcessor

    ref = hf_vit()
    ref.save_pretrained(tmp_path)  # the hub layout: model.safetensors with the v4 names, config.json
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)  # preprocessor_config.json
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
        assert rebuilt.preprocess == vit.Preprocess((3, 32, 32), (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0)
        assert max_diff(rebuilt(x), expected) <= LOGIT_ATOL


def test_transformers_layer_norm_eps_from_config_json(tmp_path):
    """transformers' default layer_norm_eps (1e-12) comes with config.json: with timm's 1e-6 instead, the logits
    of this 2-block model differed by ~6e-5."""
    from transformers import ViTConfig as HFConfig, ViTForImageClassification

    cfg = HFConfig(hidden_size=192, num_hidden_layers=2, num_attention_heads=3, intermediate_size=768,
                   image_size=32, patch_size=4, num_labels=5)
    assert cfg.layer_norm_eps == 1e-12
    ref = randomize_(ViTForImageClassification(cfg)).eval()
    ref.save_pretrained(tmp_path)
    model = vit.create_model(pretrained=tmp_path).eval()
    assert model.config.norm_eps == 1e-12 and model.blocks[0].norm1.eps == model.norm.eps == 1e-12
    x = images(model)
    with torch.no_grad():
        assert max_diff(model(x), ref(pixel_values=x).logits) <= LOGIT_ATOL


def test_transformers_deit_with_teacher_parity(tmp_path):
    """DeiTForImageClassificationWithTeacher (its default layer_norm_eps 1e-12): from its hub folder the model is
    built distilled from config.json alone; its in-memory (transformers 5) names load too."""
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    cfg = DeiTConfig(hidden_size=192, num_hidden_layers=2, num_attention_heads=3, intermediate_size=768,
                     image_size=32, patch_size=4, num_labels=5)
    ref = randomize_(DeiTForImageClassificationWithTeacher(cfg))
    ref.save_pretrained(tmp_path)
    model = vit.create_model(pretrained=tmp_path).eval()
    assert model.config.distilled and model.config.norm_eps == 1e-12 and model.num_prefix_tokens == 2
    x = images(model)
    with torch.no_grad():
        out = ref(pixel_values=x)
        assert max_diff(model(x), out.logits) <= LOGIT_ATOL
        model.train().set_distilled_training()
        cls, dist = model(x)
        assert max_diff(cls, out.cls_logits) <= LOGIT_ATOL and max_diff(dist, out.distillation_logits) <= LOGIT_ATOL
        from_memory = tiny(distilled=True, norm_eps=1e-12)
        vit.load_pretrained(from_memory, ref.state_dict())
        assert max_diff(from_memory(x), out.logits) <= LOGIT_ATOL


def test_reset_classifier_to_avg_pool_saves_and_loads_back(tmp_path):
    """The norms stay as built when the pool changes (as timm's), and the saved config says so."""
    model = tiny()
    model.reset_classifier(3, global_pool="avg")
    assert model.config.global_pool == "avg" and model.config.fc_norm is False
    path = vit.save_pretrained(model, tmp_path / "w.safetensors")
    back = vit.create_model(pretrained=str(path)).eval()
    x = images(model)
    with torch.no_grad():
        assert torch.equal(back(x), model.eval()(x))


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


def test_timm_state_dict_and_deit_wrapper(tmp_path):
    import timm

    ref = randomize_(timm.models.VisionTransformer(img_size=32, patch_size=4, embed_dim=192, depth=2, num_heads=3,
                                                   num_classes=5))
    path = tmp_path / "deit.pth"
    torch.save({"model": ref.state_dict(), "epoch": 300, "args": {"lr": 5e-4}}, path)  # DeiT's layout
    model = tiny()
    vit.load_pretrained(model, path)
    x = images(model)
    with torch.no_grad():
        assert max_diff(model(x), ref(x)) <= LOGIT_ATOL


def test_jax_bfloat16_arrays(tmp_path):
    """big_vision writes bfloat16 with ml_dtypes; numpy without it reads 2-byte void records."""
    import numpy as np

    w = jax_arrays()
    exact = {k: torch.from_numpy(v).bfloat16() for k, v in w.items()}
    raw = {k: t.view(torch.int16).numpy().view("V2") for k, t in exact.items()}
    np.savez(tmp_path / "bf16.npz", **{"params/" + k: v for k, v in raw.items()})
    state, _ = read_weights_file(tmp_path / "bf16.npz")
    assert all(torch.equal(state["params/" + k], t.float()) for k, t in exact.items())


def test_jax_checkpoint_missing_an_array(tmp_path):
    import numpy as np

    w = jax_arrays()
    del w["Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel"]
    np.savez(tmp_path / "ViT.npz", **{"opt/target/" + k: v for k, v in w.items()})
    with pytest.raises(vit.CheckpointError, match="no opt/target/Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel"):
        vit.load_pretrained(vit.VisionTransformer(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4),
                            tmp_path / "ViT.npz")


# ---- adapting to a new grid, patch size, channel count, head


def saved(tmp_path, **overrides):
    model = tiny(**overrides)
    randomize_(model)
    return model, vit.save_pretrained(model, tmp_path / "w.safetensors")


@pytest.mark.parametrize("src, dst", [
    (dict(), dict(img_size=48)),  # square grid 8x8 -> 12x12, [CLS] kept
    (dict(img_size=(24, 40)), dict(img_size=32)),  # non-square 6x10 -> 8x8 (grid read from the file's config)
    (dict(reg_tokens=4), dict(reg_tokens=4, img_size=(40, 24))),  # [CLS] + 4 registers in the position table
    (dict(reg_tokens=4, no_embed_class=True), dict(reg_tokens=4, no_embed_class=True, img_size=16)),
    (dict(distilled=True), dict(distilled=True, img_size=48)),  # [CLS] and distillation rows kept
])
def test_pos_embed_resampling_matches_timm(tmp_path, src, dst):
    from timm.layers import resample_abs_pos_embed

    model, path = saved(tmp_path, **src)
    loaded = vit.create_model("vit_tiny_patch4_32", pretrained=path, depth=2, **dst)
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    expected = resample_abs_pos_embed(model.pos_embed.detach(), new_size=loaded.patch_embed.grid_size,
                                      old_size=model.patch_embed.grid_size, num_prefix_tokens=prefix,
                                      interpolation="bicubic", antialias=True)
    assert max_diff(loaded.pos_embed.detach(), expected) <= 1e-6
    assert loaded(images(loaded)).shape == (2, 5)


def test_patch_embed_resampling_matches_timm_and_flexivit(tmp_path):
    from timm.layers import resample_patch_embed as timm_resample

    from vit.weights import resample_patch_embed

    w = torch.randn(8, 3, 4, 4)
    for new in [(8, 8), (2, 2), (6, 3)]:
        assert max_diff(resample_patch_embed(w, new), timm_resample(w, list(new))) <= 1e-5
    # FlexiViT's promise: the new kernel on the upsampled patch gives the old kernel's response.
    patch = torch.randn(5, 3, 4, 4)
    up = torch.nn.functional.interpolate(patch, size=(8, 8), mode="bicubic", antialias=True)
    old = torch.einsum("bchw,ochw->bo", patch, w)
    new = torch.einsum("bchw,ochw->bo", up, resample_patch_embed(w, (8, 8)))
    assert max_diff(old, new) <= 1e-4
    # through the loader: a patch-4 file into a patch-8 model
    _, path = saved(tmp_path)
    loaded = vit.create_model("vit_tiny_patch4_32", pretrained=path, depth=2, patch_size=8, img_size=64)
    assert loaded.patch_embed.proj.weight.shape == (192, 3, 8, 8)


def test_grayscale_stem_from_rgb_weights(tmp_path):
    rgb, path = saved(tmp_path)
    gray = vit.create_model("vit_tiny_patch4_32", pretrained=path, depth=2, in_chans=1).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():  # a gray image gives what the RGB model gives for it replicated to RGB
        assert max_diff(gray(x), rgb(x.repeat(1, 3, 1, 1))) <= LOGIT_ATOL
    assert gray.preprocess.input_size == (1, 32, 32) and len(gray.preprocess.mean) == 1


def test_head_reinitialised_for_new_classes(tmp_path):
    model, path = saved(tmp_path)
    loaded = vit.create_model("vit_tiny_patch4_32", pretrained=path, depth=2, num_classes=9)
    assert loaded.head.weight.shape == (9, 192) and loaded.class_names is None
    torch.testing.assert_close(loaded.norm.weight, model.norm.weight)
    features = vit.create_model("vit_tiny_patch4_32", pretrained=path, depth=2, num_classes=0)
    assert isinstance(features.head, torch.nn.Identity)


def resaved(path, out, change):
    """The safetensors file at `path` written to `out` with its metadata and `change(tensors)` as its tensors."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    save_file(change(tensors), str(out), metadata=metadata)
    return out


@pytest.mark.parametrize("distilled, dropped", [(False, "head."), (False, "head.bias"), (True, "head_dist.")])
def test_a_classifier_without_its_head_is_refused_unless_a_new_head_is_asked_for(tmp_path, distilled, dropped):
    """A file whose metadata says 5 classes but lacks head tensors: built as it says, its head would be freshly
    initialised and score chance without a word. Refused, naming the tensors; with num_classes given (fine-tuning
    its backbone for a new task) the new head is initialised as before."""
    model, path = saved(tmp_path, distilled=distilled)
    headless = resaved(path, tmp_path / "headless.safetensors",
                       lambda t: {k: v for k, v in t.items() if not k.startswith(dropped)})
    missing = ", ".join(k for k in ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias")
                        if k.startswith(dropped))
    for named in ({}, dict(name="vit_tiny_patch4_32", depth=2, **({"distilled": True} if distilled else {}))):
        with pytest.raises(vit.CheckpointError) as e:
            vit.create_model(pretrained=headless, **named)
        assert f"{headless}: its metadata describes a classifier of 5 classes, but it has no {missing}" in str(e.value)
    new = vit.create_model(pretrained=headless, num_classes=3)
    assert new.head.weight.shape == (3, 192) and torch.equal(new.norm.weight, model.norm.weight)
    wrong = resaved(path, tmp_path / "wrong.safetensors", lambda t: {**t, "head.weight": t["head.weight"][:4]})
    with pytest.raises(vit.CheckpointError, match=r"its head.weight has shape \(4, 192\), not \(5, 192\)"):
        vit.create_model(pretrained=wrong)


# ---- unreadable files, code in pickles, wrong key sets and shapes (docs/troubleshooting.md's table)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("case, match", [
    ("truncated_safetensors", "is not a readable safetensors file"),
    ("truncated_pt", "is not a readable PyTorch checkpoint"),
    ("zero.safetensors", "is not a readable safetensors file"),
    ("zero.pt", "is not a readable PyTorch checkpoint"),
    ("zero.npz", "is not an .npz archive"),
    ("text", "is not a readable PyTorch checkpoint"),
    ("random", "is not a readable PyTorch checkpoint"),
    ("jpeg", "is not a readable PyTorch checkpoint"),
    ("non_tensor", "is not a state dict: entries \\['epoch'\\] are not tensors"),
    ("evil", r"\(it imports \w+\.system\); vit loads checkpoints .* never unpickles arbitrary code"),
    ("evil5", "is not a readable PyTorch checkpoint: the unpickler refused it"),
    ("evil_zip", "never unpickles arbitrary code"),
])
@pytest.mark.parametrize("entry", ["create_model", "load_pretrained"])
def test_unreadable_files_name_the_file_and_never_run_code(weight_files, case, match, entry):
    path = weight_files[case]
    with pytest.raises(vit.CheckpointError, match=match) as e:
        if entry == "create_model":
            vit.create_model(NANO, pretrained=str(path), depth=1)
        else:
            vit.load_pretrained(tiny_nano(), path)
    assert str(path) in str(e.value), "the error must name the file"
    assert_no_code_ran(weight_files)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(vit.CheckpointError, match=f"no weights file at {path}"):
        vit.create_model(NANO, pretrained=str(path))
    with pytest.raises(vit.CheckpointError, match=f"no weights file at {path}"):
        vit.load_pretrained(tiny_nano(), path)


def test_another_architecture(weight_files):
    with pytest.raises(vit.CheckpointError, match=r"pos_embed: expected shape \(1, 17, 64\), got \(1, 17, 32\)"):
        vit.create_model(NANO, pretrained=str(weight_files["other_arch"]), depth=1)
    with pytest.raises(vit.CheckpointError, match=r"missing keys .*blocks.1.*another architecture \(depth 6"):
        vit.create_model(NANO, pretrained=str(weight_files["good"]), num_classes=10)  # a depth-1 file into depth 6


def nano_state(**changes) -> dict[str, torch.Tensor]:
    """The one-block digits model's state dict with entries replaced (None: removed); "__" stands for "."."""
    sd = tiny_nano().state_dict()
    for k, v in changes.items():
        k = k.replace("__", ".")
        if v is None:
            del sd[k]
        else:
            sd[k] = v
    return sd


@pytest.mark.parametrize("sd, match", [
    (lambda: nano_state(blocks__0__attn__qkv__weight=None), r"missing keys \(1: blocks.0.attn.qkv.weight\)"),
    (lambda: nano_state(blocks__0__extra=torch.zeros(3)), r"unexpected keys \(1: blocks.0.extra\)"),
    (lambda: nano_state(blocks__0__mlp__fc1__weight=torch.zeros(3, 3)),
     r"shape mismatch for blocks.0.mlp.fc1.weight: the model expects \(256, 64\), the checkpoint has \(3, 3\)"),
    (lambda: nano_state(pos_embed=torch.zeros(5)), r"pos_embed: expected shape \(1, 17, 64\), got \(5,\)"),
    (lambda: nano_state(blocks__0__norm1__weight=torch.ones(64, dtype=torch.int64)),
     r"blocks.0.norm1.weight has dtype torch.int64"),
    (lambda: {"conv.weight": torch.zeros(3)}, r"unrecognised checkpoint format \(keys 1: conv.weight\); recognised "
                                              r"formats: vit .*torchvision .*transformers .*jax"),
], ids=["missing", "unexpected", "shape", "pos-embed-shape", "int-dtype", "unknown-format"])
def test_key_sets_and_shapes(tmp_path, sd, match):
    sd = sd()
    with pytest.raises(vit.CheckpointError, match=match):
        vit.load_pretrained(tiny_nano(), sd)
    torch.save(sd, tmp_path / "w.pt")  # the same through a file
    with pytest.raises(vit.CheckpointError, match=match):
        vit.create_model(NANO, pretrained=str(tmp_path / "w.pt"), depth=1)


def test_many_missing_and_unexpected_keys_are_counted_and_cut_short():
    model = tiny()
    state = model.state_dict()
    for key in ("blocks.1.mlp.fc1.weight", "blocks.1.mlp.fc1.bias", "blocks.1.mlp.fc2.weight", "norm.bias"):
        del state[key]
    for i in range(7):
        state[f"extra.{i}"] = torch.zeros(1)
    with pytest.raises(vit.CheckpointError) as e:
        vit.load_pretrained(tiny(), state)
    msg = str(e.value)
    assert "missing keys (4: blocks.1.mlp.fc1.bias" in msg
    assert "unexpected keys (7: extra.0, extra.1, extra.2, extra.3, extra.4 ... and 2 more)" in msg


def test_other_float_dtypes_load():
    """A float16/bfloat16 file is a valid checkpoint: it loads, cast to the model's dtype."""
    sd = {k: v.to(torch.bfloat16) for k, v in tiny_nano().state_dict().items()}
    model = tiny_nano()
    vit.load_pretrained(model, sd)
    assert model.pos_embed.dtype == torch.float32
    torch.testing.assert_close(model.pos_embed, sd["pos_embed"].float())


def test_metadata_of_an_unreadable_or_configless_file(tmp_path):
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(vit.CheckpointError, match="not a readable safetensors"):
        vit.read_metadata(bad)
    torch.save(tiny().state_dict(), tmp_path / "bare.pth")
    with pytest.raises(vit.ConfigError, match="carries no model config"):
        vit.create_model(pretrained=tmp_path / "bare.pth")


def test_pos_embed_that_cannot_fit_is_a_checkpoint_error():
    state = tiny().state_dict()  # [CLS] row in the position table; the model below has none
    with pytest.raises(vit.CheckpointError, match=r"pos_embed \(1, 65, 192\) cannot be fitted"):
        vit.load_pretrained(tiny(reg_tokens=4, no_embed_class=True, img_size=16), state)


def test_full_disk_keeps_the_old_file(tiny_tmpfs):
    """A real filesystem that fills up (safetensors' own writer would raise SafetensorError here)."""
    model = vit.create_model("vit_nano_patch2_8", depth=2)  # 0.4 MB: fits the 2 MiB filesystem once
    path = vit.save_pretrained(model, tiny_tmpfs / "best.safetensors")
    before = path.read_bytes()
    with open(tiny_tmpfs / "filler", "wb") as f:  # leave less room than a second copy needs
        f.write(b"\0" * (os.statvfs(tiny_tmpfs).f_bavail * os.statvfs(tiny_tmpfs).f_frsize - len(before) // 2))
    with pytest.raises(vit.OutputError, match=r"cannot write .*best.safetensors .*No space left"):
        vit.save_pretrained(vit.create_model("vit_nano_patch2_8", depth=2), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["best.safetensors", "filler"]


# ---- written for other libraries: transformers' and timm's folders, and the hub


def test_transformers_folder_loads_in_transformers_with_our_logits(tmp_path):
    """format="transformers": the reader's renaming undone; transformers loads the folder offline, and so does
    this package, back to the same config, classes and preprocessing."""
    from transformers import ViTForImageClassification, ViTImageProcessor

    model = randomize_(tiny())
    model.class_names = list("abcde")
    folder = vit.save_pretrained(model, tmp_path / "hf", format="transformers")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    ref = ViTForImageClassification.from_pretrained(folder, local_files_only=True).eval()
    assert ref.config.id2label == dict(enumerate("abcde"))
    processor = ViTImageProcessor.from_pretrained(folder, local_files_only=True)
    assert list(processor.image_mean) == list(model.preprocess.mean)
    assert (processor.size["height"], processor.size["width"]) == (32, 32)
    back = vit.create_model(pretrained=folder).eval()
    assert back.config == model.config and back.class_names == list("abcde") and back.preprocess == model.preprocess
    x = images(model)
    with torch.no_grad():
        assert max_diff(ref(pixel_values=x).logits, model(x)) <= LOGIT_ATOL
        assert torch.equal(back(x), model(x))


@pytest.mark.parametrize("overrides, says", [
    (dict(global_pool="avg"), "global_pool='avg', fc_norm=None"), (dict(reg_tokens=4), "reg_tokens=4"),
    (dict(qk_norm=True), "qk_norm=True"), (dict(init_values=1e-5), "init_values=1e-05"),
    (dict(distilled=True), "distilled=True"), (dict(num_classes=0), "num_classes=0"),
    (dict(stem="conv"), "stem='conv'"),
])
def test_transformers_folder_refuses_what_transformers_cannot_express(tmp_path, overrides, says):
    with pytest.raises(vit.ConfigError, match=f"ViTForImageClassification cannot express {re.escape(says)}"):
        vit.save_pretrained(tiny(**overrides), tmp_path / "hf", format="transformers")
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"])
def test_timm_folder_loads_in_timm_with_our_logits_and_preprocessing(tmp_path, name):
    """format="timm": timm builds the model from the folder alone ("local-dir:"), or by name with the file as its
    pretrained weights; its data config is our preprocessing."""
    import timm
    from timm.data import resolve_data_config

    model = randomize_(vit.create_model(name, depth=2, img_size=32, num_classes=5))
    model.class_names = list("abcde")
    folder = vit.save_pretrained(model, tmp_path / "timm", format="timm")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    from_folder = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    by_name = timm.create_model(name, pretrained=True, depth=2, img_size=32, num_classes=5,
                                pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors"), num_classes=5)).eval()
    assert from_folder.pretrained_cfg["label_names"] == list("abcde")
    data = resolve_data_config({}, model=from_folder)
    p = model.preprocess
    assert (tuple(data["input_size"]), tuple(data["mean"]), tuple(data["std"]), data["interpolation"],
            data["crop_pct"]) == (p.input_size, p.mean, p.std, p.interpolation, p.crop_pct)
    back = vit.create_model(pretrained=folder).eval()
    assert back.config == model.config and back.class_names == list("abcde") and back.preprocess == p
    x = images(model)
    with torch.no_grad():
        assert max_diff(from_folder(x), model(x)) <= LOGIT_ATOL
        assert max_diff(by_name(x), model(x)) <= LOGIT_ATOL
        assert torch.equal(back(x), model(x))


def test_push_to_hub_uploads_timms_folder_and_a_model_card(hub):
    model = randomize_(tiny())
    url = vit.push_to_hub(model, "me/tiny", commit_message="first weights", description="A test model.")
    assert url == "https://hub.test/me/tiny/commit/1" and hub.commits == [("me/tiny", "first weights")]
    repo = hub.root / "me" / "tiny"
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    card = (repo / "README.md").read_text()
    assert "library_name: timm" in card and "A test model." in card and '"hf-hub:me/tiny"' in card
    x = images(model)
    with torch.no_grad():
        assert torch.equal(vit.create_model(pretrained=repo).eval()(x), model(x))


def test_push_to_hub_that_fails_names_the_repo(hub, monkeypatch):
    from huggingface_hub import HfApi

    def refuse(self, **kwargs):
        raise PermissionError("403 Forbidden: no write access")

    monkeypatch.setattr(HfApi, "upload_folder", refuse)
    with pytest.raises(vit.OutputError, match="cannot push to hf-hub:me/tiny: PermissionError: 403 Forbidden"):
        vit.push_to_hub(tiny(), "me/tiny")
    with pytest.raises(vit.ConfigError, match="format 'vit'"):
        vit.push_to_hub(tiny(), "me/tiny", format="vit")


# ---- hub: a real huggingface_hub cache, read offline


HUB_REPO = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # the registered hf_hub_id of vit_tiny_patch16_224
HUB_SCRIPT = f"""
import sys, torch, vit
assert vit.get_entry("vit_tiny_patch16_224").hf_hub_id == "{HUB_REPO}"
model = vit.create_model(pretrained="hf-hub:{HUB_REPO}")  # architecture from config.json
named = vit.create_model("vit_tiny_patch16_224", pretrained=True, depth=2, img_size=64, num_classes=3)
x = torch.load(sys.argv[1])
print(model.config.depth, model.preprocess.crop_pct, model.class_names[:2], named.num_classes)
torch.save(model.eval()(x), sys.argv[2])
"""


def test_hub_download_offline_from_cache(tmp_path):
    """Lay out a hub cache as huggingface_hub does (refs/main -> snapshots/<commit>/ -> blobs), then load it
    through the real library in fresh processes: with HF_HUB_OFFLINE=1, and with a hub that does not answer
    (the cache serves; an uncached repo fails at once with "cannot reach", not after ~25 s of retries)."""
    import json
    import subprocess
    import sys

    from safetensors.torch import save_file

    model = randomize_(vit.create_model("vit_tiny_patch16_224", depth=2, img_size=32, num_classes=5))
    repo = tmp_path / "hub" / ("models--" + HUB_REPO.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    for folder in (repo / "blobs", repo / "refs", snapshot):
        folder.mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, repo / "blobs" / "weights")
    config = {"architecture": HUB_REPO.split("/")[1], "num_classes": 5, "model_args": {"depth": 2, "img_size": 32},
              "label_names": list("abcde"),
              "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3,
                                 "interpolation": "bicubic", "crop_pct": 0.875}}
    (repo / "blobs" / "config").write_text(json.dumps(config))
    (snapshot / "model.safetensors").symlink_to("../../blobs/weights")
    (snapshot / "config.json").symlink_to("../../blobs/config")

    x = images(model)
    torch.save(x, tmp_path / "x.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path)}
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cached = subprocess.Popen([sys.executable, "-c", HUB_SCRIPT, str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                              env=env, **pipes)
    missing = subprocess.Popen([sys.executable, "-c", "import vit; vit.create_model(pretrained='hf-hub:timm/nothing')"],
                               env={**env, "HF_HUB_CACHE": str(tmp_path / "empty")}, **pipes)  # all at once
    online = {k: v for k, v in env.items() if k != "HF_HUB_OFFLINE"}  # a hub that refuses the connection at once
    unreachable = subprocess.Popen(
        [sys.executable, "-c", "import vit; vit.create_model(pretrained='hf-hub:timm/nothing')"],
        env={**online, "HF_HUB_CACHE": str(tmp_path / "empty"), "HF_ENDPOINT": "http://127.0.0.1:9"}, **pipes)
    cached_unreachable = subprocess.Popen(  # a hub that does not answer: the cache serves, without retries
        [sys.executable, "-c", HUB_SCRIPT, str(tmp_path / "x.pt"), str(tmp_path / "y2.pt")],
        env={**online, "HF_ENDPOINT": "http://127.0.0.1:9"}, **pipes)
    for process in (cached, cached_unreachable):
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-2000:]
        assert out.split() == ["2", "0.875", "['a',", "'b']", "3"]
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "y.pt"), model(x))
        assert torch.equal(torch.load(tmp_path / "y2.pt"), model(x))
    _, err = missing.communicate(timeout=120)
    assert "CheckpointError" in err and "HF_HUB_OFFLINE" in err
    _, err = unreachable.communicate(timeout=120)
    assert "CheckpointError" in err and "cannot reach the Hugging Face hub for hf-hub:timm/nothing" in err, err[-2000:]


@pytest.mark.slow
def test_full_size_torchvision_vit_b_16():
    """The registered ViT-B/16 against torchvision's vit_b_16 (random weights, 12 blocks, 224px)."""
    from torchvision.models import vit_b_16

    ref = randomize_(vit_b_16(num_classes=10))
    model = vit.create_model("vit_base_patch16_224", num_classes=10).eval()
    vit.load_pretrained(model, ref.state_dict())
    x = images(model, batch=1)
    with torch.no_grad():
        logits = ref(x)
        # fp32 sums over 12 blocks of width 768 round differently: measured 3.2e-5 on logits of size ~4,
        # so the bound here is relative: 4e-5 times the largest logit.
        assert max_diff(model(x), logits) <= 4e-5 * logits.abs().max().item()


@pytest.mark.parametrize("field, value", [
    ("std", [0.0]), ("std", [-1.0]), ("mean", [float("nan")]), ("std", "0.5"), ("input_size", [1, 0, 8]),
    ("input_size", [1, True, 8]), ("crop_pct", "0.9"), ("interpolation", 3),
])
def test_preprocessing_from_a_file_is_checked(field, value):
    """Values from a weights file's metadata or a preprocessor_config.json: a std of 0 would give NaN logits."""
    good = {"input_size": [1, 8, 8], "mean": [0.5], "std": [0.5], "interpolation": "bicubic", "crop_pct": 0.9}
    with pytest.raises(vit.ConfigError, match=field if field != "std" else "std|mean"):
        vit.Preprocess.from_dict({**good, field: value})
    with pytest.raises(vit.ConfigError, match="JSON object"):
        vit.Preprocess.from_dict([1, 2])


def set_declared_sizes(path, size: int, stored: bool) -> None:
    """Rewrite the (uncompressed, and for a stored member also compressed) sizes a one-member zip declares, in
    its local header and its central directory, as a crafted archive would."""
    import struct

    data = bytearray(path.read_bytes())
    local, central = data.index(b"PK\x03\x04"), data.index(b"PK\x01\x02")
    for sizes_at in (local + 18, central + 20):  # (compressed, uncompressed), 4 bytes each
        if stored:
            struct.pack_into("<I", data, sizes_at, size)
        struct.pack_into("<I", data, sizes_at + 4, size)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case, match", [
    ("npy renamed", "not an .npz archive"),
    ("lying header", r"claims shape \(1000000000000,\)"),
    ("structured dtype", "not numbers"),
    ("deflate bomb", r"would inflate [\d,]+ bytes to 2,147,483,776 \(\d+-fold\): a compression bomb"),
    ("stored size lie", r"claims 4,294,967,168 bytes that the file does not hold"),
])
def test_hostile_npz_is_refused_before_allocating(tmp_path, case, match):
    import io
    import zipfile

    import numpy as np

    path = tmp_path / "w.npz"
    if case in ("deflate bomb", "stored size lie"):  # a header and directory that claim 2 or 4 GB; a 1 MB file
        buf = io.BytesIO()
        n = 2**29 if case == "deflate bomb" else 2**30 - 64
        np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (n,)})
        method = zipfile.ZIP_DEFLATED if case == "deflate bomb" else zipfile.ZIP_STORED
        with zipfile.ZipFile(path, "w", compression=method) as z:
            z.writestr("embedding/kernel.npy", buf.getvalue() + bytes(2**20))
        set_declared_sizes(path, 4 * n + len(buf.getvalue()), stored=case == "stored size lie")
    elif case == "npy renamed":
        with open(path, "wb") as f:
            np.save(f, np.zeros(4, dtype=np.float32))
    elif case == "lying header":  # 16 bytes of data under a header that claims 4 TB
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("embedding/kernel.npy", buf.getvalue() + bytes(16))
    else:
        np.savez(path, **{"embedding/kernel": np.zeros(3, dtype=[("x", "<f4"), ("y", "<i4")])})
    with pytest.raises(vit.CheckpointError, match=match):
        vit.create_model("vit_tiny_patch16_224", pretrained=str(path))
