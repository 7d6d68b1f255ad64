"""Reading network weights from checkpoint files, and explaining why a state dict does not fit a model."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import Tensor


def read_state_dict(path: str | os.PathLike, *, what: str = "teacher weights") -> dict[str, Tensor]:
    """Read a network's state dict from any of the usual checkpoint formats.

    Accepted: a Lightning checkpoint of this project (the trained network is the module's ``student``), a
    ``{"model": state_dict}`` or ``{"state_dict": state_dict}`` dict (RepDistiller's ``cifar_teachers.tar``), or a
    plain state dict (torchvision's released weights). ``DataParallel``'s ``module.`` prefix is removed.

    Args:
        path: the file.
        what: what the file holds, for the messages (``"teacher weights"``, ``"backbone weights"``).

    Raises:
        FileNotFoundError: the file does not exist (the message says how to make one).
        ValueError: the file is not a checkpoint or holds no tensors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        how = (
            "Train a teacher first (e.g. `wkd fit -c configs/fashion_mnist/teacher.yaml` writes "
            "runs/fashion_mnist/teacher/checkpoints/best.ckpt) or point `--model.teacher_weights` at"
            if what == "teacher weights"
            else "Point it at"
        )
        raise FileNotFoundError(
            f"{what} file {path!r} does not exist. {how} a Lightning checkpoint, a {{'model': state_dict}} file or a "
            "plain state dict."
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated / foreign / pickled-object files
        raise ValueError(
            f"could not read {what} from {path!r} ({type(error).__name__}: {str(error)[:300]}). "
            "The file must be a torch checkpoint loadable with weights_only=True."
        ) from error
    is_lightning = isinstance(payload, Mapping) and "pytorch-lightning_version" in payload
    for key in ("state_dict", "model"):
        if isinstance(payload, Mapping) and isinstance(payload.get(key), Mapping):
            payload = payload[key]
            break
    if not isinstance(payload, Mapping) or not any(isinstance(v, Tensor) for v in payload.values()):
        raise ValueError(f"{path!r} holds no state dict of tensors (found {type(payload).__name__}).")
    state = {k: v for k, v in payload.items() if isinstance(v, Tensor)}
    if is_lightning:  # a DistillationModule checkpoint: the trained network is its student
        state = _strip_prefix({k: v for k, v in state.items() if k.startswith("student.")}, "student.")
    if all(k.startswith("module.") for k in state):
        state = _strip_prefix(state, "module.")
    return state


def _strip_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items()}


def describe_mismatch(expected: Mapping[str, Tensor], given: Mapping[str, Tensor], shown: int = 5) -> str | None:
    """``None`` when ``given`` fits ``expected`` key for key and shape for shape, else the first mismatches."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    wrong_shape = [
        f"{k}: file {tuple(given[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and given[k].shape != v.shape
    ]
    parts = [
        f"{label} ({len(items)}): {', '.join(items[:shown])}{', ...' if len(items) > shown else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong_shape))
        if items
    ]
    return "; ".join(parts) or None


def check_checkpoint_fits(expected: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> None:
    """Raise unless a checkpoint's state dict ``given`` fits the module's ``expected`` one key for key and shape for
    shape (a resume with another student or other losses would otherwise fail deep inside PyTorch, or not at all).

    Raises:
        RuntimeError: listing the first mismatches.
    """
    problem = describe_mismatch(expected, given)
    if problem:
        raise RuntimeError(
            f"checkpoint does not fit this model: {problem}. Was it written by a run with another student or other "
            "losses?"
        )
