"""vit.model: tests generated from the registry (every named model at capped size), parity with timm's
VisionTransformer as the reference, the model's options, and its errors for bad configurations and inputs."""

import math

import pytest
import timm
import torch
from einops import rearrange
from timm.layers import resample_abs_pos_embed

import vit
from vit.model import ConvStem, PatchEmbed, conv_stem_plan, sincos_pos_embed_2d, to_2tuple
from vit.rollout import attention_maps

torch.backends.mkldnn.deterministic = True

MAX_DEPTH = 2  # the default suite caps depth; width, heads, patch size and head stay as registered
ALL_MODELS = vit.list_models()
TIMM_MODELS = [n for n in ALL_MODELS if n in timm.list_models()]


def sized_twins_slow(names):
    """DeiT's distilled S and B differ from its T only in sizes the vit_ entries cover: their costlier tests
    (timm's init at width 768, gradient checkpointing) run with `-m slow`."""
    return [pytest.param(n, marks=pytest.mark.slow) if n.startswith(("deit_small", "deit_base")) else n for n in names]


def capped_overrides(name: str) -> dict:
    """Small but representative: depth <= 2 and a patch grid of at most 4x4."""
    cfg = vit.get_entry(name).config
    img = cfg.img_size if isinstance(cfg.img_size, int) else cfg.img_size[0]
    return dict(depth=min(cfg.depth, MAX_DEPTH), img_size=min(img, 4 * cfg.patch_size))


def make_input(model, batch=2, size=None, seed=0):
    cfg = model.config
    H, W = size or ((cfg.img_size,) * 2 if isinstance(cfg.img_size, int) else cfg.img_size)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.in_chans, H, W, generator=g)


def timm_twin(model, **extra):
    """timm's VisionTransformer with exactly our configuration (the independent reference)."""
    c = model.config
    kw = dict(img_size=c.img_size, patch_size=c.patch_size, in_chans=c.in_chans, num_classes=c.num_classes,
              global_pool=c.global_pool, embed_dim=c.embed_dim, depth=c.depth, num_heads=c.num_heads,
              mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias, qk_norm=c.qk_norm, init_values=c.init_values,
              class_token=c.class_token, reg_tokens=c.reg_tokens, no_embed_class=c.no_embed_class,
              fc_norm=c.fc_norm, dynamic_img_size=c.dynamic_img_size)
    kw.update(extra)
    return timm.models.VisionTransformer(**kw).eval()


# ---- generated from list_models()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_backward(name):
    model = vit.create_model(name, **capped_overrides(name))
    x = make_input(model)
    out = model(x)
    assert out.shape == (2, model.num_classes or model.embed_dim)  # 0 classes: a headless backbone
    assert torch.isfinite(out).all()
    out.logsumexp(-1).mean().backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{pname} received no gradient"
            assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
            assert p.grad.abs().sum() > 0, f"{pname} received an all-zero gradient"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_reset_classifier_and_feature_widths(name):
    model = vit.create_model(name, **capped_overrides(name)).eval()
    x = make_input(model)
    tokens = model.forward_features(x)
    grid = model.patch_embed.num_patches
    assert tokens.shape == (2, model.num_prefix_tokens + grid, model.embed_dim)
    assert model.forward_head(tokens, pre_logits=True).shape == (2, model.num_features)
    final, inter = model.forward_intermediates(x)
    assert len(inter) == model.config.depth
    gh, gw = model.patch_embed.grid_size
    assert all(t.shape == (2, model.embed_dim, gh, gw) for t in inter)
    torch.testing.assert_close(final, tokens)
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.config.num_classes == 7
    model.reset_classifier(0)
    assert model(x).shape == (2, model.embed_dim)


def test_reset_classifier_to_another_class_count_drops_the_class_names(tmp_path):
    """A head for 7 classes no longer predicts the 10 named ones: the names go with the old head, so the model
    saves (without names), and names given for the new head are kept. The same count keeps them."""
    model = vit.create_model("vit_nano_patch2_8")
    model.class_names = [str(i) for i in range(10)]
    model.reset_classifier(10)
    assert model.class_names == [str(i) for i in range(10)]
    model.reset_classifier(7, global_pool="avg")
    assert model.class_names is None
    assert vit.create_model(pretrained=vit.save_pretrained(model, tmp_path / "m.safetensors")).class_names is None
    model.class_names = list("abcdefg")
    assert vit.create_model(pretrained=vit.save_pretrained(model, tmp_path / "n.safetensors")).class_names == \
        list("abcdefg")
    model.class_names = list("abc")  # set by hand for the wrong count: named where it came from
    with pytest.raises(vit.ConfigError, match="3 class names in model.class_names for a model with 7 classes"):
        vit.save_pretrained(model, tmp_path / "o.safetensors")


