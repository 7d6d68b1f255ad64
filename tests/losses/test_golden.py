"""Golden loss values: every shipped config's training-step loss terms on fixed inputs, compared with stored numbers.

For each YAML under ``configs/`` (found by glob, so a new config is covered as soon as it is added; fragments without
a ``model`` section, such as ``configs/logging/*.yaml``, are stacked on an experiment and skipped) the module is
built through the real ``wkd`` parser and one real ``DistillationModule.training_step`` runs on fixed seeded inputs
(random images of the data module's ``input_size``: 8 of 1×28×28 Fashion-MNIST, 8 of 3×32×32 CIFAR-100, 4 of
3×224×224 ImageNet, fewer to keep the file's time; random labels over all of its classes, 1000 for ImageNet) at the
first epoch and at epoch ``round(0.8·E)`` of the config's ``E`` (12 of 15, 192 of 240, 80 of 100), so the weight
schedules show. Every term the step logs (``ce`` and each plug-in's ``<name>/<term>``) is compared with
``tests/losses/golden/loss_values.json``. How the step is built is in :mod:`tests.losses.golden_step` (and the files
a config points at are replaced as :mod:`tests.losses.golden_config` says): all weights and inputs are drawn in
float64 and rounded to fp32, so they are the same numbers on every x86-64 CPU.

**One verdict on every CPU: each term has its own tolerance, derived from its fp32 rounding.** The test runs the
step in fp32 (the arithmetic of a real run). Its result differs between CPUs because the kernels differ (oneDNN and
MKL pick other blockings and vector widths, ``exp``/``log`` are vectorised differently), and some terms amplify that:
DKD's TCKD of 6e-4 is a difference of probabilities near 1, so one fp32 ulp of those (1.2e-7) is 2e-4 of the term
(measured between an Intel and this AMD EPYC machine). A fixed relative tolerance is then either too tight for such a
term or too loose for the others. So the regeneration measures each term's rounding error and stores it:

* **value** — the term computed with the model (and its inputs) in float64 on the same fp32-rounded numbers: the
  reference that no fp32 kernel choice of the recording CPU leans on (the losses keep their own fp32 arithmetic, as
  in a run);
* **tol** — ``max(SAFETY · spread, RTOL_MIN · |value|, ATOL)``, where ``spread`` is the largest distance between
  ``value`` and the term computed in three fp32 arithmetics of the same step: as is, with convolutions outside oneDNN
  (PyTorch's im2col + GEMM), and with the batch in reverse order (every batch sum in another order). Each is one draw
  of "the fp32 step on some CPU"; another CPU is another draw of the same size. ``SAFETY = 10`` covers draws an order
  of magnitude larger than the largest one seen; ``RTOL_MIN = 1e-5`` (84 fp32 ulps) keeps a term whose draws happened
  to agree from a tolerance tighter than its rounding, and ``ATOL = 1e-7`` covers terms that are zero up to rounding
  (WKD-L's target term when the teacher gives the label no mass), which sit below the fp32 rounding of the total loss
  they are summed into.

Why not float64 values compared at a float64 tolerance: the losses cast their inputs to fp32 on purpose (they must be
exact under bf16 autocast), so a float64 step still rounds in fp32 where the cancellations are. A stored tolerance
may not make the test toothless: :func:`test_golden_tolerances_stay_sharp` refuses any tolerance above
``MAX_RTOL = 2e-3`` relative (the widest is ImageNet DKD's TCKD: 1.2e-3, ten fp32 ulps of 1 on a term of 1e-3; most
terms sit at ``RTOL_MIN``), and :func:`test_golden_comparison_catches_small_config_changes` shows that a 1 % change
of one loss setting fails the comparison of a KD, a DKD, a WKD-L and a WKD-F config.

When a change of the values is intended (a loss definition, an architecture, a config's hyper-parameters), rewrite
the file on purpose and review the diff::

    WKD_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/losses/test_golden.py

In that mode the tests rewrite their entries (and drop entries of deleted configs) and are reported as skipped; the
step runs four times per config, float64 convolutions being slower (11 minutes here on a busy 2-core machine, against
2 for the check). Run it without ``-n``: the tests share one file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from tests.losses import golden_config, golden_step
from tests.losses.golden_step import FP32, PERTURBED, compute_terms

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "configs"
GOLDEN_FILE = Path(__file__).resolve().parent / "golden" / "loss_values.json"
REGENERATE = os.environ.get("WKD_REGENERATE_GOLDEN", "") not in ("", "0")
REGENERATE_HINT = "WKD_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/losses/test_golden.py"

SAFETY, RTOL_MIN, ATOL, MAX_RTOL = 10.0, 1e-5, 1e-7, 2e-3


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


def golden_entry(reference: dict, fp32_runs: list[dict]) -> dict:
    """The stored entry of one config: each term's ``value`` (from ``reference``) and ``tol`` (see the module doc).

    Raises:
        AssertionError: the runs disagree on the epochs or the terms (the step is not the same step).
    """
    epochs = {}
    for epoch, terms in reference["epochs"].items():
        epochs[epoch] = {}
        for term, value in terms.items():
            spread = max(abs(run["epochs"][epoch][term] - value) for run in fp32_runs)
            epochs[epoch][term] = {"value": value, "tol": max(SAFETY * spread, RTOL_MIN * abs(value), ATOL)}
    return {"max_epochs": reference["max_epochs"], "epochs": epochs}


def mismatches(actual: dict, stored: dict) -> list[str]:
    """How ``actual`` (:func:`~tests.losses.golden_step.compute_terms`) differs from a stored entry; empty if not."""
    if actual["max_epochs"] != stored["max_epochs"]:
        return [f"max_epochs {actual['max_epochs']} != stored {stored['max_epochs']}"]
    if actual["epochs"].keys() != stored["epochs"].keys():
        return [f"evaluated epochs {sorted(actual['epochs'])} != stored {sorted(stored['epochs'])}"]
    found = []
    for epoch, expected_terms in stored["epochs"].items():
        actual_terms = actual["epochs"][epoch]
        if actual_terms.keys() != expected_terms.keys():
            found.append(f"epoch {epoch}: terms {sorted(actual_terms)} != stored {sorted(expected_terms)}")
            continue
        for term, expected in expected_terms.items():
            value, error = actual_terms[term], abs(actual_terms[term] - expected["value"])
            if not error <= expected["tol"]:  # `not <=`: a NaN fails
                found.append(
                    f"epoch {epoch} {term}: {value:.8g} != stored {expected['value']:.8g} "
                    f"(off by {error:.3g}, tolerance {expected['tol']:.3g})"
                )
    return found


def _load_golden() -> dict:
    if not GOLDEN_FILE.is_file():
        return {"configs": {}}
    return json.loads(GOLDEN_FILE.read_text())


def _write_golden(golden: dict) -> None:
    golden = {"about": None, "setup": None, **golden}
    golden["about"] = (
        "Loss terms of one DistillationModule.training_step per shipped config on fixed inputs, each with the "
        "tolerance derived from its fp32 rounding; written by tests/losses/test_golden.py (see its docstring). "
        f"Regenerate on purpose only: {REGENERATE_HINT}"
    )
    golden["setup"] = {
        "batch": golden_step.BATCH,
        "large_batch": {"batch": golden_step.LARGE_BATCH, "from_pixels": golden_step.LARGE_PIXELS},
        "input_seed": golden_step.INPUT_SEED,
        "student_seed": golden_step.STUDENT_SEED,
        "teacher_seed": golden_config.TEACHER_SEED,
        "projector_seed": golden_step.PROJECTOR_SEED,
        "teacher_logit_scale": golden_config.TEACHER_LOGIT_SCALE,
        "cost": "(1 - cos(2*pi*(i - j)/C)) / 2, kappa not applied",
        "draws": "float64, rounded to fp32",
        "value": PERTURBED[0].name,
        "tol": f"max({SAFETY:g} * spread, {RTOL_MIN:g} * |value|, {ATOL:g}); spread over "
        + ", ".join(a.name for a in (FP32, *PERTURBED[1:])),
        "torch": torch.__version__.split("+")[0],
    }
    golden["configs"] = dict(sorted(golden["configs"].items()))
    GOLDEN_FILE.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN_FILE.write_text(json.dumps(golden, indent=2) + "\n")


def _stored(key: str) -> dict:
    stored = _load_golden()["configs"].get(key)
    if stored is None:
        pytest.fail(
            f"no golden loss values for config {key!r} in {GOLDEN_FILE.relative_to(ROOT)}. If the config is new, "
            f"record them with `{REGENERATE_HINT}` and commit the updated file."
        )
    return stored


def test_configs_are_found():
    assert CONFIGS, f"no experiment configs (YAML files with a `model` section) under {CONFIG_DIR}"


@pytest.mark.parametrize("config", CONFIGS, ids=config_key)
def test_golden_loss_values(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    key = config_key(config)
    actual = compute_terms(config, tmp_path, monkeypatch)
    if REGENERATE:
        reference, *others = (compute_terms(config, tmp_path, monkeypatch, arithmetic) for arithmetic in PERTURBED)
        golden = _load_golden()
        golden["configs"][key] = golden_entry(reference, [actual, *others])
        _write_golden(golden)
        pytest.skip(f"golden values of {key} rewritten in {GOLDEN_FILE.relative_to(ROOT)}")
    found = mismatches(actual, _stored(key))
    hint = f"if this change is intended, regenerate with `{REGENERATE_HINT}` and review the diff."
    assert not found, f"{key}: loss values differ from {GOLDEN_FILE.name}:\n  " + "\n  ".join([*found, hint])


def test_golden_tolerances_stay_sharp():
    """No stored tolerance is so wide that a 0.2 % change of a term would pass (terms within ATOL of 0 aside)."""
    wide = [
        f"{key} epoch {epoch} {term}: tol {entry['tol']:.3g} for value {entry['value']:.8g}"
        for key, stored in _load_golden()["configs"].items()
        for epoch, terms in stored["epochs"].items()
        for term, entry in terms.items()
        if entry["tol"] > max(MAX_RTOL * abs(entry["value"]), ATOL)
    ]
    assert not wide, (
        "terms whose fp32 rounding is too large for a golden comparison (change the fixed inputs so the term is "
        "better conditioned):\n  " + "\n  ".join(wide)
    )


def _scale(loss: str, setting: str, factor: float):
    """A config edit: multiply ``init_args[setting]`` of the loss keyed ``loss`` by ``factor``."""

    def edit(cfg: dict) -> None:
        cfg["model"]["losses"][loss]["init_args"][setting] *= factor

    return edit


@pytest.mark.parametrize(
    ("key", "loss", "setting"),
    [
        # KD's weight, not its temperature: the T² factor leaves kd/kl nearly flat in T (1 % of T moves it by 2e-4).
        ("fashion_mnist/kd", "kd", "weight"),
        ("fashion_mnist/dkd", "dkd", "beta"),
        ("cifar100/wkd_l/wrn_40_2_ShuffleV1", "wkd_l", "temperature"),
        ("fashion_mnist/wkd_l", "wkd_l", "weight"),
        ("fashion_mnist/wkd_f", "wkd_f", "weight"),
    ],
)
def test_golden_comparison_catches_small_config_changes(
    key: str, loss: str, setting: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A 1 % change of one loss setting fails the comparison that the unchanged config passes."""
    if REGENERATE:
        pytest.skip("the golden values are being rewritten")
    config, stored = CONFIG_DIR / f"{key}.yaml", _stored(key)
    (tmp_path / "as-shipped").mkdir()
    (tmp_path / "changed").mkdir()
    assert not mismatches(compute_terms(config, tmp_path / "as-shipped", monkeypatch), stored)
    changed = compute_terms(config, tmp_path / "changed", monkeypatch, edit=_scale(loss, setting, 1.01))
    assert mismatches(changed, stored), f"{key}: {loss}.{setting} × 1.01 left every term within its tolerance"


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
