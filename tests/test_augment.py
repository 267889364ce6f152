"""vit.augment: each batched op against torchvision's (or timm's) single-image op, image by image."""

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.auto_augment import solarize_add as timm_solarize_add
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from vit import augment
from vit.errors import ConfigError

B = 6


@pytest.fixture(params=[3, 1], ids=["rgb", "grey"])
def images(request):
    g = torch.Generator().manual_seed(request.param)
    x = torch.randint(0, 256, (B, request.param, 20, 24), generator=g, dtype=torch.uint8)
    x[0] = x[0] // 4 + 100  # a low-contrast image for autocontrast / equalize
    x[1] = 7  # a flat one
    return x


def assert_close_uint8(ours: torch.Tensor, ref: torch.Tensor):
    """Equal, but for float rounding: at most one level off, on at most 0.5% of the values."""
    diff = (ours.int() - ref.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() <= 0.005, (diff.max(), (diff > 0).float().mean())


FACTORS = torch.tensor([0.1, 0.5, 0.95, 1.0, 1.37, 1.9], dtype=torch.float64)


@pytest.mark.parametrize("ours, theirs", [
    (augment.brightness, TF.adjust_brightness), (augment.color, TF.adjust_saturation),
    (augment.contrast, TF.adjust_contrast), (augment.sharpness, TF.adjust_sharpness),
], ids=["brightness", "color", "contrast", "sharpness"])
def test_enhance_ops_match_torchvision(images, ours, theirs):
    out = ours(images, FACTORS)
    for i in range(B):
        assert_close_uint8(out[i], theirs(images[i], float(FACTORS[i])))


def test_posterize_solarize_invert_autocontrast_equalize_match_torchvision(images):
    bits = torch.tensor([0, 1, 2, 3, 4, 8], dtype=torch.float64)
    thresholds = torch.tensor([0, 1, 100, 128, 255, 256], dtype=torch.float64)
    post, sol = augment.posterize(images, bits), augment.solarize(images, thresholds)
    auto, eq, inv = augment.autocontrast(images), augment.equalize(images), augment.invert(images)
    for i in range(B):
        assert torch.equal(post[i], TF.posterize(images[i], int(bits[i])))
        ref = images[i] if thresholds[i] > 255 else TF.solarize(images[i], float(thresholds[i]))
        assert torch.equal(sol[i], ref)
        assert torch.equal(auto[i], TF.autocontrast(images[i]))
        assert torch.equal(eq[i], TF.equalize(images[i]))
        assert torch.equal(inv[i], TF.invert(images[i]))


def test_solarize_add_matches_timm(images):
    adds = torch.tensor([0, 10, 55, 80, 110, 128], dtype=torch.float64)
    out = augment.solarize_add(images, adds)
    for i in range(B):
        pil = Image.fromarray(images[i].permute(1, 2, 0).squeeze(-1).numpy())
        ref = torch.from_numpy(np.array(timm_solarize_add(pil, int(adds[i])))).reshape(images[i].shape[1:] + (-1,))
        assert torch.equal(out[i], ref.permute(2, 0, 1))


@pytest.mark.parametrize("param", ["angle", "shear_x", "shear_y", "tx", "ty"])
def test_affine_ops_match_torchvision(images, param):
    values = {"angle": [-30.0, -7.5, 0.0, 12.0, 29.0, 90.0], "shear_x": [-16.7, -3.0, 0.0, 5.0, 10.0, 16.7],
              "shear_y": [-16.7, -3.0, 0.0, 5.0, 10.0, 16.7], "tx": [-10.0, -3.4, 0.0, 1.0, 5.5, 10.8],
              "ty": [-9.0, -2.0, 0.0, 0.5, 4.0, 9.0]}[param]
    v = torch.tensor(values, dtype=torch.float64)
    out = augment.affine(images, **{param: v})
    for i in range(B):
        angle = float(v[i]) if param == "angle" else 0.0
        shear = [float(v[i]) if param == "shear_x" else 0.0, float(v[i]) if param == "shear_y" else 0.0]
        translate = [float(v[i]) if param == "tx" else 0.0, float(v[i]) if param == "ty" else 0.0]
        ref = TF.affine(images[i], angle=angle, translate=translate, scale=1.0, shear=shear,
                        interpolation=InterpolationMode.NEAREST, fill=[float(augment.FILL)] * images.shape[1])
        assert torch.equal(out[i], ref)


def test_parse_reads_timm_policy_strings():
    spec = augment.RandAugment.parse("rand-m9-mstd0.5-inc1")
    assert (spec.magnitude, spec.num_ops, spec.magnitude_std, spec.prob, spec.increasing) == (9, 2, 0.5, 0.5, True)
    assert augment.RandAugment.parse("rand-m7-n3-mstd101-p0.8").magnitude_std == float("inf")
    assert "SharpnessIncreasing" in spec.ops and "Sharpness" in augment.RandAugment.parse("rand-m9").ops
    for bad in ("augmix-m5", "rand-q3", "rand-m9-n99", "rand-mx"):
        with pytest.raises(ConfigError, match="--randaug"):
            augment.RandAugment.parse(bad)


def test_each_image_draws_its_own_ops_deterministically_from_the_generator():
    spec = augment.RandAugment.parse("rand-m9-n2-mstd0.5-inc1")
    x = torch.randint(0, 256, (64, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    a = spec(x, torch.Generator().manual_seed(5))
    b = spec(x, torch.Generator().manual_seed(5))
    c = spec(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    ops = torch.stack([op for op, _, _ in spec.draw(64, torch.Generator().manual_seed(5))])
    assert len(ops.unique()) > 8  # many different ops in one batch
    changed = (a != x).flatten(1).any(1).float().mean()
    assert 0.5 < changed < 1.0  # p=0.5 per layer, 2 layers: ~75% of images touched
    # A rank's slice of the global draw augments its rows exactly as the global batch does.
    layers = spec.draw(64, torch.Generator().manual_seed(5))
    assert torch.equal(spec.apply(x[16:32], augment.slice_draws(layers, 16, 32)), a[16:32])


def test_magnitude_is_clipped_and_noisy():
    spec = augment.RandAugment(magnitude=9, magnitude_std=3.0, prob=1.0)
    (_, m, sign), = spec.draw(4000, torch.Generator().manual_seed(0))[:1]
    assert m.min() >= 0 and m.max() <= 10 and 8.0 < m.mean() < 9.0 and m.std() > 1.5
    assert 0.45 < (sign > 0).double().mean() < 0.55
