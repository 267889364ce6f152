"""vit.optim and vit.muon: parameter groups, and Muon against the SVD polar factor and timm's NAdamW."""

import pytest
import torch
from timm.optim import muon as timm_muon

import vit
from vit import optim
from vit.muon import Muon
from vit.recipes import TrainConfig


def test_param_groups_no_decay_and_layer_decay():
    model = vit.create_model("vit_nano_patch2_8")
    groups = optim.param_groups(model, 0.05, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {"cls_token", "pos_embed", "norm.weight", "blocks.0.norm1.bias", "head.bias"} <= no_decay
    assert "blocks.0.attn.qkv.weight" not in no_decay
    groups = optim.param_groups(model, 0.05, 0.5)
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    assert scale["head.weight"] == 1.0 and scale["blocks.5.mlp.fc1.weight"] == 0.5
    assert scale["patch_embed.proj.weight"] == scale["pos_embed"] == 0.5 ** 7


@pytest.mark.parametrize("overrides", [{}, dict(distilled=True)])
def test_layer_decay_equals_timms_helper_through_group_matcher(overrides, caplog):
    """timm's `param_groups_layer_decay` reads the model's `group_matcher` (timm's own groups): the scale of
    every parameter is ours, and no "no effect" warning, except the final norm, which timm's groups put with
    the last block and ours (BEiT's rule) with the head."""
    from timm.optim import param_groups_layer_decay

    model = vit.create_model("vit_nano_patch2_8", **overrides)
    names = {id(p): n for n, p in model.named_parameters()}
    ours = {names[id(p)]: g["lr_scale"] for g in optim.param_groups(model, 0.05, 0.65) for p in g["params"]}
    timm_groups = param_groups_layer_decay(model, 0.05, model.no_weight_decay(), layer_decay=0.65)
    theirs = {names[id(p)]: g["lr_scale"] for g in timm_groups for p in g["params"]}
    assert "no effect" not in caplog.text
    assert ours.keys() == theirs.keys() == set(names.values())
    for name in ours:
        want = theirs["blocks.5.norm1.weight"] if name.startswith("norm.") else ours[name]
        assert theirs[name] == pytest.approx(want, rel=1e-12), name
    assert theirs["head.weight"] == ours["norm.weight"] == 1.0 and theirs["pos_embed"] == pytest.approx(0.65 ** 7)
    # ...and the groups of timm's own model of this configuration
    import timm

    c = model.config
    distilled = isinstance(model, vit.VisionTransformerDistilled)
    twin = (timm.models.deit.VisionTransformerDistilled if distilled else timm.models.VisionTransformer)(
        img_size=c.img_size, patch_size=c.patch_size, in_chans=c.in_chans, num_classes=c.num_classes,
        embed_dim=c.embed_dim, depth=c.depth, num_heads=c.num_heads)
    twin_names = {id(p): n for n, p in twin.named_parameters()}
    timm_own = {twin_names[id(p)]: g["lr_scale"] for g in param_groups_layer_decay(twin, 0.05, layer_decay=0.65)
                for p in g["params"]}
    assert timm_own == theirs


def test_muon_steps_weight_matrices_by_their_polar_factor_and_the_rest_like_nadamw():
    """--opt muon: one step from zero momentum moves each block/patch-embedding matrix W by
    -lr * (wd * W + 0.2 * sqrt(max(shape)) * polar(G)), polar(G) = U V^T from the SVD (Newton-Schulz only
    approximates it); position embeddings, [CLS], the head and 1-D parameters move as timm's NAdamW."""
    from timm.optim import NAdamW

    torch.manual_seed(0)
    model = vit.create_model("vit_nano_patch4_32")
    lr, wd = 1e-3, 0.05
    opt = optim.build_optimizer(TrainConfig(opt="muon", lr=lr, weight_decay=wd), model, torch.device("cpu"), "fp32")
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    grads = {n: torch.randn_like(p) for n, p in params.items()}
    for n, p in params.items():
        p.grad = grads[n].clone()
    opt.step()
    tables = ("pos_embed", "cls_token", "head.weight")
    muon = [n for n, p in params.items() if p.ndim >= 2 and n not in tables]
    assert len(muon) == 1 + 4 * len(model.blocks)  # the patch embedding and every block's four matrices
    for n in muon:
        g = grads[n].reshape(len(grads[n]), -1)
        u, _, vh = torch.linalg.svd(g, full_matrices=False)
        want = -lr * (wd * before[n] + 0.2 * max(g.shape) ** 0.5 * (u @ vh).reshape(before[n].shape))
        step = params[n].detach() - before[n]
        # Square matrices have singular values near 0 that five Newton-Schulz steps leave short of 1: 0.99.
        assert torch.nn.functional.cosine_similarity(step.flatten(), want.flatten(), 0) > 0.99, n
        assert (step.norm() / want.norm()).item() == pytest.approx(1.0, abs=0.02), n
    # With Nesterov momentum (as set), timm's Muon steps the rest with its Nesterov AdamW: timm's NAdamW alone.
    rest = [n for n in params if n not in muon]
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] for p in g["params"]}
    ref = {n: torch.nn.Parameter(before[n].clone()) for n in rest}
    nadamw = NAdamW([{"params": [ref[n]], "weight_decay": wd if id(params[n]) in decay else 0.0} for n in rest],
                    lr=lr, betas=(0.9, 0.999), eps=1e-8)
    for n in rest:
        ref[n].grad = grads[n].clone()
    nadamw.step()
    for n in rest:
        torch.testing.assert_close(params[n].detach(), ref[n].detach(), rtol=1e-6, atol=1e-7, msg=n)


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_muon_orthogonalises_in_the_training_precision(precision, dtype):
    """timm computes Newton-Schulz in bf16 whatever the model's precision; ours follows the step's precision
    (bf16 matrix products are ~100x slower than fp32 on a CPU without native bf16). The update is then
    exactly what timm's own function gives in that dtype."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(24, 16))
    g = torch.randn(24, 16)
    opt = Muon([w], ns_dtype=optim.newton_schulz_dtype(precision), lr=0.1, weight_decay=0.0, momentum=0.95,
               nesterov=False, adjust_lr_fn=None)
    before = w.detach().clone()
    w.grad = g.clone()
    opt.step()
    coeffs = timm_muon.resolve_ns_coefficients("quintic", timm_muon._COEFFICIENTS)
    want = timm_muon.zeropower_via_newtonschulz(g * 0.05, timm_muon.DEFAULT_NS_STEPS, coeffs, dtype=dtype)
    torch.testing.assert_close(w.detach(), before - 0.1 * want.float(), rtol=0, atol=1e-6)
    assert timm_muon.zeropower_via_newtonschulz.__name__ == "zeropower_via_newtonschulz"  # put back after
