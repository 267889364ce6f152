"""vit: a small, clear Vision Transformer package.

    import vit, torch
    model = vit.create_model("vit_tiny_patch4_32", num_classes=10)
    logits = model(torch.randn(2, 3, 32, 32))  # (2, 10)
"""

from .deit import DeiTConfig, VisionTransformerDistilled
from .errors import CheckpointError, ConfigError, DataError, InputError, OutputError, VitError
from .flops import count_flops
from .model import ViTConfig, VisionTransformer
from .preprocess import Preprocess
from .registry import create_model, get_entry, list_models, read_metadata
from .weights import load_pretrained, push_to_hub, resample_pos_embed, save_pretrained

__all__ = [
    "CheckpointError", "ConfigError", "DataError", "InputError", "OutputError", "VitError",
    "ViTConfig", "VisionTransformer", "DeiTConfig", "VisionTransformerDistilled", "count_flops", "resample_pos_embed",
    "Preprocess", "create_model", "get_entry", "list_models", "load_pretrained", "push_to_hub", "read_metadata",
    "save_pretrained",
]
__version__ = "0.1.0"
