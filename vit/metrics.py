"""Classification metrics, accumulated batch by batch so evaluation never holds every logit in memory.

One `ClassificationMetrics` collects, per batch of logits (vit.eval_views.predict_logits gives them): top-k hits,
summed cross-entropy, the confusion matrix and the calibration bins. `compute()` turns them into plain numbers and
lists, ready for report.json.

Conventions (the same as scikit-learn's, which the tests check against):
- confusion_matrix[i][j] counts images of true class i predicted as class j (rows: truth).
- per-class precision = TP / (TP + FP), recall = TP / (TP + FN), 0.0 where the denominator is 0.
- per-class accuracy = the fraction of that class's images classified correctly, TP / support (torchmetrics'
  `MulticlassAccuracy(average=None)`): it equals recall, and is reported under the name people look for.
- ECE (Guo et al., 2017, "On Calibration of Modern Neural Networks"): top-1 confidences are put in 15
  equal-width bins over (0, 1]; ECE = sum over bins of |bin| / n * |accuracy(bin) - mean confidence(bin)|.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import InputError

ECE_BINS = 15


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """(B, K) logits, (B,) targets -> (B,) bool: is the target among the k highest logits."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == targets[:, None]).any(dim=1)


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) int64 counts; row = true class, column = predicted class."""
    idx = targets.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def calibration_bins(confidences: torch.Tensor, correct: torch.Tensor, num_bins: int = ECE_BINS) -> torch.Tensor:
    """(num_bins, 3) float64: per bin, (count, summed confidence, summed correctness).

    Bin b holds confidences in (b / num_bins, (b + 1) / num_bins]; a confidence of exactly 0 goes to bin 0.
    """
    conf = confidences.double()
    bins = (conf * num_bins).ceil().long().sub(1).clamp(0, num_bins - 1)
    out = torch.zeros(num_bins, 3, dtype=torch.float64)
    out[:, 0].index_add_(0, bins, torch.ones_like(conf))
    out[:, 1].index_add_(0, bins, conf)
    out[:, 2].index_add_(0, bins, correct.double())
    return out


def expected_calibration_error(bins: torch.Tensor) -> float:
    """ECE from `calibration_bins` output: sum_b |B_b| / n * |acc(B_b) - conf(B_b)|."""
    count, conf_sum, correct_sum = bins.unbind(1)
    n = count.sum()
    if n == 0:
        return 0.0
    # |acc - conf| * |B| / n == |correct_sum - conf_sum| / n, so empty bins contribute 0 without a division.
    return float((correct_sum - conf_sum).abs().sum() / n)


class ClassificationMetrics:
    """Running top-1/top-5 accuracy, mean loss, confusion matrix, per-class scores and 15-bin ECE."""

    def __init__(self, num_classes: int, class_names: list[str] | None = None, topk: tuple[int, ...] = (1, 5),
                 num_bins: int = ECE_BINS):
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise InputError(f"{len(self.class_names)} class names for {num_classes} classes")
        self.topk, self.num_bins = topk, num_bins
        self.num_images = 0
        self.loss_sum = 0.0
        self.topk_hits = {k: 0 for k in topk}
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.bins = torch.zeros(num_bins, 3, dtype=torch.float64)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: logits (B, K) of any float dtype, integer targets (B,)."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise InputError(f"expected logits of shape (B, {self.num_classes}), got {tuple(logits.shape)}")
        if targets.shape != logits.shape[:1]:
            raise InputError(f"expected targets of shape ({logits.shape[0]},), got {tuple(targets.shape)}")
        logits, targets = logits.detach().float().cpu(), targets.detach().long().cpu()
        if targets.numel() and (targets.min() < 0 or targets.max() >= self.num_classes):
            raise InputError(f"targets must lie in [0, {self.num_classes}), got {targets.min()}..{targets.max()}")
        probs = logits.softmax(dim=1)
        conf, preds = probs.max(dim=1)
        self.num_images += len(targets)
        self.loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
        for k in self.topk:
            self.topk_hits[k] += int(topk_correct(logits, targets, k).sum())
        self.confusion += confusion_matrix(preds, targets, self.num_classes)
        self.bins += calibration_bins(conf, preds == targets, self.num_bins)

    def per_class(self) -> dict[str, dict[str, float | int]]:
        cm = self.confusion.double()
        tp = cm.diag()
        support = cm.sum(dim=1)  # true images of each class
        predicted = cm.sum(dim=0)  # images predicted as each class
        precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), 0.0)
        recall = torch.where(support > 0, tp / support.clamp(min=1), 0.0)
        return {
            name: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "accuracy": float(recall[i]), "support": int(support[i])}
            for i, name in enumerate(self.class_names)
        }

    def reliability(self) -> dict[str, list[float]]:
        """Per-bin data for a reliability diagram: edges, counts, mean confidence, accuracy (NaN if empty)."""
        count, conf_sum, correct_sum = self.bins.unbind(1)
        safe = count.clamp(min=1)
        nan = torch.full_like(count, float("nan"))
        return {
            "bin_edges": torch.linspace(0, 1, self.num_bins + 1).tolist(),
            "count": count.long().tolist(),
            "confidence": torch.where(count > 0, conf_sum / safe, nan).tolist(),
            "accuracy": torch.where(count > 0, correct_sum / safe, nan).tolist(),
        }

    def compute(self) -> dict:
        n = max(self.num_images, 1)
        out = {f"top{k}": self.topk_hits[k] / n for k in self.topk}
        out.update(
            loss=self.loss_sum / n,
            num_images=self.num_images,
            ece=expected_calibration_error(self.bins),
            per_class=self.per_class(),
            class_names=self.class_names,
            confusion_matrix=self.confusion.tolist(),
        )
        return out
