"""A shipped config with deterministic stand-ins for every file it points at, for the golden loss test.

Nothing is read from disk but the config: the files a config points at are replaced by stand-ins written to
``tmp_path``:

* ``model.teacher_weights`` → the state dict of the config's teacher architecture built after
  ``torch.manual_seed(TEACHER_SEED)``, its last ``nn.Linear`` scaled by ``TEACHER_LOGIT_SCALE`` so the teacher is
  confident (a freshly initialised one predicts nearly uniform distributions, which would make the KD-type terms
  insensitive to their temperatures);
* a WKD-L ``cost`` file → :func:`fixed_cost`, saved as ``{"cost": C×C, "kappa_applied": False}``;
* ``data.init_args.data_dir`` (where the data module has one) → an empty folder, so any accidental read fails.

List items cannot be overridden on the command line, so the YAML is loaded, edited and written again.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from wkd_lightning.losses.base import keyed_loss_configs

TEACHER_SEED = 42
TEACHER_LOGIT_SCALE = 8.0

#: An edit of the loaded YAML before it is written for the CLI (the sensitivity test changes a loss setting).
ConfigEdit = Callable[[dict], None]


def fixed_cost(num_classes: int) -> torch.Tensor:
    """A deterministic, unsharpened C×C category cost: classes on a circle, ``D_ij = (1 − cos(2π(i − j)/C)) / 2``.

    Symmetric, zero on the diagonal, in ``[0, 1]``; neighbouring classes are cheap, opposite ones dear.
    """
    index = torch.arange(num_classes, dtype=torch.float64)
    angle = 2 * math.pi * (index[:, None] - index[None, :]) / num_classes
    return ((1 - torch.cos(angle)) / 2).float().fill_diagonal_(0.0)


def _import(class_path: str):
    module_name, _, attr = class_path.rpartition(".")
    return getattr(importlib.import_module(module_name), attr)


def _instantiate(spec) -> nn.Module:
    """Build ``{"class_path": ..., "init_args": {...}}`` (or a bare class path) as the CLI would."""
    if isinstance(spec, str):
        return _import(spec)()
    return _import(spec["class_path"])(**(spec.get("init_args") or {}))


#: Teacher stand-ins already written in this process, by architecture: the ImageNet teachers are shared by 7 configs
#: each, and drawing their weights in float64 costs about a second each.
_TEACHER_FILES: dict[str, Path] = {}


def write_teacher_weights(spec, path: Path) -> Path:
    """Save a seeded, confident teacher of architecture ``spec`` to ``path``, or return the file already written for
    that architecture. Its weights are drawn in the default dtype (float64 under
    :func:`~tests.losses.golden_step.compute_terms`) and saved rounded to fp32."""
    key = yaml.safe_dump(spec, sort_keys=True)
    if key in _TEACHER_FILES and _TEACHER_FILES[key].is_file():
        return _TEACHER_FILES[key]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TEACHER_SEED)
        teacher = _instantiate(spec)
    linears = [m for m in teacher.modules() if isinstance(m, nn.Linear)]
    if linears:
        with torch.no_grad():
            linears[-1].weight.mul_(TEACHER_LOGIT_SCALE)
            if linears[-1].bias is not None:
                linears[-1].bias.mul_(TEACHER_LOGIT_SCALE)
    torch.save(teacher.float().state_dict(), path)
    _TEACHER_FILES[key] = path
    return path


def _data_setting(data: dict, data_cls, name: str):
    """``num_classes`` / ``input_size`` of the configured data module: a class attribute (CIFAR-100's 100 classes),
    else its ``init_args`` value or its constructor default (ImageNet's ``num_classes``), else ``None``."""
    if data_cls is None:
        return None
    if name in (data.get("init_args") or {}):
        return data["init_args"][name]
    if hasattr(data_cls, name):
        return getattr(data_cls, name)
    parameter = inspect.signature(data_cls.__init__).parameters.get(name)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def prepare_config(config: Path, tmp_path: Path, edit: ConfigEdit | None = None) -> tuple[Path, dict]:
    """Write a copy of ``config`` whose file paths point at deterministic stand-ins in ``tmp_path``.

    Args:
        config: the shipped config.
        tmp_path: where the copy and the stand-ins go.
        edit: applied to the loaded YAML before the stand-ins are substituted.

    Returns:
        The temporary config and ``{"num_classes": C, "input_size": (channels, height, width)}``.
    """
    cfg = yaml.safe_load(config.read_text())
    if edit is not None:
        edit(cfg)
    model, data = cfg["model"], cfg.get("data") or {}
    data_cls = _import(data["class_path"]) if isinstance(data, dict) and "class_path" in data else None
    num_classes = model.get("num_classes") or _data_setting(data, data_cls, "num_classes")
    input_size = model.get("input_size") or _data_setting(data, data_cls, "input_size")
    if num_classes is None or input_size is None:
        pytest.fail(f"{config}: cannot tell num_classes / input_size (no model setting, data module has none).")
    if model.get("teacher") is not None:
        model["teacher_weights"] = str(write_teacher_weights(model["teacher"], tmp_path / "teacher.pt"))
    cost_file = tmp_path / "cost.pt"
    for loss in keyed_loss_configs(model.get("losses")).values():
        init_args = loss.get("init_args") or {}
        cost = init_args.get("cost")
        if isinstance(cost, str) and cost != "uniform":
            if not cost_file.exists():
                torch.save({"cost": fixed_cost(num_classes), "kappa_applied": False}, cost_file)
            init_args["cost"] = str(cost_file)
    if data_cls is not None and "data_dir" in inspect.signature(data_cls.__init__).parameters:
        no_data = tmp_path / "no-data"
        no_data.mkdir(exist_ok=True)
        data.setdefault("init_args", {})["data_dir"] = str(no_data)
    path = tmp_path / config.name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, {"num_classes": int(num_classes), "input_size": tuple(input_size)}
