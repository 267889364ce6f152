"""Metrics against scikit-learn on the same predictions, and ECE against cases worked out by hand."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import (accuracy_score, confusion_matrix, precision_recall_fscore_support,
                             top_k_accuracy_score)

from vit.errors import InputError
from vit.metrics import ClassificationMetrics, calibration_bins, expected_calibration_error

K, N = 7, 301


@pytest.fixture(scope="module")
def predictions():
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, K, (N,), generator=g)
    logits = torch.randn(N, K, generator=g)
    logits[torch.arange(N), targets] += 1.5  # better than chance, far from perfect
    logits[:, 3] -= 10  # class 3 is never predicted: precision's 0/0 case
    return logits, targets


def accumulate(logits, targets, batch=64):
    m = ClassificationMetrics(K, [f"c{i}" for i in range(K)])
    for i in range(0, len(targets), batch):  # several uneven batches, as evaluation feeds them
        m.update(logits[i:i + batch], targets[i:i + batch])
    return m.compute()


def test_against_sklearn(predictions):
    logits, targets = predictions
    report = accumulate(logits, targets)
    y, pred, scores = targets.numpy(), logits.argmax(1).numpy(), logits.softmax(1).numpy()
    labels = list(range(K))
    assert report["num_images"] == N
    assert report["top1"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert report["top5"] == pytest.approx(top_k_accuracy_score(y, scores, k=5, labels=labels), abs=1e-12)
    assert report["confusion_matrix"] == confusion_matrix(y, pred, labels=labels).tolist()
    precision, recall, _, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    for i in range(K):
        row = report["per_class"][f"c{i}"]
        assert row["precision"] == pytest.approx(precision[i], abs=1e-12)
        assert row["recall"] == pytest.approx(recall[i], abs=1e-12)
        assert row["accuracy"] == pytest.approx(recall[i], abs=1e-12)  # per-class accuracy = TP / support
        assert row["support"] == support[i]
    assert report["per_class"]["c3"]["precision"] == 0.0
    assert report["loss"] == pytest.approx(float(F.cross_entropy(logits, targets)), rel=1e-6)


def direct_ece(confidences, correct, num_bins=15):
    """The textbook formula, one bin at a time: sum_b |B_b| / n * |acc(B_b) - conf(B_b)|."""
    n, total = len(confidences), 0.0
    for b in range(num_bins):
        lo, hi = b / num_bins, (b + 1) / num_bins
        in_bin = [(c, a) for c, a in zip(confidences, correct) if lo < c <= hi or (b == 0 and c == 0)]
        if in_bin:
            acc = sum(a for _, a in in_bin) / len(in_bin)
            conf = sum(c for c, _ in in_bin) / len(in_bin)
            total += len(in_bin) / n * abs(acc - conf)
    return total


def two_class_logits(confidence, correct):
    """Logits whose softmax top-1 probability is `confidence`, predicting class 0; target 0 if correct."""
    margin = math.log(confidence / (1 - confidence))
    return torch.tensor([margin, 0.0]), 0 if correct else 1


def test_ece_known_answer():
    # 5 images at confidence 0.9, all right (gap 0.1); 5 at 0.6, 2 right (accuracy 0.4, gap 0.2):
    # ECE = 0.5 * 0.1 + 0.5 * 0.2 = 0.15.
    cases = [(0.9, True)] * 5 + [(0.6, True)] * 2 + [(0.6, False)] * 3
    pairs = [two_class_logits(c, ok) for c, ok in cases]
    logits = torch.stack([p[0] for p in pairs])
    targets = torch.tensor([p[1] for p in pairs])
    m = ClassificationMetrics(2, ["a", "b"])
    m.update(logits, targets)
    assert m.compute()["ece"] == pytest.approx(0.15, abs=1e-6)
    assert m.compute()["top1"] == pytest.approx(0.7)
    rel = m.reliability()
    assert sum(rel["count"]) == 10 and len(rel["count"]) == 15


def test_ece_matches_direct_formula(predictions):
    logits, targets = predictions
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    expected = direct_ece(conf.double().tolist(), (pred == targets).tolist())
    assert accumulate(logits, targets)["ece"] == pytest.approx(expected, abs=1e-9)


def test_calibration_bin_edges():
    # A confidence exactly on an edge b/15 belongs to the bin below, (lo, hi]; 0 and 1 to the end bins.
    conf = torch.tensor([0.0, 1 / 15, 2 / 15 + 1e-9, 1.0], dtype=torch.float64)
    bins = calibration_bins(conf, torch.ones(4, dtype=torch.bool))
    assert bins[:, 0].tolist()[:3] == [2, 0, 1] and bins[14, 0] == 1
    assert expected_calibration_error(torch.zeros(15, 3)) == 0.0


def test_bad_inputs():
    m = ClassificationMetrics(3)
    with pytest.raises(InputError, match="shape"):
        m.update(torch.zeros(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(InputError, match="targets"):
        m.update(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(InputError, match="class names"):
        ClassificationMetrics(3, ["a", "b"])


def test_top5_with_fewer_classes_is_one():
    m = ClassificationMetrics(3)
    m.update(torch.randn(10, 3), torch.randint(0, 3, (10,)))
    assert m.compute()["top5"] == 1.0
    assert np.isclose(sum(v["support"] for v in m.per_class().values()), 10)
