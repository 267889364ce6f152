"""timm's per-image transforms for images read from disk (the DataLoader path): `file_transforms` builds them
from a model's preprocessing, with Posterize taking 0 bits as torchvision and vit.augment do."""

from __future__ import annotations


def file_transforms(preprocess, train: bool, *, hflip: float = 0.5, randaug: str = "", reprob: float = 0.0):
    """timm's `create_transform`: random-resized crop + RandAugment + erasing for training, resize + centre
    crop for evaluation, both normalising with the model's mean/std."""
    from timm.data import create_transform

    return posterize_any_bits(create_transform(
        input_size=tuple(preprocess.input_size), is_training=train, hflip=hflip, auto_augment=randaug or None,
        re_prob=reprob, interpolation=preprocess.interpolation, mean=preprocess.mean, std=preprocess.std,
        crop_pct=preprocess.crop_pct,
    ))


def posterize_any_bits(transform):
    """`transform` (timm's), its auto-augment Posterize ops taking 0 bits too: a black image, as vit.augment
    and torchvision give. timm's magnitude noise (mstd > 0) reaches magnitude 10 now and then, which is 0 bits
    for PosterizeIncreasing, and Pillow 13 refuses 0 bits with a ValueError: with rand-m9-mstd0.5-inc1 about one
    image in 650 would stop the DataLoader."""
    from timm.data import auto_augment

    def ops(t):
        for op in getattr(t, "ops", ()):  # RandAugment, AugMix
            yield op
        for sub_policy in getattr(t, "policy", ()):  # AutoAugment
            yield from sub_policy

    for t in getattr(transform, "transforms", ()):
        for op in ops(t):
            if getattr(op, "aug_fn", None) is auto_augment.posterize:
                op.aug_fn = _posterize
    return transform


def _posterize(img, bits_to_keep, **_):
    if bits_to_keep <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    from timm.data.auto_augment import posterize

    return posterize(img, bits_to_keep)
