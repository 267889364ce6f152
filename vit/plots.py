"""Pictures: training curves (train.py) and evaluation figures (evaluate.py). matplotlib, Agg backend."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display; before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


# --------------------------------------------------------------------------------------------------------
# Evaluation pictures (evaluate.py): confusion matrix, reliability diagram, attention-rollout overlays


def save_figure(fig, path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_confusion_matrix(confusion, class_names, path, title="Confusion matrix") -> None:
    """Row-normalised confusion matrix (each row: where the images of one true class went).

    Cells are annotated with percentages up to 20 classes; class names label the axes up to 60 classes.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    K = len(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = min(max(5.0, 0.45 * K + 2.5), 20.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if K <= 60:
        ax.set_xticks(range(K), labels=class_names, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(K), labels=class_names)
    if K <= 20:
        for i in range(K):
            for j in range(K):
                if cm[i, j]:
                    ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"{title} (row %, accuracy {100 * accuracy:.1f}%)")
    save_figure(fig, path)


def plot_reliability(reliability: dict, ece: float, path, title="Reliability diagram") -> None:
    """Accuracy against confidence per bin, with the diagonal of perfect calibration and the gap shaded.

    reliability: `ClassificationMetrics.reliability()` (bin_edges, count, confidence, accuracy).
    """
    edges = np.asarray(reliability["bin_edges"])
    count = np.asarray(reliability["count"], dtype=np.float64)
    acc = np.nan_to_num(np.asarray(reliability["accuracy"], dtype=np.float64))
    conf = np.asarray(reliability["confidence"], dtype=np.float64)
    centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    filled = count > 0

    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08})
    ax.bar(centres[filled], acc[filled], width=width, color="tab:blue", edgecolor="black", linewidth=0.6,
           label="accuracy")
    # The gap between each bin's accuracy and its mean confidence: what ECE sums, weighted by bin size.
    ax.bar(centres[filled], (conf - acc)[filled], bottom=acc[filled], width=width, color="tab:red", alpha=0.35,
           edgecolor="tab:red", hatch="//", label="gap to mean confidence")
    ax.plot(centres[filled], conf[filled], "o", color="tab:red", markersize=4, label="mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    ax.set_title(f"{title}: ECE = {ece:.4f} ({len(centres)} bins)")
    ax.legend(loc="upper left", fontsize=9)
    ax.grid(alpha=0.3)
    ax_n.bar(centres, count, width=width, color="gray", edgecolor="black", linewidth=0.6)
    ax_n.set(xlabel="confidence (top-1 probability)", ylabel="images")
    ax_n.set_yscale("log" if count.max() > 50 * max(count[filled].min(), 1) else "linear")
    ax_n.grid(alpha=0.3)
    save_figure(fig, path)


def plot_attention_overlay(image, heatmap, title: str, path, correct: bool | None = None) -> None:
    """Image beside the same image overlaid with an attention heat map.

    image: (H, W, C) or (H, W) floats in [0, 1]; heatmap: (h, w) in [0, 1] on the patch grid, stretched over
    the image (bilinear). correct colours the title green or red.
    """
    image = np.asarray(image, dtype=np.float64).clip(0, 1)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    gray = image.ndim == 2
    H, W = image.shape[:2]
    # Small images (8x8 digits, 32x32 CIFAR) are shown as crisp pixels; large ones smoothly.
    pixel = "nearest" if max(H, W) <= 64 else "antialiased"
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.6))
    for ax in axes:
        ax.imshow(image, cmap="gray" if gray else None, interpolation=pixel, extent=(0, W, H, 0))
        ax.set_axis_off()
    im = axes[1].imshow(np.asarray(heatmap), cmap="jet", alpha=0.5, interpolation="bilinear",
                        extent=(0, W, H, 0), vmin=0, vmax=1)
    axes[0].set_title("input", fontsize=10)
    axes[1].set_title("attention rollout", fontsize=10)
    fig.colorbar(im, ax=list(axes), fraction=0.03, pad=0.03, label="attention (scaled to [0, 1])")
    colour = None if correct is None else ("darkgreen" if correct else "firebrick")
    fig.suptitle(title, fontsize=11, color=colour)
    save_figure(fig, path)
