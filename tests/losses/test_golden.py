"""Golden loss values: every shipped config's training-step loss terms on fixed inputs, compared with stored numbers.

For each YAML under ``configs/`` (found by glob, so a new config is covered as soon as it is added; fragments without
a ``model`` section, such as ``configs/logging/*.yaml``, are stacked on an experiment and skipped) the module is
built through the real ``wkd`` parser (``make_cli([..., "-c", CONFIG], run=False)``) and one real
``DistillationModule.training_step`` runs on fixed seeded inputs (8 random images of the data module's
``input_size``: 1×28×28 Fashion-MNIST, 3×32×32 CIFAR-100, 3×224×224 ImageNet; random labels over all of its classes,
1000 for ImageNet) at the first epoch and at epoch ``round(0.8·E)`` of the config's ``E`` (12 of 15, 192 of 240, 80
of 100), so the weight schedules show. Every term the step logs (``ce`` and each plug-in's ``<name>/<term>``) is
compared with ``tests/losses/golden/loss_values.json`` at ``rtol=1e-4``. Configs without distillation losses check the
cross-entropy alone. The CIFAR-100 and ImageNet values were checked to move by less than 1e-5 relative when the
convolutions run without oneDNN or on two threads, so the tolerance should also cover other CPUs.

Nothing is read from disk but the config: the files a config points at are replaced by deterministic stand-ins
written to ``tmp_path``:

* ``model.teacher_weights`` → the state dict of the config's teacher architecture built after
  ``torch.manual_seed(TEACHER_SEED)``, its last ``nn.Linear`` scaled by ``TEACHER_LOGIT_SCALE`` so the teacher is
  confident (a freshly initialised one predicts nearly uniform distributions, which would make the KD-type terms
  insensitive to their temperatures);
* a WKD-L ``cost`` file → :func:`fixed_cost`, saved as ``{"cost": C×C, "kappa_applied": False}``;
* ``data.init_args.data_dir`` (where the data module has one) → an empty folder, so any accidental read fails.

List items cannot be overridden on the command line, so the YAML is loaded, these strings are substituted and a
temporary config is written. The student (and any projector) is initialised from fixed seeds, so the values are
the same in every process.

When a change of the values is intended (a loss definition, an architecture, a config's hyper-parameters), rewrite
the file on purpose and review the diff::

    WKD_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/losses/test_golden.py

In that mode the tests rewrite their entries (and drop entries of deleted configs) and are reported as skipped.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from wkd_lightning.commands.wkd import make_cli
from wkd_lightning.losses.base import keyed_loss_configs

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "configs"
GOLDEN_FILE = Path(__file__).resolve().parent / "golden" / "loss_values.json"
REGENERATE = os.environ.get("WKD_REGENERATE_GOLDEN", "") not in ("", "0")
REGENERATE_HINT = "WKD_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/losses/test_golden.py"

RTOL, ATOL = 1e-4, 1e-7
BATCH = 8
INPUT_SEED = 1234
STUDENT_SEED = 0
TEACHER_SEED = 42
PROJECTOR_SEED = 7
TEACHER_LOGIT_SCALE = 8.0


def _is_experiment(path: Path) -> bool:
    """Whether ``path`` is a whole experiment (has a ``model`` section), not a fragment such as a logger add-on."""
    cfg = yaml.safe_load(path.read_text())
    return isinstance(cfg, dict) and isinstance(cfg.get("model"), dict)


ALL_CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))
#: Experiment configs; fragments meant to be stacked on one (``-c kd.yaml -c logging/wandb_offline.yaml``) define no
#: model and change no loss, so they have no values of their own. The detection configs apply the same plug-ins to RoIs
#: (their losses are checked by tests/detection/test_detection.py).
CONFIGS = [path for path in ALL_CONFIGS if _is_experiment(path) and CONFIG_DIR / "coco" not in path.parents]


def config_key(path: Path) -> str:
    """``fashion_mnist/kd`` for ``configs/fashion_mnist/kd.yaml``."""
    return path.relative_to(CONFIG_DIR).with_suffix("").as_posix()


def golden_epochs(max_epochs: int) -> list[int]:
    """The epochs evaluated: the first and ``round(0.8·E)`` (12 of 15: inside the decay of ``CosineDecay(9)``)."""
    return sorted({1, max(1, round(0.8 * max_epochs))})


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


def write_teacher_weights(spec, path: Path) -> Path:
    """Save a seeded, confident teacher of architecture ``spec`` to ``path``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TEACHER_SEED)
        teacher = _instantiate(spec)
    linears = [m for m in teacher.modules() if isinstance(m, nn.Linear)]
    if linears:
        with torch.no_grad():
            linears[-1].weight.mul_(TEACHER_LOGIT_SCALE)
            if linears[-1].bias is not None:
                linears[-1].bias.mul_(TEACHER_LOGIT_SCALE)
    torch.save(teacher.state_dict(), path)
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


def prepare_config(config: Path, tmp_path: Path) -> tuple[Path, dict]:
    """Write a copy of ``config`` whose file paths point at deterministic stand-ins in ``tmp_path``.

    Returns:
        The temporary config and ``{"num_classes": C, "input_size": (channels, height, width)}``.
    """
    cfg = yaml.safe_load(config.read_text())
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


