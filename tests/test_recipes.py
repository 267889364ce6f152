"""vit.recipes: every recipe builds a valid TrainConfig and documents its command, hardware and measurement;
every hyperparameter is a train.py flag."""

import re

import pytest

import vit
from vit import train
from vit.data import digits_split
from vit.errors import ConfigError
from vit.recipes import RECIPES, TrainConfig


def test_recipes_are_valid_and_documented():
    assert {"digits", "fashion-mnist", "cifar10", "imagenet-subset-finetune"} <= set(RECIPES)
    for r in RECIPES.values():
        cfg = r.config(data_dir="x")
        vit.get_entry(cfg.model)
        assert "Command" in r.doc and "Hardware" in r.doc and "Measured" in r.doc
    flags = train.build_parser().format_help()
    for name in TrainConfig.__dataclass_fields__:  # every hyperparameter is a flag
        assert "--" + name.replace("_", "-") in flags


def test_digits_recipe_states_the_split_it_trains_on():
    train_split, val_split = digits_split("train"), digits_split("val")
    assert f"{len(train_split):,} train / {len(val_split)} held-out" in RECIPES["digits"].doc


@pytest.mark.parametrize("fields, says", [
    (dict(res_start=-2), "--res-start must be >= 0, got -2"),
    (dict(res_end_frac=0.0), "--res-end-frac must be in (0, 1], got 0.0"),
    (dict(res_end_frac=1.5), "--res-end-frac must be in (0, 1], got 1.5"),
    (dict(res_start=4, compile=True), "--res-start with --compile: the image size changes along the run"),
])
def test_progressive_resolution_flags_a_run_cannot_use_are_refused(fields, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        TrainConfig(**fields)
    TrainConfig(**{**fields, "res_start": 0, "res_end_frac": 1.0})  # without --res-start, and at the range's end


def test_stem_values_and_a_conv_stem_that_timms_hub_layout_cannot_hold():
    assert TrainConfig(stem="conv").stem == "conv" and TrainConfig().stem == ""  # '' keeps the model's own
    with pytest.raises(vit.ConfigError, match="--stem 'convs' is not one of , patch, conv"):
        TrainConfig(stem="convs")
    with pytest.raises(vit.ConfigError, match="--push-to-hub uploads timm's layout, and timm's VisionTransformer has "
                                              "no conv stem: give one of --push-to-hub and --stem conv"):
        TrainConfig(stem="conv", push_to_hub="me/model")
