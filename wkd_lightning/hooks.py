"""Capture the outputs of named submodules with forward hooks, so any ``nn.Module`` works unedited."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


def resolve_module(model: nn.Module, path: str, *, owner: str = "model") -> nn.Module:
    """Return the submodule at a dotted path (``layer3``, ``features.7``), or raise listing the valid paths.

    Args:
        model: the network to search.
        path: dotted module path as printed by ``model.named_modules()``.
        owner: what the model is (``student``/``teacher``), for the error message.
    """
    modules = dict(model.named_modules())
    if path in modules and path != "":
        return modules[path]
    names = [name for name in modules if name]
    shown = ", ".join(names[:60]) + (f", ... ({len(names) - 60} more)" if len(names) > 60 else "")
    raise ValueError(f"{owner} has no module at path {path!r}. Available module paths: {shown}")


class FeatureHooks:
    """Forward hooks that store the outputs of a model's submodules by dotted path.

    ``features`` is refilled on every forward pass of the model and handed over by :meth:`collect`; a path whose
    module did not run in that pass is simply absent (the losses that read it say so).
    Registering no paths registers no hooks, so a logit-only run pays nothing.

    Args:
        model: the network to observe.
        paths: dotted module paths whose outputs to keep.
        owner: ``student``/``teacher``, for error messages.
    """

    def __init__(self, model: nn.Module, paths: Iterable[str], *, owner: str = "model") -> None:
        self.owner = owner
        self.features: dict[str, Tensor] = {}
        self.paths = tuple(dict.fromkeys(paths))  # de-duplicated, in order
        modules = [resolve_module(model, path, owner=owner) for path in self.paths]
        self._handles: list[RemovableHandle] = [
            module.register_forward_hook(StoreOutput(self, path)) for path, module in zip(self.paths, modules)
        ]

    def collect(self) -> dict[str, Tensor]:
        """Hand over the features of the last forward pass and forget them (no tensors kept between steps)."""
        features, self.features = self.features, {}
        return features

    def remove(self) -> None:
        """Detach every hook from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class StoreOutput:
    """The forward hook of one path: stores the module's output in ``hooks.features[path]``.

    A class, not a closure, so that a model carrying these hooks can be pickled (``ddp_spawn`` sends the module to
    its processes) and deep-copied; both keep the hook tied to the copied :class:`FeatureHooks`.
    """

    def __init__(self, hooks: FeatureHooks, path: str) -> None:
        self.hooks, self.path = hooks, path

    def __call__(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        if not isinstance(output, Tensor):
            raise TypeError(
                f"{self.hooks.owner} module {self.path!r} returned {type(output).__name__}, not a Tensor; "
                "hook a module whose output is a feature map."
            )
        self.hooks.features[self.path] = output
