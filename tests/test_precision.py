"""vit.precision: the --precision auto rule."""

import torch

from vit.precision import CPU_BF16_MIN_WIDTH, cpu_has_bf16, resolve_precision


def test_precision_auto_rule_on_cpu():
    cpu = torch.device("cpu")
    bf16 = "bf16" if cpu_has_bf16() else "fp32"
    assert resolve_precision("auto", cpu, 64, training=False) == "fp32"  # casts cost more than they save
    assert resolve_precision("auto", cpu, CPU_BF16_MIN_WIDTH, training=False) == bf16
    assert resolve_precision("auto", cpu, 64, training=True) == bf16
    assert resolve_precision("fp32", cpu, 768, training=True) == "fp32"
