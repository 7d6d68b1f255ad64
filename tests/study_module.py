"""``benchmarks/fashion_mnist_study.py`` imported as a module, for the tests that check its report and notebooks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_study() -> ModuleType:
    """The study script as the module ``fashion_mnist_study`` (registered in ``sys.modules``: its dataclasses look
    their module up while the classes are built)."""
    if "fashion_mnist_study" in sys.modules:
        return sys.modules["fashion_mnist_study"]
    spec = importlib.util.spec_from_file_location("fashion_mnist_study", ROOT / "benchmarks" / "fashion_mnist_study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
