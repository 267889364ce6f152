"""DeiT's distilled ViT (Touvron et al., 2021, "Training data-efficient image transformers & distillation
through attention"), as timm's `VisionTransformerDistilled` in `timm/models/deit.py`.

A distillation token after [CLS] learns from a teacher through a second head, `head_dist`; [CLS] learns from
the labels through `head`. At test time the model answers with the mean of the two heads' logits (paper
section 5.2, "joint classifiers"); while training with `set_distilled_training()` it returns both, (cls, dist),
for `vit.distill.DistillationLoss`. Parameter names are timm's (`dist_token`, `head_dist`), so its deit_*
state dicts load with `strict=True`.

    model = vit.create_model("deit_tiny_distilled_patch16_224")  # or any name with distilled=True
    config = config_from_dict(saved_model_config)  # a DeiTConfig where the dict says "distilled": true
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn as nn

from .errors import ConfigError, check_known_options
from .model import ViTConfig, VisionTransformer


@dataclass(frozen=True)
class DeiTConfig(ViTConfig):
    """A `ViTConfig` with DeiT's distillation token and second head."""

    distilled: bool = True  # always True: to_dict() writes it, so that `config_from_dict` rebuilds a DeiTConfig

    def __post_init__(self):
        super().__post_init__()
        if self.distilled is not True:
            raise ConfigError(f"a DeiTConfig has distilled=True, got {self.distilled!r}; a ViTConfig is the model "
                              "without the distillation token")
        if self.global_pool != "token" or self.reg_tokens or self.fc_norm:
            raise ConfigError("distilled=True reads the [CLS] and distillation tokens after the final norm (as timm's "
                              f"VisionTransformerDistilled): it needs global_pool='token' (got {self.global_pool!r}), "
                              f"no reg_tokens (got {self.reg_tokens}) and no fc_norm (got {self.fc_norm})")

    @property
    def num_prefix_tokens(self) -> int:
        return super().num_prefix_tokens + 1  # the distillation token, after [CLS]

    def num_params(self) -> int:
        return super().num_params() + (self.embed_dim + 1) * self.num_classes  # head_dist


def config_from_dict(fields: Mapping) -> ViTConfig:
    """The config a dict of fields describes: a `DeiTConfig` where it says distilled=True, else a `ViTConfig`
    ("distilled": false names the plain ViT). Every config read from a file or built from create_model's
    overrides comes through here; `vit.deit.build_from_config` builds the model of either."""
    check_known_options(fields, DeiTConfig, "config")  # an unknown key is named against every field, distilled too
    fields = dict(fields)
    distilled = fields.pop("distilled", False)
    if not isinstance(distilled, bool):  # a config from a file: "no" is not False
        raise ConfigError(f"distilled must be True or False, got {distilled!r}")
    return DeiTConfig.from_dict(fields) if distilled else ViTConfig.from_dict(fields)


class VisionTransformerDistilled(VisionTransformer):
    """The ViT with DeiT's distillation token (`dist_token`, after [CLS]) and its head (`head_dist`).

    Logits are the mean of the two heads', or both apart, (cls, dist), while training with
    `set_distilled_training()`; pre_logits features are the mean of the two tokens.
    """

    config_class = DeiTConfig

    def __init__(self, config: DeiTConfig | None = None, **overrides):
        super().__init__(config, **overrides)
        self.head_dist = self._new_head(self.num_classes)
        self.distilled_training = False  # as timm's flag: (cls, dist) logits in training only when set

    def _add_prefix_tokens(self, cfg: DeiTConfig) -> None:
        super()._add_prefix_tokens(cfg)
        self.dist_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))

    def _prefix_tokens(self) -> list[torch.Tensor]:
        cls_token, *rest = super()._prefix_tokens()  # [CLS] first: a DeiTConfig has it and no registers
        return [cls_token, self.dist_token, *rest]

    @torch.no_grad()
    def init_weights(self) -> None:
        super().init_weights()  # head_dist is built after the first call, initialised as a new head
        nn.init.trunc_normal_(self.dist_token, std=0.02)  # as DeiT's

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"dist_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        groups = super().group_matcher(coarse)
        return {**groups, "stem": groups["stem"] + "|dist_token"}

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True) -> None:
        """Return (cls, dist) logits while training, for a distillation loss."""
        self.distilled_training = enable

    def get_classifier(self) -> tuple[nn.Module, nn.Module]:
        return self.head, self.head_dist

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Both heads anew for `num_classes` (0: no heads, features out)."""
        super().reset_classifier(num_classes, global_pool)
        self.head_dist = self._new_head(num_classes)

    def forward_head(self, x: torch.Tensor,
                     pre_logits: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, N, C) -> the mean of the [CLS] head's and the distillation head's logits (B, num_classes),
        the two apart while training with `distilled_training`, or the mean of the two tokens with pre_logits."""
        x, x_dist = self.head_drop(x[:, 0]), self.head_drop(x[:, 1])
        if pre_logits:
            return (x + x_dist) / 2
        x, x_dist = self.head(x), self.head_dist(x_dist)
        return (x, x_dist) if self.distilled_training and self.training else (x + x_dist) / 2


def with_overrides(config: ViTConfig, overrides: dict) -> ViTConfig:
    """`config` with some fields changed; distilled=True or False changes the kind (`config_from_dict`)."""
    return config_from_dict({**config.to_dict(), **overrides}) if overrides else config


def build_from_config(config: ViTConfig) -> VisionTransformer:
    """The model a config describes: DeiT's `VisionTransformerDistilled` for a `DeiTConfig`, else the ViT."""
    return (VisionTransformerDistilled if isinstance(config, DeiTConfig) else VisionTransformer)(config)
