"""Logit parity with every implementation whose weights this package imports, at ViT-S/16 size, in fp32.

Each reference gets random weights (its own init, then noise on every parameter, so that no zero-initialised
head or bias hides a mistake); the weights go through the path a user takes (a state dict, a hub-layout
folder, an .npz file) into our model, and the max abs logit difference over 4 random 224x224 images is
printed as the README's parity table. The tests hold each of these to 1e-5 at test size
(tests/test_model.py, tests/test_weights.py).

    python benchmarks/parity.py     # ~1-2 min on 2 CPU cores
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

import vit

torch.backends.mkldnn.deterministic = True
S16 = dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6)  # ViT-S/16, DeiT-S
CLASSES = 1000


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.02
            scale = p.ndim == 1 and name.endswith("weight") and any(s in name for s in ("norm", "ln", "layernorm"))
            p.copy_(noise + 1.0 if scale else noise)
    return module.eval()


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def jax_npz(path: Path, seed: int = 0) -> None:
    """Random arrays with the names and shapes of google-research/vision_transformer's ViT-S/16 .npz."""
    rng = np.random.default_rng(seed)
    C, H, hidden, depth = 384, 6, 1536, 12

    def r(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    w = {"embedding/kernel": r(16, 16, 3, C), "embedding/bias": r(C), "cls": r(1, 1, C),
         "Transformer/posembed_input/pos_embedding": r(1, 197, C),
         "Transformer/encoder_norm/scale": 1 + r(C), "Transformer/encoder_norm/bias": r(C),
         "head/kernel": r(C, CLASSES), "head/bias": r(CLASSES)}
    for i in range(depth):
        b, a = f"Transformer/encoderblock_{i}/", f"Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            w[f"{b}{ln}/scale"], w[f"{b}{ln}/bias"] = 1 + r(C), r(C)
        for n in ("query", "key", "value"):
            w[f"{a}{n}/kernel"], w[f"{a}{n}/bias"] = r(C, H, C // H), r(H, C // H)
        w[f"{a}out/kernel"], w[f"{a}out/bias"] = r(H, C // H, C), r(C)
        w[f"{b}MlpBlock_3/Dense_0/kernel"], w[f"{b}MlpBlock_3/Dense_0/bias"] = r(C, hidden), r(hidden)
        w[f"{b}MlpBlock_3/Dense_1/kernel"], w[f"{b}MlpBlock_3/Dense_1/bias"] = r(hidden, C), r(C)
    np.savez(path, **w)


def rows(tmp: Path, x: torch.Tensor):
    import timm
    from torchvision.models import VisionTransformer as TorchvisionViT
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher, ViTConfig, ViTForImageClassification

    def both_ways(name):  # timm -> ours, then ours (other random weights) -> timm
        ref, ours = randomize_(timm.create_model(name)), vit.create_model(name).eval()
        ours.load_state_dict(ref.state_dict())
        first = diff(ours(x), ref(x))
        ref.load_state_dict(randomize_(ours, seed=1).state_dict())
        return ours, ref, max(first, diff(ours(x), ref(x)))

    with torch.no_grad():
        yield "timm `VisionTransformer` (vit_small_patch16_224), state dicts both ways", both_ways("vit_small_patch16_224")[2]
        ours, ref, d = both_ways("deit_small_distilled_patch16_224")
        yield "timm `VisionTransformerDistilled` (deit_small_distilled_patch16_224), both ways: mean of the heads", d
        for m in (ours, ref):
            m.train().set_distilled_training()
        (cls, dist), (ref_cls, ref_dist) = ours(x), ref(x)
        yield "the same, training: [CLS] and distillation logits apart", max(diff(cls, ref_cls), diff(dist, ref_dist))

        ref = randomize_(TorchvisionViT(image_size=224, patch_size=16, num_layers=12, num_heads=6, hidden_dim=384,
                                        mlp_dim=1536, num_classes=CLASSES))
        ours = vit.create_model("vit_small_patch16_224").eval()
        vit.load_pretrained(ours, ref.state_dict())
        yield "torchvision `VisionTransformer` (S/16 configuration)", diff(ours(x), ref(x))

        hf = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                  image_size=224, patch_size=16, num_labels=CLASSES)
        ref = randomize_(ViTForImageClassification(ViTConfig(**hf)))  # layer_norm_eps 1e-12, transformers' default
        ref.save_pretrained(tmp / "hf-vit")
        ours = vit.create_model(pretrained=tmp / "hf-vit").eval()
        yield (f"transformers `ViTForImageClassification` (hub folder, layer_norm_eps={ours.config.norm_eps:g})",
               diff(ours(x), ref(pixel_values=x).logits))

        ref = randomize_(DeiTForImageClassificationWithTeacher(DeiTConfig(**hf)))
        ref.save_pretrained(tmp / "hf-deit")
        ours = vit.create_model(pretrained=tmp / "hf-deit").eval()
        out, mean = ref(pixel_values=x), ours(x)
        ours.train().set_distilled_training()
        cls, dist = ours(x)
        yield (f"transformers `DeiTForImageClassificationWithTeacher` (hub folder, layer_norm_eps="
               f"{ours.config.norm_eps:g}): mean, [CLS], distillation logits"), \
            max(diff(mean, out.logits), diff(cls, out.cls_logits), diff(dist, out.distillation_logits))

        jax_npz(tmp / "ViT-S_16.npz")
        ref = timm.create_model("vit_small_patch16_224").eval()
        ref.load_pretrained(str(tmp / "ViT-S_16.npz"))  # timm's own .npz loader
        ours = vit.create_model("vit_small_patch16_224").eval()
        vit.load_pretrained(ours, tmp / "ViT-S_16.npz")
        yield "JAX `.npz` (google-research/vision_transformer layout) against timm's loader", diff(ours(x), ref(x))


def main() -> None:
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    print("| reference (random weights, ViT-S/16 size, fp32, 4 images) | max abs logit difference |")
    print("|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, d in rows(Path(tmp), x):
            print(f"| {name} | {d:.1e} |", flush=True)


if __name__ == "__main__":
    main()
