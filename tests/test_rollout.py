"""Attention rollout: row-stochastic, and equal to the product worked out by hand."""

import torch

import vit
from vit.rollout import attention_maps, attention_rollout, rollout_heatmap


def random_attention(B, H, N, g):
    return torch.randn(B, H, N, N, generator=g).softmax(dim=-1)


def test_rows_sum_to_one():
    g = torch.Generator().manual_seed(0)
    maps = [random_attention(2, 3, 5, g) for _ in range(4)]
    r = attention_rollout(maps)
    assert r.shape == (2, 5, 5)
    torch.testing.assert_close(r.sum(-1), torch.ones(2, 5))


def test_equals_hand_product():
    g = torch.Generator().manual_seed(1)
    a1, a2 = random_attention(1, 2, 4, g), random_attention(1, 2, 4, g)
    I = torch.eye(4)
    # Average heads, add the identity, renormalise (rows of A + I sum to 2), multiply later blocks on the left.
    step1 = (a1[0].mean(0) + I) / 2
    step2 = (a2[0].mean(0) + I) / 2
    torch.testing.assert_close(attention_rollout([a1, a2])[0], step2 @ step1)


def test_model_with_known_attention():
    # With the q/k projections zeroed every head attends uniformly: A = J/N. Each block's factor is then
    # (J/N + I) / 2, and since J/N is idempotent the product over L blocks is I / 2^L + (1 - 1/2^L) J/N.
    model = vit.create_model("vit_nano_patch2_8", depth=3).eval()
    C = model.embed_dim
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv.weight[: 2 * C] = 0
            blk.attn.qkv.bias[: 2 * C] = 0
    x = torch.randn(2, 1, 8, 8)
    maps = attention_maps(model, x)
    N, L = maps[0].shape[-1], len(maps)
    expected = torch.eye(N) / 2**L + (1 - 1 / 2**L) * torch.full((N, N), 1 / N)
    torch.testing.assert_close(attention_rollout(maps), expected.expand(2, N, N))
    heat = rollout_heatmap(model, x)
    assert heat.shape == (2, 4, 4)  # the 4x4 patch grid of 8x8 images in 2x2 patches


def test_heatmap_range_and_avg_pool():
    model = vit.create_model("vit_nano_patch2_8", depth=2, class_token=False, global_pool="avg").eval()
    heat = rollout_heatmap(model, torch.randn(3, 1, 8, 8))
    assert heat.shape == (3, 4, 4)
    assert heat.min() >= 0 and heat.max() <= 1 and torch.allclose(heat.amax(dim=(1, 2)), torch.ones(3))
