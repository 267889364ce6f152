"""timm's Muon (Jordan et al., 2024) with the Newton-Schulz computation dtype as an argument.

timm's Muon orthogonalises each update with Newton-Schulz iterations in bfloat16, whatever the model's
precision. On a CPU without native bf16 (AVX2 only, e.g. AMD Zen 3) those matrix products run ~100x slower
than fp32 (about 1 against 168 GFLOP/s on two Zen 3 cores) and a CIFAR-size step spent most of its time in
them. `Muon` here runs the iterations in `ns_dtype`; vit/optim.py chooses it by the training precision. A module
of its own because it subclasses timm's optimizer: importing timm costs seconds, so vit/optim.py imports this
module only when a run trains with Muon.
"""

from __future__ import annotations

import functools

import torch
from timm.optim import Muon as TimmMuon
from timm.optim import muon as timm_muon


class Muon(TimmMuon):
    """timm's Muon with the Newton-Schulz computation dtype as an argument."""

    def __init__(self, params, *, ns_dtype: torch.dtype = torch.bfloat16, **kwargs):
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        # timm's update functions look the function up in their module at each call: swap it for the step.
        original = timm_muon.zeropower_via_newtonschulz
        timm_muon.zeropower_via_newtonschulz = functools.partial(original, dtype=self.ns_dtype)
        try:
            return super().step(closure)
        finally:
            timm_muon.zeropower_via_newtonschulz = original
