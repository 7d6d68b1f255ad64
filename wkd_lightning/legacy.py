"""Import paths of earlier versions, kept working: configs, ``config.yaml`` files of earlier runs and checkpoints name
classes by their dotted path (``wkd_lightning.schedules.MultiStepLR``), and those files must keep loading after a
module moved (``wkd_lightning.run.optim``).

Each old module name is answered with the module that holds its contents now, the same object (no copy, no
warning): ``import wkd_lightning.schedules`` gives :mod:`wkd_lightning.run.optim`. ``wkd_lightning.checks``, which
was split by job, is answered with a module that hands on the names of its three parts.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

_RUN = ("config_layers", "distributed", "errors", "files", "fingerprints", "interruption", "predictions", "recipe")
_RUN += ("rundirs", "summary", "teacher_accuracy", "tracking")
#: Old module → where it lives now.
MOVED = {f"wkd_lightning.{name}": f"wkd_lightning.run.{name}" for name in _RUN} | {
    "wkd_lightning.schedules": "wkd_lightning.run.optim",
    "wkd_lightning.healthy": "wkd_lightning.run.watch",
    "wkd_lightning.export": "wkd_lightning.commands.export",
    "wkd_lightning.catalog": "wkd_lightning.commands.catalog",
}
#: Old modules split into several: their names are looked up in these, in order.
_CHECKS = ("wkd_lightning.losses.checks", "wkd_lightning.losses.cost_checks", "wkd_lightning.run.watch")
SPLIT = {"wkd_lightning.checks": _CHECKS}


class _SplitModule(ModuleType):
    """A module whose attributes are those of its parts (the first part that has the name)."""

    def __init__(self, name: str, parts: tuple[str, ...]) -> None:
        super().__init__(name, f"Moved: its names now live in {', '.join(parts)}.")
        self._parts = parts

    def __getattr__(self, attribute: str):
        for part in self._parts:
            module = importlib.import_module(part)
            if hasattr(module, attribute):
                return getattr(module, attribute)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attribute!r}")


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old module names of :data:`MOVED` and :data:`SPLIT` and loads them as their new modules."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED or fullname in SPLIT:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        if spec.name in SPLIT:
            return _SplitModule(spec.name, SPLIT[spec.name])
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module) -> None:
        """Nothing to run: the new module was imported by :meth:`create_module`."""


def install() -> None:
    """Answer the old module names from now on (called once by ``wkd_lightning/__init__.py``)."""
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(MovedModules())
