"""vit.plots: the attention-rollout picture's colours read against its colour bar."""

import numpy as np
from PIL import Image

from vit import plots


def colour_share(pixels: np.ndarray, rgb: np.ndarray, tol: float = 0.02) -> float:
    """The fraction of the picture's pixels of colour `rgb` (each channel within `tol`)."""
    return float((np.abs(pixels - rgb).max(axis=-1) <= tol).mean())


def test_rollout_colours_over_a_black_image_are_the_colour_bars(tmp_path):
    """A heat map of two values (left patch 0.2, right 0.8) over a black image: the heat map's pixels have the
    colour bar's colours for 0.2 and 0.8, not those darkened by the image under them. Each colour covers a
    fair share of the figure, far more than its sliver of the colour bar."""
    import matplotlib

    path = plots.plot_attention_overlay(np.zeros((8, 8)), np.array([[0.2, 0.8]]), "black", tmp_path / "a.png")
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.float64) / 255
    cmap = matplotlib.colormaps[plots.ROLLOUT_CMAP]
    for value in (0.2, 0.8):
        assert colour_share(pixels, np.array(cmap(value)[:3])) > 0.05, value
    assert colour_share(pixels, np.zeros(3)) > 0.05  # the image, beside the heat map
