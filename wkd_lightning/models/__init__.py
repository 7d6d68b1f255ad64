"""Model zoo: registered architectures by name."""

from wkd_lightning.models.registry import ModelInfo, create_model, list_models, model_info, register_model
from wkd_lightning.models.small import SmallResNet, mini_resnet8, mini_resnet14

__all__ = [
    "ModelInfo",
    "SmallResNet",
    "create_model",
    "list_models",
    "mini_resnet8",
    "mini_resnet14",
    "model_info",
    "register_model",
]
