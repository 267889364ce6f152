"""vit.deit: DeiT's distilled ViT beside the ViT. The registry's deit_* names and distilled=True build it; its
logits (the heads' mean, or both apart in distilled training), features and heads equal timm's
`VisionTransformerDistilled` for the same weights; its config survives files ("distilled": true builds it
again, "distilled": false the plain ViT); the ViT's own model file knows nothing of it."""

import json
import re
from pathlib import Path

import pytest
import timm
import torch
from timm.models.deit import VisionTransformerDistilled as TimmDistilled

import vit
from vit.deit import DeiTConfig, VisionTransformerDistilled, config_from_dict
from vit.deit import build_from_config

torch.backends.mkldnn.deterministic = True

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-5  # max abs logit difference against timm, fp32


def make_input(model, batch=2, seed=0):
    H, W = vit.model.to_2tuple(model.config.img_size)
    return torch.randn(batch, model.config.in_chans, H, W, generator=torch.Generator().manual_seed(seed))


def randomize_(module, seed=0):
    """Random values everywhere: timm zero-initialises the heads' biases, which would hide a swapped head."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (p.ndim == 1))
    return module


# ---- which class a name, an override or a config dict builds


@pytest.mark.parametrize("name", vit.list_models("deit_*"))
def test_registry_deit_names_build_the_distilled_model(name):
    model = vit.create_model(name, depth=1)
    assert type(model) is VisionTransformerDistilled and type(model.config) is DeiTConfig
    assert model.config.distilled and model.num_prefix_tokens == 2 and not model.distilled_training
    assert model.get_classifier() == (model.head, model.head_dist)
    assert model.config.num_params() == sum(p.numel() for p in model.parameters())


def test_distilled_override_chooses_the_class():
    plain = vit.create_model("vit_nano_patch2_8", depth=1)
    assert type(plain) is vit.VisionTransformer and not hasattr(plain, "dist_token")
    assert type(vit.create_model("vit_nano_patch2_8", depth=1, distilled=True)) is VisionTransformerDistilled
    undone = vit.create_model("deit_tiny_distilled_patch16_224", depth=1, distilled=False)
    assert type(undone) is vit.VisionTransformer and type(undone.config) is vit.ViTConfig
    assert "distilled" not in undone.config.to_dict() and undone.num_prefix_tokens == 1


def test_config_dicts_build_their_class():
    deit = vit.get_entry("deit_tiny_distilled_patch16_224").config
    assert deit.to_dict()["distilled"] is True and config_from_dict(deit.to_dict()) == deit
    plain = vit.get_entry("vit_nano_patch2_8").config
    assert config_from_dict(plain.to_dict()) == plain == config_from_dict({**plain.to_dict(), "distilled": False})
    assert type(build_from_config(deit.replace(depth=1))) is VisionTransformerDistilled
    assert type(build_from_config(plain)) is vit.VisionTransformer
    with pytest.raises(vit.ConfigError, match=r"distilled must be True or False, got 'yes'"):
        config_from_dict({**plain.to_dict(), "distilled": "yes"})
    with pytest.raises(vit.ConfigError, match=r"unknown config option\(s\) \['bogus'\]; valid options: .*'distilled'"):
        config_from_dict({**plain.to_dict(), "bogus": 1})
    with pytest.raises(vit.ConfigError, match=r"DeiTConfig has distilled=True, got False"):
        deit.replace(distilled=False)
    with pytest.raises(vit.ConfigError, match=r"VisionTransformer is built from a ViTConfig, got a DeiTConfig"):
        vit.VisionTransformer(deit)


# ---- the same function as timm's VisionTransformerDistilled


def test_distilled_heads_match_timm_in_training_and_eval():
    """timm's VisionTransformerDistilled: (cls, dist) logits while distilled_training, their mean otherwise."""
    ours = vit.create_model("vit_tiny_patch4_32", depth=2, distilled=True)
    ref = TimmDistilled(img_size=32, patch_size=4, embed_dim=192, depth=2, num_heads=3, num_classes=10)
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = make_input(ours)
    with torch.no_grad():
        ours.eval(), ref.eval()
        assert (ours(x) - ref(x)).abs().max() <= 1e-5  # the mean of the two heads
        torch.testing.assert_close(ours.forward_head(ours.forward_features(x), pre_logits=True),
                                   ref.forward_head(ref.forward_features(x), pre_logits=True), rtol=0, atol=1e-5)
        assert ours.forward_features(x).shape[1] == 2 + 64 and ours.num_prefix_tokens == 2
        ours.train(), ref.train()
        ours.set_distilled_training(), ref.set_distilled_training()
        (cls, dist), (ref_cls, ref_dist) = ours(x), ref(x)
        assert (cls - ref_cls).abs().max() <= 1e-5 and (dist - ref_dist).abs().max() <= 1e-5
        ours.set_distilled_training(False)  # the flag off: the mean while training too
        torch.testing.assert_close(ours(x), (ref_cls + ref_dist) / 2, rtol=0, atol=1e-5)
    assert ours.get_classifier() == (ours.head, ours.head_dist)
    ours.reset_classifier(3)
    assert ours.head_dist.out_features == 3 and ours(x).shape == (2, 3)


