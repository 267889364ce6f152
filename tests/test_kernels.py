"""vit.kernels: every attention and MLP kernel computes the reference function, and is chosen by name.

Reference: SDPA's math backend in fp32. Tolerances: fp32 logits within 1e-5; bf16 autocast logits within
2e-2 relative (norm of the difference over the norm of the reference). Small models, so the file runs in
seconds; the torch.compile tests are marked slow.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import vit
from vit import kernels
from vit.kernels import SDPA_MIN_LEN_CPU_BF16, sdpa_is_faster
from vit.model import ViTConfig, VisionTransformer

SMALL = ViTConfig(img_size=16, patch_size=4, embed_dim=64, depth=2, num_heads=4, num_classes=10)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def make(attn: str = "auto", mlp: str = "auto", config: ViTConfig = SMALL, device: str = "cpu"):
    torch.manual_seed(0)
    return kernels.use(VisionTransformer(config), attn=attn, mlp=mlp).to(device)


def reference_logits(x: torch.Tensor, config: ViTConfig = SMALL) -> torch.Tensor:
    model = make("sdpa", "plain", config, x.device.type).eval()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        return model(x.float())


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad for n, p in model.named_parameters()}


# ---- choosing a kernel


def test_kernels_are_chosen_by_name_on_a_built_model():
    plain = VisionTransformer(SMALL)  # built directly: the reference ops
    assert all(b.attn.attend is kernels.attend_sdpa and b.mlp.gelu_fc2 is kernels.gelu_linear_plain
               for b in plain.blocks)
    model = make("matmul", "plain")
    assert all(b.attn.attend is kernels.attend_matmul and b.mlp.gelu_fc2 is kernels.gelu_linear_plain
               for b in model.blocks)
    default = vit.create_model("vit_nano_patch2_8")
    assert default.blocks[0].attn.attend is kernels.attend_auto
    assert default.blocks[0].mlp.gelu_fc2 is kernels.gelu_linear_auto
    kernels.use(default, attn="sdpa", mlp=None)  # None keeps the MLP's
    assert all(b.attn.attend is kernels.attend_sdpa and b.mlp.gelu_fc2 is kernels.gelu_linear_auto
               for b in default.blocks)
    chosen = vit.create_model("vit_nano_patch2_8", attn_kernel="matmul", mlp_kernel="plain")
    assert chosen.blocks[0].attn.attend is kernels.attend_matmul
    assert chosen.blocks[0].mlp.gelu_fc2 is kernels.gelu_linear_plain


@pytest.mark.parametrize("build", [
    lambda: make(attn="flash"),
    lambda: make(mlp="fused"),
    lambda: vit.create_model("vit_nano_patch2_8", attn_kernel="flash"),
])
def test_unknown_kernel_names_list_the_valid_ones(build):
    with pytest.raises(vit.ConfigError, match=r"unknown (attention|MLP) kernel .*choose from \["):
        build()


def test_kernel_choice_is_not_part_of_config_or_state_dict():
    a, b = make("matmul", "plain"), make("sdpa", "recompute")
    assert a.config == b.config
    assert list(a.state_dict()) == list(b.state_dict())
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_auto_attention_rule_on_cpu():
    q = torch.randn(2, 3, 5, 8)
    long = torch.randn(1, 3, SDPA_MIN_LEN_CPU_BF16 + 1, 8)
    assert sdpa_is_faster(q) and sdpa_is_faster(long)  # fp32
    assert not sdpa_is_faster(q.bfloat16())  # bf16 eager inference, short sequence: the matmul path
    assert sdpa_is_faster(long.bfloat16())  # ... long sequence: flash, which never holds N x N scores
    assert not sdpa_is_faster(q.bfloat16().requires_grad_())  # bf16 training: the matmul path
    assert not sdpa_is_faster(long.bfloat16().requires_grad_())


# ---- attention kernels against the reference


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
    results = []
    for kernel in ("sdpa", "matmul"):
        model = make(kernel)
        F.cross_entropy(model(x), y).backward()
        results.append(grads(model))
    for name in results[0]:
        torch.testing.assert_close(results[1][name], results[0][name], atol=1e-5, rtol=1e-4, msg=name)


def test_attention_dropout_on_matmul_path_only_while_training():
    config = SMALL.replace(attn_drop_rate=0.5)
    model = make("matmul", config=config)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference_logits(x, config), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(model.train()(x), model.eval()(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scaled_softmax_matches_softmax_forward_and_backward(dtype):
    """The compiled matmul path's softmax (`_ScaledSoftmax`), checked without compiling: values and
    gradients of softmax(scores * scale), returned in the scores' dtype."""
    scores = torch.randn(2, 3, 7, 7).to(dtype)
    a = scores.clone().requires_grad_()
    b = scores.float().requires_grad_()
    got = kernels._ScaledSoftmax.apply(a, 0.125)
    want = (b * 0.125).softmax(dim=-1)
    assert got.dtype == dtype
    g = torch.randn_like(want)
    got.backward(g.to(dtype))
    want.backward(g)
    tol = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=2e-2)
    torch.testing.assert_close(got.float(), want, **tol)
    torch.testing.assert_close(a.grad.float(), b.grad, **tol)


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_flash_attention_matches_reference(dtype):
    x = torch.randn(4, 3, 16, 16, device="cuda")
    model = make("auto", device="cuda").eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        got = model(x)
    assert rel_err(got, reference_logits(x)) <= 2e-2