@pytest.mark.parametrize("name", sized_twins_slow(ALL_MODELS))
def test_grad_checkpointing_matches(name):
    torch.manual_seed(0)
    model = vit.create_model(name, **capped_overrides(name))
    x = make_input(model)
    ref = model(x)
    ref.sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out = model(x)
    out.sum().backward()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    for n, g in ref_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[n].grad, g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_dynamic_img_size(name):
    overrides = capped_overrides(name)
    model = vit.create_model(name, dynamic_img_size=True, **overrides).eval()
    p = model.config.patch_size
    out = model(make_input(model, size=(3 * p, 5 * p)))
    assert out.shape == (2, model.num_classes or model.embed_dim) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_conv_stem_gives_the_patch_stems_token_grid(name):
    """At the registered image size and at other sizes the patch size divides, the conv stem's tokens lie on the
    patchify stem's grid. Both stems at width 16: the grid depends on the patch size alone."""
    cfg = vit.get_entry(name).config
    p, (H, W) = cfg.patch_size, to_2tuple(cfg.img_size)
    stems = {stem: PatchEmbed(img_size=cfg.img_size, patch_size=p, in_chans=cfg.in_chans, embed_dim=16,
                              strict_img_size=False, stem=stem).eval() for stem in ("patch", "conv")}
    assert stems["conv"].grid_size == stems["patch"].grid_size == (H // p, W // p)
    layers, k = conv_stem_plan(p, 16)
    assert math.prod(stride for stride, _ in layers) * k == p
    with torch.no_grad():
        for h, w in [(H, W), (p, 2 * p), (3 * p, p)]:
            x = torch.randn(1, cfg.in_chans, h, w)
            assert stems["conv"](x).shape == stems["patch"](x).shape == (1, h // p, w // p, 16)


@pytest.mark.parametrize("name", sized_twins_slow(ALL_MODELS))
def test_conv_stem_forward_backward(name):
    """The conv-stem model at capped size: the patch model's token count at the model's size and a dynamic one,
    its parameters counted by the config, and a gradient for every one of them."""
    overrides = dict(capped_overrides(name), dynamic_img_size=True)
    conv, patch = vit.create_model(name, stem="conv", **overrides), vit.create_model(name, **overrides)
    assert isinstance(conv.patch_embed.backbone, ConvStem) and isinstance(patch.patch_embed.backbone, torch.nn.Identity)
    assert conv.config.num_params() == sum(p.numel() for p in conv.parameters())
    p = conv.config.patch_size
    for size in (None, (3 * p, 5 * p)):
        x = make_input(conv, size=size)
        assert conv.forward_features(x).shape == patch.forward_features(x).shape
    conv(make_input(conv)).logsumexp(-1).mean().backward()
    for pname, param in conv.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"{pname} received no gradient"


def timm_conv_stem_twin(model):
    """timm's VisionTransformer with our conv stem built from timm's own layers: a `HybridEmbed` whose backbone is
    timm's `ConvNormAct` (3x3, BatchNorm, ReLU) for each of the stem's convs, its projection kernel = stride."""
    from functools import partial

    from timm.layers import ConvNormAct, HybridEmbed

    c = model.config
    layers, k = conv_stem_plan(c.patch_size, c.embed_dim)
    widths = [c.in_chans] + [width for _, width in layers]
    backbone = torch.nn.Sequential(*[ConvNormAct(a, b, kernel_size=3, stride=stride, bias=False)
                                     for (stride, _), a, b in zip(layers, widths, widths[1:])])
    return timm_twin(model, patch_size=k, embed_layer=partial(HybridEmbed, backbone=backbone))


@pytest.mark.parametrize("name", ["vit_micro_patch4_32", "vit_slim_patch7_28", "vit_small_patch16_224",
                                  "vit_large_patch14_224"])
def test_conv_stem_parity_with_timms_hybrid_embed(name):
    """State dicts load both ways with strict=True (timm's names: patch_embed.backbone.{i}.conv/bn, then
    patch_embed.proj), and the logits agree in eval mode (running statistics) and in training (batch ones)."""
    ours = vit.create_model(name, stem="conv", **capped_overrides(name))
    x = make_input(ours)
    with torch.no_grad():
        ours(x)  # training mode: the running statistics move from their start
    ref = timm_conv_stem_twin(ours)
    ref.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(ref.state_dict(), strict=True)
    with torch.no_grad():
        assert (ours.eval()(x) - ref.eval()(x)).abs().max() <= 1e-5
        assert (ours.train()(x) - ref.train()(x)).abs().max() <= 1e-5


def test_conv_stem_batchnorm_init_modes_and_a_frozen_stem():
    """BatchNorm starts at weight 1, bias 0; training updates its running statistics, eval mode normalises with
    them (an image's logits do not depend on its batch) and leaves them; a stem with no trainable parameter stays
    in eval mode when the model trains, so its statistics stay as they were."""
    model = vit.create_model("vit_micro_patch4_32", stem="conv", depth=1)
    assert [n for n, _ in model.named_parameters() if n.startswith("patch_embed.")] == [
        "patch_embed.backbone.0.conv.weight", "patch_embed.backbone.0.bn.weight", "patch_embed.backbone.0.bn.bias",
        "patch_embed.backbone.1.conv.weight", "patch_embed.backbone.1.bn.weight", "patch_embed.backbone.1.bn.bias",
        "patch_embed.proj.weight", "patch_embed.proj.bias"]
    bn = model.patch_embed.backbone[0].bn
    assert torch.equal(bn.weight, torch.ones(24)) and torch.equal(bn.bias, torch.zeros(24))
    x = make_input(model, batch=4)
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(x)[:1], model(x[:1]), rtol=0, atol=1e-5)
        assert not bn.running_mean.any() and int(bn.num_batches_tracked) == 0
        model.train()
        model(x)
        assert bn.running_mean.any() and int(bn.num_batches_tracked) == 1
        stats = {k: v.clone() for k, v in model.state_dict().items() if ".bn." in k}
        model.patch_embed.requires_grad_(False)
        model.train()
        assert not model.patch_embed.backbone.training and model.blocks.training
        model(x)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())


