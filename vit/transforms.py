"""timm's per-image transforms for images read from disk (the DataLoader path): `file_transforms` builds them
from a model's preprocessing, with Posterize taking 0 bits as torchvision and vit.augment do, and evaluation's
resize bounded for images of extreme aspect ratio."""

from __future__ import annotations


MAX_ASPECT = 16  # evaluation: an image's long side at most this many times its short side before the resize


def file_transforms(preprocess, train: bool, *, hflip: float = 0.5, randaug: str = "", reprob: float = 0.0):
    """timm's `create_transform`: random-resized crop + RandAugment + erasing for training, resize + centre
    crop for evaluation (after `CentralAspect`), both normalising with the model's mean/std."""
    from timm.data import create_transform

    transform = posterize_any_bits(create_transform(
        input_size=tuple(preprocess.input_size), is_training=train, hflip=hflip, auto_augment=randaug or None,
        re_prob=reprob, interpolation=preprocess.interpolation, mean=preprocess.mean, std=preprocess.std,
        crop_pct=preprocess.crop_pct,
    ))
    if not train:
        transform.transforms.insert(0, CentralAspect(MAX_ASPECT))
    return transform


class CentralAspect:
    """The centre of a PIL image whose long side is more than `most` times its short side, cut to that ratio.

    Evaluation resizes the short side to about the model's size, then keeps the centre: a 2x50000 PNG of 177
    bytes would become 256x6,400,000 pixels (4.6 GB) before the crop. What is cut lies outside the centre crop,
    so an image within the ratio is untouched, and one past it keeps the pixels the crop keeps. (Training's
    random-resized crop picks a region of bounded aspect before it resizes.)"""

    def __init__(self, most: float):
        self.most = most

    def __call__(self, im):
        w, h = im.size
        keep = max(1, int(self.most * min(w, h)))
        if max(w, h) <= keep:
            return im
        if w > h:
            left = (w - keep) // 2
            return im.crop((left, 0, left + keep, h))
        top = (h - keep) // 2
        return im.crop((0, top, w, top + keep))


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
