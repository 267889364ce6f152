"""The fast paths compute the same function as the reference path (SDPA's math backend, fp32).

Tolerances (issue 6): fp32 logits within 1e-5; bf16 autocast logits within 2e-2 relative (norm of the
difference over the norm of the reference). Small models, so the file runs in seconds.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from vit.model import SDPA_MIN_LEN_CPU_BF16, Attention, Mlp, ViTConfig, VisionTransformer, sdpa_is_faster

SMALL = ViTConfig(img_size=16, patch_size=4, embed_dim=64, depth=2, num_heads=4, num_classes=10)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def make(kernel: str, config: ViTConfig = SMALL, device: str = "cpu") -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(config).to(device)
    for m in model.modules():
        if isinstance(m, Attention):
            m.kernel = kernel
    return model


def reference_logits(x: torch.Tensor, config: ViTConfig = SMALL) -> torch.Tensor:
    model = make("sdpa", config, x.device.type).eval()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        return model(x.float())


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("kernel", ["auto", "sdpa", "matmul"])
def test_fp32_logits_match_reference(kernel):
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        got = make(kernel).eval()(x)
    torch.testing.assert_close(got, reference_logits(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", ["auto", "sdpa", "matmul"])
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_bf16_autocast_logits_match_reference(kernel, grad):
    x = torch.randn(3, 3, 16, 16)
    model = make(kernel).train(grad)
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(x)
    assert rel_err(got, reference_logits(x)) <= 2e-2


def test_matmul_and_sdpa_gradients_match_fp32():
    x = torch.randn(2, 3, 16, 16)
    y = torch.tensor([1, 7])
    grads = []
    for kernel in ("sdpa", "matmul"):
        model = make(kernel)
        F.cross_entropy(model(x), y).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)


def test_attention_kernel_rule_on_cpu():
    q = torch.randn(2, 3, 5, 8)
    long = torch.randn(1, 3, SDPA_MIN_LEN_CPU_BF16 + 1, 8)
    assert sdpa_is_faster(q) and sdpa_is_faster(long)  # fp32
    assert not sdpa_is_faster(q.bfloat16())  # bf16 eager inference, short sequence: the matmul path
    assert sdpa_is_faster(long.bfloat16())  # ... long sequence: flash, which never holds N x N scores
    assert not sdpa_is_faster(q.bfloat16().requires_grad_())  # bf16 training: the matmul path
    assert not sdpa_is_faster(long.bfloat16().requires_grad_())


def test_attention_dropout_on_matmul_path_only_while_training():
    model = make("matmul", SMALL.replace(attn_drop_rate=0.5))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference_logits(x, SMALL.replace(attn_drop_rate=0.5)),
                                   atol=1e-5, rtol=1e-5)
        assert not torch.allclose(model.train()(x), model.eval()(x))


def test_state_dict_unchanged_by_kernel():
    assert list(make("matmul").state_dict()) == list(make("sdpa").state_dict())


@pytest.mark.slow
def test_compiled_model_matches_eager_fp32():
    x = torch.randn(2, 3, 16, 16)
    model = make("auto").eval()
    with torch.no_grad():
        got = torch.compile(model)(x)
    torch.testing.assert_close(got, reference_logits(x), atol=1e-5, rtol=1e-5)


def test_compiled_bf16_keeps_the_matmul_path_and_matches_reference():
    """Under torch.compile the bf16 CPU graph computes softmax itself: inductor must not swap in SDPA
    (its CPU bf16 kernel is 2-3x slower here), and the logits still match the fp32 reference."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    x = torch.randn(2, 3, 16, 16)
    model = make("auto").eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = torch.compile(model)(x)
    assert counters["inductor"]["fuse_attention"] == 0
    assert rel_err(got, reference_logits(x)) <= 2e-2
    torch._dynamo.reset()


def test_compiled_training_step_matches_eager_gradients():
    """The benchmark's fast path compiles the training step (train.py --compile): its loss and gradients,
    through the GELU-recomputing MLP and the bf16 matmul attention, equal the eager module's."""
    torch._dynamo.reset()
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([1, 7, 3, 0])
    results = []
    for compiled in (False, True):
        model = make("auto")
        net = torch.compile(model) if compiled else model
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (eager_loss, eager), (compiled_loss, compiled) = results
    torch._dynamo.reset()
    assert abs(compiled_loss.item() - eager_loss.item()) <= 2e-2 * abs(eager_loss.item())
    assert all(compiled[name] is not None and compiled[name].isfinite().all() for name in eager)
    # All gradients as one vector: single tiny entries (the key bias's gradient is zero in exact arithmetic,
    # softmax being shift-invariant) differ by rounding alone, in relative terms arbitrarily.
    flat = [torch.cat([g[name].flatten() for name in eager]) for g in (compiled, eager)]
    assert rel_err(*flat) <= 2e-2


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_flash_attention_matches_reference(dtype):
    x = torch.randn(4, 3, 16, 16, device="cuda")
    model = make("auto", device="cuda").eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        got = model(x)
    assert rel_err(got, reference_logits(x)) <= 2e-2


def test_precision_auto_rule_on_cpu():
    from vit.precision import CPU_BF16_MIN_WIDTH, cpu_has_bf16, resolve_precision

    cpu = torch.device("cpu")
    bf16 = "bf16" if cpu_has_bf16() else "fp32"
    assert resolve_precision("auto", cpu, 64, training=False) == "fp32"  # casts cost more than they save
    assert resolve_precision("auto", cpu, CPU_BF16_MIN_WIDTH, training=False) == bf16
    assert resolve_precision("auto", cpu, 64, training=True) == bf16
    assert resolve_precision("fp32", cpu, 768, training=True) == "fp32"


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_gelu_recompute_gives_the_same_gradients(amp):
    x = torch.randn(2, 3, 16, 16)
    y = torch.tensor([1, 7])
    grads = []
    for recompute in (False, True):
        model = make("auto")
        for m in model.modules():
            if isinstance(m, Mlp):
                m.recompute_gelu = recompute
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


def test_gelu_recompute_with_frozen_fc2():
    model = make("auto")
    model.blocks[0].mlp.fc2.requires_grad_(False)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    assert model.blocks[0].mlp.fc2.weight.grad is None and model.blocks[0].mlp.fc1.weight.grad is not None