# ---- parity with timm, both directions


@pytest.mark.parametrize("name", sized_twins_slow(TIMM_MODELS))
def test_timm_parity(name):
    overrides = capped_overrides(name)
    ours = vit.create_model(name, **overrides).eval()
    ref = timm.create_model(name, pretrained=False, **overrides).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # timm -> ours, no renaming
    x = make_input(ours)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() <= 1e-5
    torch.manual_seed(1)
    ours2 = vit.create_model(name, **overrides).eval()
    ref.load_state_dict(ours2.state_dict(), strict=True)  # ours -> timm
    with torch.no_grad():
        assert (ours2(x) - ref(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("name", [n for n in ALL_MODELS if n not in TIMM_MODELS])
def test_small_image_variant_parity(name):
    ours = vit.create_model(name, depth=min(vit.get_entry(name).config.depth, 3)).eval()
    ref = timm_twin(ours)
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = make_input(ours)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "vit_base_patch32_384", "vit_large_patch14_224",
                                  "deit_tiny_distilled_patch16_224"])
def test_timm_parity_dynamic_img_size(name):
    overrides = dict(depth=2, dynamic_img_size=True)
    ours = vit.create_model(name, **overrides).eval()
    ref = timm.create_model(name, pretrained=False, **overrides).eval()
    ours.load_state_dict(ref.state_dict())
    p = ours.config.patch_size
    x = torch.randn(2, 3, 3 * p, 5 * p)  # a non-square grid different from the trained one
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() <= 1e-5


OPTION_CASES = {
    "qk_norm": dict(qk_norm=True),
    "layer_scale": dict(init_values=1e-5),
    "registers": dict(reg_tokens=4, no_embed_class=True),
    "registers_embedded": dict(reg_tokens=2),
    "avg_pool": dict(global_pool="avg"),
    "avg_pool_no_cls": dict(global_pool="avg", class_token=False),
    "no_qkv_bias": dict(qkv_bias=False),
    "mlp_ratio_2": dict(mlp_ratio=2.0),
    "non_square": dict(img_size=(32, 48)),
}