# ---- MLP kernels


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_gelu_recompute_gives_the_same_gradients(amp):
    x = torch.randn(2, 3, 16, 16)
    y = torch.tensor([1, 7])
    results = []
    for mlp in ("plain", "recompute"):
        model = make(mlp=mlp)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        results.append(grads(model))
    for name in results[0]:
        torch.testing.assert_close(results[1][name], results[0][name], atol=1e-6, rtol=1e-5, msg=name)


def mlp_backward_node(mlp: str, device: str = "cpu") -> str:
    """The autograd node that the first block's MLP output hangs from, while training."""
    model = make(mlp=mlp, device=device).train()
    block = model.blocks[0]
    h = block.mlp.fc1(torch.randn(2, 5, 64, device=device, requires_grad=True))
    return type(block.mlp.gelu_fc2(h, block.mlp.fc2.weight, block.mlp.fc2.bias, 0.0).grad_fn).__name__


def test_auto_mlp_saves_the_gelu_on_cpu_and_recomputes_it_on_cuda():
    assert "GeluLinear" in mlp_backward_node("recompute") and "GeluLinear" not in mlp_backward_node("plain")
    assert not kernels.recompute_is_better(torch.empty(1))
    assert mlp_backward_node("auto") == mlp_backward_node("plain")


@cuda
def test_auto_mlp_recomputes_on_cuda():
    assert kernels.recompute_is_better(torch.empty(1, device="cuda"))
    assert mlp_backward_node("auto", "cuda") == mlp_backward_node("recompute", "cuda")


def test_gelu_recompute_with_frozen_fc2():
    model = make(mlp="recompute")
    model.blocks[0].mlp.fc2.requires_grad_(False)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    assert model.blocks[0].mlp.fc2.weight.grad is None and model.blocks[0].mlp.fc1.weight.grad is not None


def test_mlp_dropout_is_the_same_random_function_on_both_kernels():
    config = SMALL.replace(proj_drop_rate=0.3)
    x = torch.randn(2, 3, 16, 16)
    outs = []
    for mlp in ("plain", "recompute"):
        model = make(mlp=mlp, config=config).train()
        torch.manual_seed(1)
        outs.append(model(x))
    torch.testing.assert_close(outs[1], outs[0], atol=0, rtol=0)


# ---- under torch.compile


@pytest.mark.slow
def test_compiled_model_matches_eager_fp32():
    x = torch.randn(2, 3, 16, 16)
    model = make().eval()
    with torch.no_grad():
        got = torch.compile(model)(x)
    torch.testing.assert_close(got, reference_logits(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_compiled_bf16_keeps_the_matmul_path_and_matches_reference():
    """Under torch.compile the bf16 CPU graph computes softmax itself: inductor must not swap in SDPA
    (its CPU bf16 kernel is 2-3x slower here), and the logits still match the fp32 reference."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    x = torch.randn(2, 3, 16, 16)
    model = make().eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = torch.compile(model)(x)
    assert counters["inductor"]["fuse_attention"] == 0
    assert rel_err(got, reference_logits(x)) <= 2e-2
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_training_step_matches_eager_gradients():
    """The benchmark's fast path compiles the training step (train.py --compile): its loss and gradients,
    through the GELU-recomputing MLP and the bf16 matmul attention, equal the eager module's."""
    torch._dynamo.reset()
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([1, 7, 3, 0])
    results = []
    for compiled in (False, True):
        model = make()
        net = torch.compile(model) if compiled else model
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        results.append((loss.detach(), grads(model)))
    (eager_loss, eager), (compiled_loss, compiled) = results
    torch._dynamo.reset()
    assert abs(compiled_loss.item() - eager_loss.item()) <= 2e-2 * abs(eager_loss.item())
    assert all(compiled[name] is not None and compiled[name].isfinite().all() for name in eager)
    # All gradients as one vector: single tiny entries (the key bias's gradient is zero in exact arithmetic,
    # softmax being shift-invariant) differ by rounding alone, in relative terms arbitrarily.
    flat = [torch.cat([g[name].flatten() for name in eager]) for g in (compiled, eager)]
    assert rel_err(*flat) <= 2e-2
