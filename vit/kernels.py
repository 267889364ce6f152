"""How the model's attention and MLP are computed: kernels chosen by name, and the measurements behind them.

vit/model.py says what a block computes, softmax(q k^T / sqrt(D)) v and fc2(gelu(fc1(x))), with the reference
torch ops; this module holds the ways of computing it on different hardware. Every kernel computes the same
function (tests/test_kernels.py holds each to the reference numerics), so the choice changes speed and memory
only. It is therefore not a `ViTConfig` field and is not saved with the weights.

Choosing. Each Attention and Mlp module holds its function (`attend`, `gelu_fc2`) and calls it in `forward`;
`use` sets it from a policy name, once, on every block of a built model. `create_model` applies the defaults:

    model = vit.create_model("vit_micro_patch4_32", attn_kernel="matmul", mlp_kernel="plain")
    vit.kernels.use(model, attn="sdpa")  # any built model; None keeps a module's current function
    VisionTransformer(config)  # built directly: the reference ops ("sdpa", "plain")

Attention policies, each a function (q, k, v, dropout_p) -> softmax(q k^T / sqrt(D)) v, all (B, H, N, D). The
scale is not an argument: SDPA uses its default 1/sqrt(D), the matmul kernel D**-0.5 (as timm's `scale`);
the two can differ in the last bit, and each path keeps its own so that its numerics match its reference.
    "auto"    (default) per call, the faster of the two below for the device, dtype, grad and compile state
              (`sdpa_is_faster`).
    "sdpa"    F.scaled_dot_product_attention: flash / memory-efficient kernels, never holds N x N scores.
    "matmul"  q @ k^T, softmax, @ v; under torch.compile the softmax is `_ScaledSoftmax`.
MLP policies, each a function (h, weight, bias, dropout_p) -> linear(dropout(gelu(h)), weight, bias):
    "auto"      (default) per call: "recompute" on CUDA, where memory bounds the batch; "plain" elsewhere, where
                the step's time is what counts (`recompute_is_better`).
    "recompute" while training, save h but not gelu(h) and recompute it backward (`_GeluLinear`).
    "plain"     the composed ops: autograd saves gelu(h).

Figures: 2-core AMD EPYC (AVX-512 BF16), torch 2.14.1, the CIFAR-size model (32x32, patch 4, width 192,
depth 9, 3 heads, batch 256) unless stated; benchmarks/README.md ("What makes it fast") has the runs (`levers.py`).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .model import attend as attend_sdpa
from .model import gelu_linear as gelu_linear_plain

# --------------------------------------------------------------------------------------------------------
# Attention

SDPA_MIN_LEN_CPU_BF16 = 256  # eager bf16 CPU inference takes SDPA only for longer sequences


def sdpa_is_faster(q: torch.Tensor) -> bool:
    """The "auto" rule, measured: fused SDPA, or two matmuls and a softmax, for this call's q (B, H, N, D).

    CUDA, and fp32 on CPU: SDPA (flash / memory-efficient kernels; on CPU the matmul path ran fp32 inference
    at 0.57x). bf16 on CPU: the matmul path while training (SDPA's bf16 flash backward is the slow part: the
    matmul path trained 1.40x faster; attention alone at 65 tokens fwd+bwd 168 vs 233 ms, at ViT-S/16's 197
    tokens 117 vs 193 ms), under torch.compile (inductor fuses its softmax: 2-3x faster than the flash kernel
    at every length measured) and in eager inference up to SDPA_MIN_LEN_CPU_BF16 tokens (1.12x end to end,
    ViT-S/16 1.13x); longer eager sequences take the flash kernel, which never holds N x N scores.
    """
    if q.device.type != "cpu" or q.dtype != torch.bfloat16:
        return True
    if (torch.is_grad_enabled() and q.requires_grad) or torch.compiler.is_compiling():
        return False
    return q.shape[-2] > SDPA_MIN_LEN_CPU_BF16


class _ScaledSoftmax(torch.autograd.Function):
    """softmax(scores * scale) over the last dim, computed in fp32, returned and saved in the scores' dtype.

    For torch.compile: inductor fuses it into one pass each way, and this form is not rewritten into SDPA
    (whose CPU bf16 kernel is 2-3x slower at these lengths: attention alone, compiled, 32x6 heads x 197 tokens
    5.5 ms against flash's 13-15 ms). Saving the probabilities in bf16, as eager bf16 softmax does, keeps the
    compiled training step from holding them in fp32 (ViT-S/16 step memory 1411 -> 1236 MB, CIFAR-size
    1143 -> 1081 MB).
    """

    @staticmethod
    def forward(ctx, scores, scale):
        p = (scores.float() * scale).softmax(dim=-1).to(scores.dtype)
        ctx.save_for_backward(p)
        ctx.scale = scale
        return p

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (p,) = ctx.saved_tensors
        p32, g32 = p.float(), grad.float()
        return (p32 * (g32 - (g32 * p32).sum(dim=-1, keepdim=True)) * ctx.scale).to(grad.dtype), None


def attend_matmul(q, k, v, dropout_p: float) -> torch.Tensor:
    # Scaling the product, not q, keeps autograd from saving a scaled copy of q (2 bytes x B x N x C per
    # block in bf16).
    scale = q.shape[-1] ** -0.5
    attn = q @ k.transpose(-2, -1)  # (B, H, N, N)
    if torch.compiler.is_compiling():
        attn = _ScaledSoftmax.apply(attn, scale)
    else:
        attn = (attn * scale).softmax(dim=-1)
    return F.dropout(attn, dropout_p) @ v if dropout_p else attn @ v


def attend_auto(q, k, v, dropout_p: float) -> torch.Tensor:
    attend = attend_sdpa if sdpa_is_faster(q) else attend_matmul
    return attend(q, k, v, dropout_p)


ATTENTION = {"auto": attend_auto, "sdpa": attend_sdpa, "matmul": attend_matmul}


def attention_kernel(policy: str) -> Callable[..., torch.Tensor]:
    """The attention function for a policy name: "auto", "sdpa" or "matmul"."""
    return _lookup(ATTENTION, policy, "attention")


# --------------------------------------------------------------------------------------------------------
# MLP


class _GeluLinear(torch.autograd.Function):
    """linear(gelu(h), weight, bias) that saves h but not gelu(h): backward recomputes the activation.

    A training step then keeps B x N x hidden fewer activations per block (about a fifth of the step's
    activation memory) for one extra GELU per block. Gradients are those of the composed ops. Measured
    training step memory: bf16 923 MB with it against 1098 MB without (timm 1044 MB); fp32 1478 MB (timm
    1820 MB). Under torch.compile it makes no difference: the partitioner already recomputes the GELU.
    """

    @staticmethod
    def forward(ctx, h, weight, bias):
        ctx.save_for_backward(h, weight)
        return F.linear(F.gelu(h), weight, bias)  # under autocast the linear runs in the autocast dtype

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        h, weight = ctx.saved_tensors
        a = F.gelu(h)
        g = grad_out.reshape(-1, grad_out.shape[-1])  # (B*N, C); weight grads are cast back by autograd
        grad_h = torch.ops.aten.gelu_backward(grad_out @ weight.to(grad_out.dtype), h)
        grad_w = g.T @ a.reshape(-1, a.shape[-1]).to(g.dtype) if ctx.needs_input_grad[1] else None
        return grad_h, grad_w, g.sum(0) if ctx.needs_input_grad[2] else None


def gelu_linear_recompute(h, weight, bias, dropout_p: float) -> torch.Tensor:
    # Only where there is something to save: a graph is being recorded, and no dropout mask sits in between.
    if h.requires_grad and not dropout_p:
        return _GeluLinear.apply(h, weight, bias)
    return gelu_linear_plain(h, weight, bias, dropout_p)


def recompute_is_better(h: torch.Tensor) -> bool:
    """The "auto" rule, measured: recompute the GELU on CUDA (memory bounds the batch there, and the GELU is a
    cheap elementwise pass), save it on CPU. On CPU the recompute only costs time: a fifth of the step's
    activations is a few hundred MB of RAM even for ViT-S/16, while the extra GELU cost 2% of a bf16 step on
    the AVX-512 CPU and, fp32 on the 2-core Zen 3 (AVX2), 10% of Fashion-MNIST's 17-token training step
    (fwd+bwd 882 against 795 ms; timm 862) and 3% of CIFAR-10's with half its tokens dropped (924 against 897;
    timm 908)."""
    return h.device.type == "cuda"


def gelu_linear_auto(h, weight, bias, dropout_p: float) -> torch.Tensor:
    gelu_fc2 = gelu_linear_recompute if recompute_is_better(h) else gelu_linear_plain
    return gelu_fc2(h, weight, bias, dropout_p)


MLP = {"auto": gelu_linear_auto, "recompute": gelu_linear_recompute, "plain": gelu_linear_plain}


def mlp_kernel(policy: str) -> Callable[..., torch.Tensor]:
    """The MLP's gelu-then-fc2 function for a policy name: "auto", "recompute" or "plain"."""
    return _lookup(MLP, policy, "MLP")


def _lookup(table: dict, policy: str, what: str):
    if policy not in table:
        raise ConfigError(f"unknown {what} kernel {policy!r}; choose from {sorted(table)}")
    return table[policy]


def use(model, attn: str | None = "auto", mlp: str | None = "auto"):
    """Set every block's attention and MLP function from policy names (None keeps the current one); returns
    the model. Works on any module tree whose blocks hold `attn.attend` and `mlp.gelu_fc2`."""
    attend = attention_kernel(attn) if attn else None
    gelu_fc2 = mlp_kernel(mlp) if mlp else None
    for m in model.modules():
        if attend is not None and hasattr(m, "attend"):
            m.attend = attend
        if gelu_fc2 is not None and hasattr(m, "gelu_fc2"):
            m.gelu_fc2 = gelu_fc2
    return model
