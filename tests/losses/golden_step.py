"""One real training step of a shipped config on fixed inputs, the same on every x86-64 CPU up to float rounding.

The config (with the stand-ins of :mod:`tests.losses.golden_config`) is built through the real ``wkd`` parser
(``make_cli([..., "-c", CONFIG], run=False)``) and one real ``DistillationModule.training_step`` runs per evaluated
epoch; its logged terms (``train/loss/<term>``) are returned.

**Every random number is drawn in float64.** The module (student, teacher stand-in, projectors) is built while the
default dtype is float64, and the inputs are drawn in float64, then everything is rounded to the dtype of the run.
The reason is measured: PyTorch draws fp32 normal samples (``randn``, ``kaiming_normal_``) with a vectorised
Box-Muller under AVX2/AVX-512 and a scalar one otherwise, so the fp32 weights and inputs themselves differ between
CPU kernels (``ATEN_CPU_CAPABILITY=default`` changes them by up to 2e-4 relative), whereas the float64 draws are
bit-identical; rounded to fp32 they give the same fp32 numbers everywhere. What differs between CPUs is then only
the arithmetic of the step, which the tolerance of ``test_golden.py`` is derived from.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn
from torchmetrics import Metric

from tests.losses.golden_config import ConfigEdit, prepare_config
from wkd_lightning.commands.wkd import make_cli

#: Images per step; :data:`LARGE_BATCH` for images of at least :data:`LARGE_PIXELS` pixels (ImageNet's 224×224), where
#: the convolutions of teacher and student dominate the file's time.
BATCH = 8
LARGE_BATCH = 4
LARGE_PIXELS = 224 * 224
INPUT_SEED = 1234
STUDENT_SEED = 0
PROJECTOR_SEED = 7


@dataclass(frozen=True)
class Arithmetic:
    """How the step computes: the same numbers, different rounding.

    Attributes:
        name: how the golden file's ``setup`` names it.
        dtype: the dtype of the module and the inputs (the losses keep their own fp32 arithmetic either way).
        onednn: whether convolutions may use oneDNN (off: PyTorch's own im2col + GEMM kernels).
        reversed_batch: run the batch in reverse order; every batch reduction (BatchNorm statistics, the losses'
            means) then sums in another order, mathematically the same step.
    """

    name: str
    dtype: torch.dtype = torch.float32
    onednn: bool = True
    reversed_batch: bool = False


FP32 = Arithmetic("fp32")
#: The recomputations of the regeneration: the float64 one gives the stored value, and its distances to the fp32 ones
#: (:data:`FP32` included) each term's fp32 rounding error.
PERTURBED = (
    Arithmetic("fp64", dtype=torch.float64),
    Arithmetic("fp32, no oneDNN", onednn=False),
    Arithmetic("fp32, reversed batch", reversed_batch=True),
)


def golden_epochs(max_epochs: int) -> list[int]:
    """The epochs evaluated: the first and ``round(0.8·E)`` (12 of 15: inside the decay of ``CosineDecay(9)``)."""
    return sorted({1, max(1, round(0.8 * max_epochs))})


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Make ``dtype`` the default floating dtype inside the block (new parameters and draws take it)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def batch_size(input_size: tuple[int, ...]) -> int:
    """Images per step for images of shape ``input_size`` (channels, height, width)."""
    return LARGE_BATCH if math.prod(input_size[1:]) >= LARGE_PIXELS else BATCH


def _stray_float64(module: nn.Module) -> list[str]:
    """Tensor attributes of ``module`` that are float64 but neither parameters nor buffers (``.to`` misses them), so
    the fp32 step would compute partly in float64. Metric states are left out: they keep their dtype by design
    (torchmetrics) and take no part in the loss."""
    return [
        f"{prefix or type(module).__name__}.{name}"
        for prefix, sub in module.named_modules()
        if not isinstance(sub, Metric)
        for name, value in vars(sub).items()
        if isinstance(value, torch.Tensor) and value.dtype == torch.float64
    ]


def compute_terms(
    config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    arithmetic: Arithmetic = FP32,
    edit: ConfigEdit | None = None,
) -> dict:
    """Build ``config`` through the CLI and return ``{"max_epochs": E, "epochs": {e: {term: value}}}``."""
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
        with torch.random.fork_rng(devices=[]), default_dtype(torch.float64):
            cfg_path, shape = prepare_config(config, tmp_path, edit)
            torch.manual_seed(STUDENT_SEED)
            cli = make_cli(["-c", str(cfg_path), "--trainer.default_root_dir", str(tmp_path / "run")], run=False)
            module, trainer = cli.model, cli.trainer
            module.num_classes, module.input_size = shape["num_classes"], shape["input_size"]
            torch.manual_seed(PROJECTOR_SEED)
            module.setup("fit")  # metrics and the one-sample probe that builds projectors
            generator = torch.Generator().manual_seed(INPUT_SEED)
            batch = batch_size(shape["input_size"])
            x = torch.randn(batch, *shape["input_size"], generator=generator)
            y = torch.randint(0, shape["num_classes"], (batch,), generator=generator)
        # The same fp32 numbers in every arithmetic: float64 runs compute on the rounded weights and inputs.
        module.float()
        stray = _stray_float64(module)
        assert not stray, f"float64 tensors that `module.float()` does not convert: {stray}"
        module.to(arithmetic.dtype)
        x = x.float().to(arithmetic.dtype)
        if arithmetic.reversed_batch:
            x, y = x.flip(0), y.flip(0)
        module.trainer = trainer  # the real current_epoch / max_epochs path of the step
        logged: list[dict] = []
        monkeypatch.setattr(module, "log_dict", lambda values, *a, **k: logged.append(dict(values)))
        monkeypatch.setattr(module, "log", lambda name, value, *a, **k: logged.append({name: value}))
        max_epochs = int(trainer.max_epochs)
        epochs = {}
        with torch.backends.mkldnn.flags(enabled=arithmetic.onednn):
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