def test_registered_deit_matches_timm_both_ways_with_features_and_heads():
    """deit_tiny_distilled_patch16_224 at depth 2 on a 4x4 grid, random weights timm -> ours and ours -> timm:
    logits, both heads in distilled training, and the feature API with the two prefix tokens."""
    name, overrides = "deit_tiny_distilled_patch16_224", dict(depth=2, img_size=64)
    ref = randomize_(timm.create_model(name, pretrained=False, **overrides)).eval()
    ours = vit.create_model(name, **overrides).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = make_input(ours)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() <= ATOL
        kw = dict(indices=[0, -1], return_prefix_tokens=True, norm=True)
        for (a, a_prefix), (b, b_prefix) in zip(ours.forward_intermediates(x, **kw)[1],
                                                ref.forward_intermediates(x, **kw)[1]):
            assert a.shape == (2, 192, 4, 4) and a_prefix.shape == (2, 2, 192)  # [CLS], distillation token
            assert (a - b).abs().max() <= ATOL and (a_prefix - b_prefix).abs().max() <= ATOL
        ours.train().set_distilled_training(), ref.train().set_distilled_training()
        for a, b in zip(ours(x), ref(x)):
            assert (a - b).abs().max() <= ATOL
    fresh = randomize_(vit.create_model(name, **overrides), seed=1).eval()
    ref.load_state_dict(fresh.state_dict(), strict=True)
    with torch.no_grad():
        assert (fresh(x) - ref.eval()(x)).abs().max() <= ATOL
    fresh.reset_classifier(0)
    assert fresh(x).shape == (2, 192) and fresh.get_classifier() == (fresh.head, fresh.head_dist)


# ---- state dicts and saved configs


def test_state_dict_and_saved_config_round_trip(tmp_path):
    model = randomize_(vit.create_model("vit_tiny_patch4_32", depth=2, num_classes=5, distilled=True)).eval()
    x = make_input(model)
    twin = vit.create_model("vit_tiny_patch4_32", depth=2, num_classes=5, distilled=True).eval()
    twin.load_state_dict(model.state_dict(), strict=True)
    path = vit.save_pretrained(model, tmp_path / "w.safetensors")
    torch.save({"model": model.state_dict(), "model_config": model.config.to_dict()}, tmp_path / "w.pt")
    for source in (path, tmp_path / "w.pt"):
        loaded = vit.create_model(pretrained=source).eval()
        assert type(loaded) is VisionTransformerDistilled and loaded.config == model.config
        assert loaded.state_dict().keys() == model.state_dict().keys()
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
            torch.testing.assert_close(twin(x), model(x), rtol=0, atol=0)


def test_a_saved_plain_config_that_says_distilled_false_loads_the_plain_vit(tmp_path):
    from safetensors.torch import save_file

    model = vit.create_model("vit_nano_patch2_8", depth=1)
    config = {**model.config.to_dict(), "distilled": False}
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"),
              metadata={"format": "vit", "format_version": "1", "config": json.dumps(config)})
    loaded = vit.create_model(pretrained=tmp_path / "w.safetensors")
    assert type(loaded) is vit.VisionTransformer and loaded.config == model.config


def test_the_vit_model_file_knows_nothing_of_distillation():
    text = (ROOT / "vit" / "model.py").read_text()
    assert not re.search("distill", text, re.IGNORECASE)
    assert not re.search(r"^\s*(from|import)\s+\S*deit", text, re.MULTILINE)