@pytest.mark.parametrize("case", OPTION_CASES)
def test_option_parity_with_timm(case):
    ours = vit.create_model("vit_tiny_patch4_32", depth=2, **OPTION_CASES[case]).eval()
    ref = timm_twin(ours)
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = make_input(ours)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() <= 1e-5
        a = ours.forward_intermediates(x, indices=[0, -1], norm=True, intermediates_only=True)
        b = ref.forward_intermediates(x, indices=[0, -1], norm=True, intermediates_only=True)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-5)


def test_num_params_counts_every_parameter():
    for kw in [{}, dict(distilled=True), dict(reg_tokens=4), dict(reg_tokens=2, no_embed_class=True),
               dict(num_classes=0, distilled=True), dict(class_token=False, global_pool="avg"), dict(stem="conv")]:
        model = vit.create_model("vit_nano_patch4_32", depth=2, **kw)
        assert model.config.num_params() == sum(p.numel() for p in model.parameters()), kw


def test_intermediates_api_matches_timm():
    """timm's full forward_intermediates signature (stop_early, output_dict, prefix tokens) and
    prune_intermediate_layers, against timm's VisionTransformer with the same weights."""
    ours = vit.create_model("vit_tiny_patch4_32", depth=3, reg_tokens=2).eval()
    ref = timm_twin(ours)
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = make_input(ours)
    calls = [dict(indices=2, stop_early=True, output_fmt="NLC"),
             dict(indices=[1], return_prefix_tokens=True, output_dict=True),
             dict(indices=None, return_prefix_tokens=True, intermediates_only=True, output_dict=True),
             dict(indices=[-1, 0], return_prefix_tokens=True, norm=True)]
    with torch.no_grad():
        for kw in calls:
            a, b = ours.forward_intermediates(x, **kw), ref.forward_intermediates(x, **kw)
            flat_a, flat_b = torch.utils._pytree.tree_flatten(a), torch.utils._pytree.tree_flatten(b)
            assert flat_a[1] == flat_b[1], kw  # the same structure: tuples, lists, dict keys
            for u, v in zip(flat_a[0], flat_b[0]):
                torch.testing.assert_close(u, v, rtol=0, atol=1e-5)
        assert ours.prune_intermediate_layers([0, 1]) == ref.prune_intermediate_layers([0, 1]) == [0, 1]
        assert len(ours.blocks) == len(ref.blocks) == 2 and ours.num_classes == 0
        torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), rtol=0, atol=1e-5)
    for bad in (0, 4, [3], []):
        with pytest.raises(vit.ConfigError, match="indices|out of range"):
            ours.forward_intermediates(x, indices=bad, intermediates_only=True)
    with pytest.raises(vit.ConfigError, match="takes no mask"):
        ours.forward_intermediates(x, attn_mask=torch.ones(1, 1))


def test_resample_pos_embed_matches_timm():
    pe = torch.randn(1, 1 + 7 * 7, 32)
    for new in [(10, 10), (4, 6), (7, 7)]:
        ours = vit.resample_pos_embed(pe, new, num_prefix_tokens=1)
        ref = resample_abs_pos_embed(pe, new, num_prefix_tokens=1)
        assert (ours - ref).abs().max() <= 1e-6


def test_sincos_pos_embed():
    pe = sincos_pos_embed_2d((4, 6), 32)[0]  # (24, 32)
    assert pe.shape == (24, 32)
    # Position (row 2, col 3): x features come first, then y; frequency 0 has omega = 1.
    idx = 2 * 6 + 3
    assert math.isclose(pe[idx, 0].item(), math.sin(3.0), abs_tol=1e-6)
    assert math.isclose(pe[idx, 8].item(), math.cos(3.0), abs_tol=1e-6)
    assert math.isclose(pe[idx, 16].item(), math.sin(2.0), abs_tol=1e-6)
    model = vit.create_model("vit_tiny_patch4_32", depth=1, pos_embed="sincos")
    assert not model.pos_embed.requires_grad
    torch.testing.assert_close(model.pos_embed[0, 1:], sincos_pos_embed_2d((8, 8), 192)[0])
    assert torch.isfinite(model(make_input(model))).all()


