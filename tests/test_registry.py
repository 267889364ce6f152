"""vit.registry: model names, `create_model` with overrides, and the README's model table.

The per-model tests generated from the registry (forward, backward, timm parity) are in test_model.py.
"""

from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import vit
from vit.deit import build_from_config
from vit.flops import stem_flops
from vit.registry import model_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_list_models():
    assert "vit_base_patch16_224" in vit.list_models()
    cifar = vit.list_models("vit_*_patch4_32")
    assert {"vit_small_patch4_32", "vit_tiny_patch4_32"} <= set(cifar) and cifar == sorted(cifar)
    assert all(n.endswith("_patch4_32") for n in cifar)
    assert len(vit.list_models("vit_*_224")) >= 10


def test_overrides_change_the_registered_config():
    model = vit.create_model("vit_tiny_patch4_32", embed_dim=96, num_heads=2, depth=1, img_size=(32, 48))
    assert model.embed_dim == 96 and model.config.img_size == (32, 48)
    assert model.config.patch_size == vit.get_entry("vit_tiny_patch4_32").config.patch_size


@pytest.mark.parametrize("name, kwargs, match", [
    ("vit_nano_patch3_8", {}, r"unknown model 'vit_nano_patch3_8'; closest: vit_nano_patch2_8"),
    ("vit_base_patch16_244", {}, r"unknown model 'vit_base_patch16_244'; closest: vit_base_patch16_224"),
    ("vit_nano_patch2_8", {"embed_dimm": 64}, r"unknown config option\(s\) \['embed_dimm'\]; valid options: .*'embed_dim'"),
])
def test_unknown_name_or_option_names_the_valid_ones(name, kwargs, match):
    with pytest.raises(vit.ConfigError, match=match) as e:
        vit.create_model(name, **kwargs)
    assert isinstance(e.value, ValueError)  # for callers that don't know vit


def test_unknown_option_names_the_closest_valid_ones_only():
    with pytest.raises(vit.ConfigError) as e:
        vit.create_model("vit_nano_patch2_8", embed_dimm=64, num_head=2)
    assert str(e.value) == ("unknown config option(s) ['embed_dimm', 'num_head']; valid options: the closest: "
                            "'embed_dim' (for 'embed_dimm'), 'num_heads' (for 'num_head')")


def test_an_unknown_keyword_is_named_before_weights_are_looked_for():
    """timm's keyword for the name is model_name; here the name is the first argument. The error names the
    keyword, not the unset name it left behind ("model None has no hub weights")."""
    with pytest.raises(vit.ConfigError, match=r"unknown config option\(s\) \['model_name'\]"):
        vit.create_model(model_name="vit_tiny_patch16_224", pretrained=True)
    with pytest.raises(vit.ConfigError, match=r"pretrained=True downloads a registered model's hub weights: give "
                                              r"its name, create_model\(NAME, pretrained=True\)"):
        vit.create_model(pretrained=True)


def test_count_flops_takes_a_config_or_a_model():
    model = vit.create_model("vit_nano_patch2_8")
    assert vit.count_flops(model) == vit.count_flops(model.config) > 0
    assert vit.count_flops(model, 16) == vit.count_flops(model.config, 16)
    with pytest.raises(TypeError, match="count_flops takes a ViTConfig or a VisionTransformer, got str"):
        vit.count_flops("vit_nano_patch2_8")


@pytest.mark.parametrize("stem", ["patch", "conv"])
@pytest.mark.parametrize("name", ["vit_slim_patch4_32", "vit_micro_patch4_32", "vit_slim_patch7_28",
                                  "vit_tiny_patch16_224"])
def test_count_flops_counts_what_torchs_flop_counter_counts(name, stem):
    """The stem's convolutions and the whole forward, at the model's size and a dynamic one, against torch's
    FlopCounterMode on the real forward pass: the model built without `vit.kernels` (reference ops), attention
    by SDPA's math backend, whose matrix products the counter sees."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    config = vit.get_entry(name).config.replace(stem=stem, depth=1, dynamic_img_size=True)
    model = build_from_config(config).eval()
    p = config.patch_size
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        for size in (vit.model.to_2tuple(config.img_size), (3 * p, 5 * p)):
            x = torch.randn(1, config.in_chans, *size)
            with FlopCounterMode(display=False) as counted_stem:
                model.patch_embed(x)
            with FlopCounterMode(display=False) as counted:
                model(x)
            assert stem_flops(config, *size) == counted_stem.get_total_flops() > 0
            assert vit.count_flops(config, size) == counted.get_total_flops()
    if stem == "conv":  # more than the patchify conv's
        assert stem_flops(config, 32, 32) > stem_flops(config.replace(stem="patch"), 32, 32)


def test_readme_model_table_is_current():
    """README.md's model table is generated: refresh it with `python tests/test_registry.py`."""
    block = README.read_text().split("<!-- model-table:start -->\n")[1].split("<!-- model-table:end -->")[0]
    assert block.strip() == model_table(), "README model table is stale: run `python tests/test_registry.py`"


def write_model_table():
    head, rest = README.read_text().split("<!-- model-table:start -->\n")
    tail = rest.split("<!-- model-table:end -->")[1]
    README.write_text(f"{head}<!-- model-table:start -->\n{model_table()}\n<!-- model-table:end -->{tail}")


if __name__ == "__main__":
    write_model_table()