def compute_terms(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Build ``config`` through the CLI and return ``{"max_epochs": E, "epochs": {e: {term: value}}}``."""
    cfg_path, shape = prepare_config(config, tmp_path)
    # The CLI seeds and may switch on deterministic algorithms; keep both from leaking into other tests.
    for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "CUBLAS_WORKSPACE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # the CLI gets `args` only, not pytest's command line
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    # One thread: for a batch of 8 threading gains nothing, and on a shared CPU the OpenMP barriers of 2+ threads
    # made the steps ~50x slower (measured). It does not change the values beyond float rounding.
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(STUDENT_SEED)
            cli = make_cli(["-c", str(cfg_path), "--trainer.default_root_dir", str(tmp_path / "run")], run=False)
            module, trainer = cli.model, cli.trainer
            module.num_classes, module.input_size = shape["num_classes"], shape["input_size"]
            torch.manual_seed(PROJECTOR_SEED)
            module.setup("fit")  # metrics and the one-sample probe that builds projectors
            module.trainer = trainer  # the real current_epoch / max_epochs path of the step
            generator = torch.Generator().manual_seed(INPUT_SEED)
            x = torch.randn(BATCH, *shape["input_size"], generator=generator)
            y = torch.randint(0, shape["num_classes"], (BATCH,), generator=generator)
            logged: list[dict] = []
            monkeypatch.setattr(module, "log_dict", lambda values, *a, **k: logged.append(dict(values)))
            monkeypatch.setattr(module, "log", lambda name, value, *a, **k: logged.append({name: value}))
            max_epochs = int(trainer.max_epochs)
            epochs = {}
            for epoch in golden_epochs(max_epochs):
                trainer.fit_loop.epoch_progress.current.completed = epoch - 1
                assert module.current_epoch == epoch - 1
                logged.clear()
                total = module.training_step((x, y), 0)
                terms = next((d for d in logged if d and all(k.startswith("train/loss/") for k in d)), None)
                assert terms is not None, f"training_step logged no train/loss/<term> dict: {logged}"
                values = {k.removeprefix("train/loss/"): float(v) for k, v in terms.items()}
                assert math.isclose(float(total.detach()), sum(values.values()), rel_tol=1e-5), (total, values)
                epochs[str(epoch)] = values
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_num_threads(threads)
    return {"max_epochs": max_epochs, "epochs": epochs}


def _load_golden() -> dict:
    if not GOLDEN_FILE.is_file():
        return {"configs": {}}
    return json.loads(GOLDEN_FILE.read_text())


def _write_golden(golden: dict) -> None:
    golden = {"about": None, "setup": None, **golden}
    golden["about"] = (
        "Loss terms of one DistillationModule.training_step per shipped config on fixed inputs; written by "
        f"tests/losses/test_golden.py. Regenerate on purpose only: {REGENERATE_HINT}"
    )
    golden["setup"] = {
        "batch": BATCH,
        "input_seed": INPUT_SEED,
        "student_seed": STUDENT_SEED,
        "teacher_seed": TEACHER_SEED,
        "projector_seed": PROJECTOR_SEED,
        "teacher_logit_scale": TEACHER_LOGIT_SCALE,
        "cost": "(1 - cos(2*pi*(i - j)/C)) / 2, kappa not applied",
        "torch": torch.__version__.split("+")[0],
    }
    golden["configs"] = dict(sorted(golden["configs"].items()))
    GOLDEN_FILE.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN_FILE.write_text(json.dumps(golden, indent=2) + "\n")


def test_configs_are_found():
    assert CONFIGS, f"no experiment configs (YAML files with a `model` section) under {CONFIG_DIR}"


@pytest.mark.parametrize("config", CONFIGS, ids=config_key)
def test_golden_loss_values(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    key = config_key(config)
    actual = compute_terms(config, tmp_path, monkeypatch)
    if REGENERATE:
        golden = _load_golden()
        golden["configs"][key] = actual
        _write_golden(golden)
        pytest.skip(f"golden values of {key} rewritten in {GOLDEN_FILE.relative_to(ROOT)}")
    stored = _load_golden()["configs"].get(key)
    if stored is None:
        pytest.fail(
            f"no golden loss values for config {key!r} in {GOLDEN_FILE.relative_to(ROOT)}. If the config is new, "
            f"record them with `{REGENERATE_HINT}` and commit the updated file."
        )
    hint = f"if this change is intended, regenerate with `{REGENERATE_HINT}` and review the diff."
    assert actual["max_epochs"] == stored["max_epochs"], f"{key}: max_epochs changed; {hint}"
    assert actual["epochs"].keys() == stored["epochs"].keys(), f"{key}: evaluated epochs changed; {hint}"
    mismatches = []
    for epoch, expected_terms in stored["epochs"].items():
        actual_terms = actual["epochs"][epoch]
        if actual_terms.keys() != expected_terms.keys():
            mismatches.append(f"epoch {epoch}: terms {sorted(actual_terms)} != stored {sorted(expected_terms)}")
            continue
        for term, expected in expected_terms.items():
            value = actual_terms[term]
            if not math.isclose(value, expected, rel_tol=RTOL, abs_tol=ATOL):
                mismatches.append(f"epoch {epoch} {term}: {value:.8g} != stored {expected:.8g}")
    assert not mismatches, f"{key}: loss values differ from {GOLDEN_FILE.relative_to(ROOT)}:\n  " + (
        "\n  ".join(mismatches) + f"\n{hint}"
    )


def test_golden_file_has_no_stale_configs():
    golden = _load_golden()
    known = {config_key(c) for c in CONFIGS}
    stale = sorted(set(golden["configs"]) - known)
    if REGENERATE and stale:
        for key in stale:
            del golden["configs"][key]
        _write_golden(golden)
        pytest.skip(f"dropped golden values of deleted configs {stale}")
    assert not stale, f"golden values for configs that no longer exist: {stale}; regenerate with `{REGENERATE_HINT}`."