def test_attention_maps_reproduce_the_fused_forward():
    model = vit.create_model("vit_tiny_patch4_32", depth=2).eval()
    x = make_input(model)
    maps = attention_maps(model, x)
    assert len(maps) == 2 and maps[0].shape == (2, 3, 65, 65)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 3, 65))
    # Attention weights times V, projected, equal the fused SDPA output of the same block.
    with torch.no_grad():
        tokens = model.embed(x)
        attn = model.blocks[0].attn
        h = model.blocks[0].norm1(tokens)
        _, _, v = attn.qkv_heads(h)
        manual = attn.proj(rearrange(maps[0] @ v, "b h n d -> b n (h d)"))
        torch.testing.assert_close(manual, attn(h), rtol=1e-5, atol=1e-5)


def test_drop_path_rates_rise_linearly_and_train_mode_is_stochastic():
    model = vit.create_model("vit_tiny_patch4_32", depth=4, drop_path_rate=0.3)
    rates = [getattr(b.drop_path1, "p", 0.0) for b in model.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])
    x = make_input(model)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("extra", [dict(), dict(reg_tokens=2), dict(global_pool="avg", class_token=False)])
def test_patch_dropout_matches_timm_in_training_and_is_off_in_eval(extra):
    """The same random subset of patch tokens as timm's PatchDropout (same RNG draws), prefix tokens kept."""
    ours = vit.create_model("vit_tiny_patch4_32", depth=2, patch_drop_rate=0.5, **extra).train()
    ref = timm_twin(ours, patch_drop_rate=0.5).train()
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = make_input(ours)
    torch.manual_seed(3)
    a = ours.forward_features(x)
    torch.manual_seed(3)
    b = ref.forward_features(x)
    assert a.shape == (2, ours.num_prefix_tokens + 32, 192)  # half of the 8x8 grid
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert not torch.equal(ours.forward_features(x), ours.forward_features(x))  # a new subset each call
    ours.eval(), ref.eval()
    with torch.no_grad():
        assert ours.forward_features(x).shape[1] == ours.num_prefix_tokens + 64
        assert (ours(x) - ref(x)).abs().max() <= 1e-5


def test_no_weight_decay_names_real_parameters():
    model = vit.create_model("vit_tiny_patch4_32", depth=1, reg_tokens=2)
    names = dict(model.named_parameters())
    assert {"pos_embed", "cls_token", "reg_token"} <= model.no_weight_decay()
    assert all(n in names for n in model.no_weight_decay())
    distilled = vit.create_model("vit_tiny_patch4_32", depth=1, distilled=True)
    assert distilled.no_weight_decay() == {"pos_embed", "cls_token", "dist_token"}


