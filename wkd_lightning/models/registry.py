"""Model registry: architectures found by name, timm-style (each factory is named exactly as its key).

Configs may name a factory directly (``class_path: wkd_lightning.models.mini_resnet8``); code and tests use
:func:`create_model` and :func:`list_models`. Each entry also advertises the dotted paths and channel counts of its
feature stages, so feature losses can be configured without reading the model's source.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about an architecture.

    Attributes:
        factory: builds the model; keyword arguments (``num_classes``, ``in_channels``, ...) pass through.
        input_size: the (C, H, W) input the architecture is made for.
        feature_channels: dotted module path → output channels of that feature stage (defaults of the factory).
        last_stage: dotted path of the last feature stage (the released WKD-F default layer), or ``None`` when the
            architecture advertises no feature map (e.g. a ViT teacher used for logits only).
    """

    factory: Callable[..., nn.Module]
    input_size: tuple[int, int, int]
    feature_channels: dict[str, int] = field(default_factory=dict)
    last_stage: str | None = None


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    input_size: tuple[int, int, int], feature_channels: dict[str, int] | None = None, last_stage: str | None = None
):
    """Decorator that adds a factory to the registry under its own function name.

    Args:
        input_size: the (C, H, W) input the architecture is made for.
        feature_channels: dotted module path → channels of each advertised feature stage, shallow to deep.
        last_stage: the last feature stage; defaults to the last key of ``feature_channels``.
    """
    channels = dict(feature_channels or {})
    if last_stage is None and channels:
        last_stage = list(channels)[-1]
    if last_stage is not None and last_stage not in channels:
        raise ValueError(f"last_stage {last_stage!r} is not one of the advertised feature paths {list(channels)}")

    def add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if factory.__name__ in _REGISTRY:
            raise ValueError(f"model {factory.__name__!r} is registered twice")
        _REGISTRY[factory.__name__] = ModelInfo(factory, input_size, channels, last_stage)
        return factory

    return add


def list_models() -> list[str]:
    """Names of all registered architectures, sorted."""
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """The registry entry of ``name``; unknown names raise with the list of known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}. Registered models: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered architecture ``name`` (keyword arguments go to its factory)."""
    return model_info(name).factory(**kwargs)
