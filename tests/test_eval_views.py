"""Test-time views against torchvision's pad, crop and flip."""

import pytest
import torch

from vit.errors import ConfigError
from vit.eval_views import black, predict_logits


def test_predict_logits_averages_mirrored_and_moved_views_as_torchvision_builds_them():
    """Test-time views: a uint8 image zero-padded by one pixel and cropped one pixel off centre each way
    (torchvision's pad and crop, as the training crops are made), normalised, each also mirrored (torchvision's
    horizontal_flip): the mean of the six logits. `translate` on the normalised image fills the border with
    `black`."""
    from torchvision.transforms.v2 import functional as TF

    from vit import create_model

    torch.manual_seed(0)
    model = create_model("vit_nano_patch4_32").eval()
    pre = model.preprocess
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    normalise = lambda u: TF.normalize(u.float() / 255, pre.mean, pre.std)  # noqa: E731
    padded = TF.pad(images, [1, 1, 1, 1], fill=0)
    moved = [TF.crop(padded, top, top, 32, 32) for top in (1, 0, 2)]  # centred, down-right, up-left
    views = [normalise(v) for v in moved]
    views += [TF.horizontal_flip(v) for v in views]
    x = normalise(images)
    with torch.no_grad():
        expected = torch.stack([model(v) for v in views]).mean(0)
        both = predict_logits(model, x, hflip=True, shift=1, fill=black(pre))
        moved_only = predict_logits(model, x, shift=1, fill=black(pre))
        mirrored_only = predict_logits(model, x, hflip=True)
        plain = predict_logits(model, x)
    torch.testing.assert_close(both, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(moved_only, torch.stack([model(v) for v in views[:3]]).mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mirrored_only, (model(x) + model(views[3])) / 2, rtol=1e-5, atol=1e-5)
    assert torch.equal(plain, model(x)) and not torch.allclose(both, plain, atol=1e-3)
    with pytest.raises(ConfigError, match="--eval-shift 32 moves a 32x32 image out of view"):
        predict_logits(model, x, shift=32)
