"""Figures from training and evaluation outputs (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

from .errors import OutputError
from .runs import atomic_write, read_metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed; safe in workers and on servers
    import matplotlib.pyplot as plt

    return plt


def plot_curves(metrics: str | Path | list[dict], path: str | Path) -> Path:
    """Loss (train and val), val top-1 and learning rate against epoch, from train.py's metrics.jsonl rows."""
    rows = read_metrics(metrics) if isinstance(metrics, (str, Path)) else metrics
    plt = _pyplot()
    ep = [r["epoch"] for r in rows]
    evaluated = [r for r in rows if "val_top1" in r]  # with --eval-every N, every N-th epoch and the last
    val_ep = [r["epoch"] for r in evaluated]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(13, 3.6))
    ax_loss.plot(ep, [r["train_loss"] for r in rows], label="train")
    ax_loss.plot(val_ep, [r["val_loss"] for r in evaluated], label="val", marker="." if len(val_ep) < len(ep) else None)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_loss.legend()
    ax_acc.plot(val_ep, [r["val_top1"] for r in evaluated], label="model", marker=".")
    if evaluated and "ema_val_top1" in evaluated[0]:
        ax_acc.plot(val_ep, [r["ema_val_top1"] for r in evaluated], label="EMA", marker=".")
        ax_acc.legend()
    ax_acc.set(xlabel="epoch", ylabel="top-1 (%)", title="validation accuracy")
    ax_lr.plot(ep, [r["lr"] for r in rows])
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="learning rate (the epoch's last step)")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))  # redrawn during training
    finally:
        plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------------
# Evaluation pictures (evaluate.py): confusion matrix, reliability diagram, attention-rollout overlays


def _save(fig, path) -> Path:
    """Write the figure atomically (a full disk or an unwritable folder: OutputError naming the file)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: fig.savefig(f, format=path.suffix[1:] or "png", dpi=120, bbox_inches="tight"))
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
    finally:
        _pyplot().close(fig)
    return path


def plot_confusion_matrix(confusion, class_names, path, title="Confusion matrix") -> Path:
    """Row-normalised confusion matrix (each row: where the images of one true class went).

    Cells are annotated with percentages up to 20 classes; class names label the axes up to 100 classes
    (CIFAR-100), beyond that (ImageNet) the axes show class indices.
    """
    import numpy as np

    plt = _pyplot()
    cm = np.asarray(confusion, dtype=np.float64)
    K = len(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = min(max(5.0, 0.45 * K + 2.5), 20.0)  # inches; the name font shrinks below instead past 40 classes
    big = side >= 10  # titles and axis labels grow with the figure so they stay legible when it is shrunk
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")  # crisp cells at any K
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("fraction of the true class", fontsize=14 if big else 10)
    bar.ax.tick_params(labelsize=12 if big else 10)
    named = K <= 100
    if named:
        size = 10 if K <= 40 else 8 if K <= 60 else 6
        ax.set_xticks(range(K), labels=class_names, rotation=45 if K <= 40 else 90, ha="right",
                      rotation_mode="anchor", fontsize=size)
        ax.set_yticks(range(K), labels=class_names, fontsize=size)
    else:
        ax.tick_params(labelsize=12)
    if K <= 20:
        for i in range(K):
            for j in range(K):
                if cm[i, j]:
                    ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class" + ("" if named else " (index)"), fontsize=16 if big else 10)
    ax.set_ylabel("true class" + ("" if named else " (index)"), fontsize=16 if big else 10)
    accuracy = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"{title} (row %, accuracy {100 * accuracy:.1f}%)", fontsize=20 if big else 12)
    return _save(fig, path)


def plot_reliability(reliability: dict, ece: float, path, title="Reliability diagram") -> Path:
    """Accuracy against confidence per bin, with the diagonal of perfect calibration and the gap shaded.

    reliability: `ClassificationMetrics.reliability()` (bin_edges, count, confidence, accuracy).
    """
    import numpy as np

    plt = _pyplot()
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
    return _save(fig, path)


ROLLOUT_CMAP = "jet"  # the heat map's colours, as its colour bar shows them


def plot_attention_overlay(image, heatmap, title: str, path, correct: bool | None = None) -> Path:
    """Image beside its attention heat map, on the same grid of pixels.

    The heat map is drawn opaque, so each colour is the colour bar's for its value whatever the image is (a
    heat map blended with the image takes the image's brightness: over dark pixels its colours match no value
    on the bar). The image is drawn beside it rather than under it; the two panels share their axes.
    image: (H, W, C) or (H, W) floats in [0, 1]; heatmap: (h, w) in [0, 1] on the patch grid, stretched over
    the image. correct colours the title green (right) or red (wrong).
    """
    import numpy as np

    plt = _pyplot()
    image = np.asarray(image, dtype=np.float64).clip(0, 1)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    gray = image.ndim == 2
    H, W = image.shape[:2]
    # Small images (8x8 digits, 32x32 CIFAR) are shown as crisp pixels; large ones smoothly.
    pixel = "nearest" if max(H, W) <= 64 else "antialiased"
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.6), sharex=True, sharey=True)
    axes[0].imshow(image, cmap="gray" if gray else None, interpolation=pixel, extent=(0, W, H, 0))
    for ax in axes:
        ax.set_axis_off()
    heatmap = np.asarray(heatmap)
    # A coarse patch grid is shown as its patches (honest about the resolution); a fine one smoothly.
    smooth = "bilinear" if max(heatmap.shape) > 8 else "nearest"
    im = axes[1].imshow(heatmap, cmap=ROLLOUT_CMAP, interpolation=smooth, extent=(0, W, H, 0), vmin=0, vmax=1)
    axes[0].set_title("input", fontsize=10)
    axes[1].set_title("attention rollout", fontsize=10)
    fig.colorbar(im, ax=list(axes), fraction=0.03, pad=0.03, label="attention (scaled to [0, 1])")
    colour = None if correct is None else ("darkgreen" if correct else "firebrick")
    fig.suptitle(title, fontsize=11, color=colour)
    return _save(fig, path)