@pytest.mark.parametrize("stem", ["patch", "conv"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(dtype, stem):
    model = vit.create_model("vit_tiny_patch4_32", depth=2, stem=stem).eval()
    x = make_input(model)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=dtype):
            out = model(x)
            low = model(x.to(dtype))  # an input already in the autocast dtype is taken too
    assert out.dtype == low.dtype == dtype
    assert (out.float() - ref).abs().max() <= 2e-2 * ref.abs().max()
    assert (low.float() - ref).abs().max() <= 2e-2 * ref.abs().max()


def test_config_round_trip_and_unknown_field():
    cfg = vit.create_model("vit_tiny_patch4_32", img_size=(32, 48), num_classes=3).config
    assert vit.ViTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(vit.ConfigError, match="bogus"):
        vit.ViTConfig.from_dict({**cfg.to_dict(), "bogus": 1})


# ---- clear errors: configurations


@pytest.mark.parametrize("kwargs, match", [
    ({"embed_dim": 63}, r"embed_dim 63 is not divisible by num_heads 4"),
    ({"img_size": 7}, r"img_size \(7, 7\) is not divisible by patch_size \(2, 2\)"),
    ({"img_size": 0}, r"img_size must be a positive integer"),
    ({"depth": 0}, r"depth must be a positive integer up to 2147483647, got 0"),
    ({"mlp_ratio": float("nan")}, r"mlp_ratio must be a positive finite number .*, got nan"),
    ({"reg_tokens": -1}, r"reg_tokens must be an integer >= 0"),
    ({"drop_rate": "0.1"}, r"drop_rate must be in \[0, 1\)"),
    ({"drop_path_rate": 1.5}, r"drop_path_rate must be in \[0, 1\), got 1.5"),
    ({"patch_drop_rate": 1.0}, r"patch_drop_rate must be in \[0, 1\), got 1.0"),
    ({"global_pool": "max"}, r"global_pool must be 'token' or 'avg'"),
    ({"distilled": 1}, r"distilled must be True or False, got 1"),
    ({"distilled": True, "global_pool": "avg"}, r"distilled=True .* global_pool='token' \(got 'avg'\)"),
    ({"distilled": True, "reg_tokens": 4}, r"distilled=True .* no reg_tokens \(got 4\)"),
    ({"depth": 10**6}, r"~5e\+10 parameters, over the limit of 4e\+09 .*VIT_MAX_PARAMS"),
    ({"mlp_ratio": 1e308}, r"mlp_ratio must be a positive finite number \(MLP width .* up to 2147483647\), got 1e\+308"),
    ({"embed_dim": 2**40}, r"embed_dim must be a positive integer up to 2147483647, got 1099511627776"),
    ({"qkv_bias": "no"}, r"qkv_bias must be True or False, got 'no'"),
    ({"stem": "convs"}, r"stem must be 'patch' \(one patchify conv\) or 'conv' \(3x3 convolutions first, .*\), "
                        r"got 'convs'"),
])
def test_bad_config_values(kwargs, match):
    with pytest.raises(vit.ConfigError, match=match) as e:
        vit.create_model("vit_nano_patch2_8", **kwargs)
    assert isinstance(e.value, ValueError)  # for callers that don't know vit


# ---- clear errors: inputs


def nano(**overrides):
    """The 8x8 grey digits model, one block."""
    return vit.create_model("vit_nano_patch2_8", depth=1, **overrides).eval()


@pytest.mark.parametrize("make_input, match", [
    (lambda: torch.randn(2, 1, 16, 16), r"expected image size 8x8, got 16x16"),
    (lambda: torch.randn(2, 3, 8, 8), r"expected 1 input channels, got 3"),
    (lambda: torch.randint(0, 255, (2, 1, 8, 8), dtype=torch.uint8), r"floating-point.*torch.uint8"),
    (lambda: torch.randn(2, 1, 8, 8, dtype=torch.float64), r"input is torch.float64 but the model is torch.float32"),
    (lambda: torch.randn(2, 1, 8, 8, dtype=torch.bfloat16), r"input is torch.bfloat16 .* torch.autocast"),
    (lambda: torch.randn(1, 8, 8), r"\(B, C, H, W\)"),
    (lambda: torch.randn(2, 1, 8, 8, device="meta"), r"input is on meta but the model is on cpu"),
], ids=["image-size", "channels", "uint8", "float64", "bfloat16-no-autocast", "rank-3", "device"])
@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_bad_inputs(make_input, match, stem):
    with pytest.raises(vit.InputError, match=match) as e:
        nano(stem=stem)(make_input())
    assert isinstance(e.value, ValueError)  # for callers that don't know vit


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_dynamic_size_input_not_divisible_names_the_patch_size(stem):
    with pytest.raises(vit.InputError, match=r"image size 9x8 is not divisible by patch size \(2, 2\)"):
        nano(dynamic_img_size=True, stem=stem)(torch.randn(1, 1, 9, 8))
    for H, W in [(0, 0), (0, 8), (8, 0)]:
        with pytest.raises(vit.InputError, match=rf"image size {H}x{W} holds no patch"):
            nano(dynamic_img_size=True, stem=stem)(torch.randn(1, 1, H, W))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_float64_under_autocast_is_named(dtype):
    """autocast casts float32 and half inputs but leaves float64 alone, which conv2d would then refuse."""
    with torch.autocast("cpu", dtype=dtype), pytest.raises(vit.InputError, match=r"float64.*casts no float64"):
        nano()(torch.randn(2, 1, 8, 8, dtype=torch.float64))


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_empty_batch_gives_empty_logits(stem):
    """Documented: an empty batch is not an error for the model (as for every torch module); it gives (0, K)."""
    with torch.no_grad():
        assert nano(stem=stem)(torch.randn(0, 1, 8, 8)).shape == (0, 10)
