"""Reading network weights from checkpoint files, and explaining why a file or a state dict does not fit.

Before ``torch.load`` sees a file, :func:`check_checkpoint_file` recognises the files users actually end up with
instead of a checkpoint, each with its own message: an empty file, an HTML page saved by a failed download, an
unextracted tar archive (RepDistiller's ``cifar_teachers.tar``) and a zip archive whose CRC check fails (bytes
damaged in place: without this check such a file loads silently with wrong weights). After it, a file that
``weights_only=True`` refuses is explained by what it pickles (e.g. RepDistiller's ``*_last.pth`` files, which hold
the run's ``argparse.Namespace``).
"""

from __future__ import annotations

import os
import re
import tarfile
import zipfile
from collections.abc import Mapping

import torch
from torch import Tensor

#: Members of PyTorch's legacy (pre-1.6) tar checkpoint format, which ``torch.load`` still reads.
_LEGACY_TORCH_TAR = {"sys_info", "pickle", "storages", "tensors"}


def check_checkpoint_file(path: str | os.PathLike, what: str = "teacher weights") -> None:
    """Refuse a file that cannot be a usable torch checkpoint, saying what it is and what to do.

    Args:
        path: an existing file.
        what: what the file should hold, for the messages (``"teacher weights"``, ``"WKD-L cost"``).

    Raises:
        ValueError: the file is empty, an HTML page, a tar archive of checkpoints, or a zip archive that fails its
            CRC check (corrupted in place).
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size == 0:
        raise ValueError(
            f"{what} file {path!r} is empty (0 bytes): an interrupted download or copy. Fetch or copy it again."
        )
    with open(path, "rb") as f:
        head = f.read(1024).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")) or b"<html" in head[:256]:
        raise ValueError(
            f"{what} file {path!r} is an HTML page ({size} bytes), not a checkpoint: the download saved a web page "
            "(an error, login or confirmation page of the file host) instead of the file. Download the file itself "
            "again (for Google Drive, use its direct-download link) and check its size."
        )
    # Tar first: a tar of checkpoints also passes zipfile.is_zipfile (which finds an inner file's zip record).
    if tarfile.is_tarfile(path):
        with tarfile.open(path) as archive:
            names = archive.getnames()
        if set(names) >= _LEGACY_TORCH_TAR:
            return  # PyTorch's own legacy format: torch.load reads it
        checkpoints = [n for n in names if n.endswith((".pth", ".pt", ".ckpt", ".tar"))]
        shown = ", ".join(checkpoints[:3]) + (", ..." if len(checkpoints) > 3 else "")
        raise ValueError(
            f"{what} file {path!r} is a tar archive of {len(names)} files, not a checkpoint (RepDistiller's "
            f"cifar_teachers.tar, unextracted?){' holding ' + shown if shown else ''}. Extract it first "
            f"(`tar -xf {path} -C weights/`) and point at one checkpoint inside, e.g. "
            "weights/cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth."
        )
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
        except (zipfile.BadZipFile, OSError, RuntimeError, ValueError) as error:
            damaged = f"the archive itself ({type(error).__name__}: {error})"
        if damaged is not None:
            raise ValueError(
                f"{what} file {path!r} is damaged: {damaged} fails the zip archive's CRC check, so some of its bytes "
                "changed after it was written (a broken copy or disk). Do not use it: fetch or copy the file again."
            )


def _explain_load_error(path: str, what: str, error: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in words that say what to do (not torch's generic advice)."""
    text = str(error)
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if refused and refused.group(1) == "argparse.Namespace":
        return (
            f"{what} file {path!r} also pickles an argparse.Namespace (a run's training options, as RepDistiller's "
            "`<model>_last.pth` files store under 'opt'), which weights_only=True does not unpickle. Use a file of the "
            "same run that holds only tensors (the `ckpt_epoch_<N>.pth` files of cifar_teachers.tar), or keep only the "
            'weights of this one, once: python -c "import argparse, torch; '
            "torch.serialization.add_safe_globals([argparse.Namespace]); "
            f"torch.save({{'model': torch.load('{path}', weights_only=True)['model']}}, '{path}.weights.pth')\" and "
            f"point at {path}.weights.pth."
        )
    if refused:
        return (
            f"{what} file {path!r} pickles a Python object of type {refused.group(1)}, not only tensors, and "
            "weights_only=True refuses to unpickle it (it could run code). Save the network's state dict alone "
            "(torch.save(model.state_dict(), path)) and point at that file."
        )
    reason = (text.strip().splitlines() or [""])[0][:300]
    return (
        f"could not read {what} from {path!r} ({type(error).__name__}: {reason}). The file must be a torch "
        "checkpoint of tensors (a Lightning checkpoint, a {'model': state_dict} file or a plain state dict): is it "
        "complete, and the file you meant?"
    )


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
        ValueError: the file is not a checkpoint or holds no tensors (see :func:`check_checkpoint_file`).
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
    check_checkpoint_file(path, what)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated / foreign / pickled-object files
        raise ValueError(_explain_load_error(path, what, error)) from error
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


def fill_missing_bn_counters(expected: Mapping[str, Tensor], state: dict[str, Tensor]) -> list[str]:
    """Add the BatchNorm ``num_batches_tracked`` counters that ``state`` lacks but the model has, in place.

    Files saved before PyTorch 0.4.1 (e.g. torchvision's 2017 ``resnet34-333f7ec4.pth``, which the WKD release and
    mdistiller download) have no such counter. Only a counter whose BatchNorm's ``running_mean`` is in the file is
    filled, with 0 (what PyTorch itself assumes for such files); every other key is left for the strict check.

    Returns:
        The keys that were filled.
    """
    suffix = "num_batches_tracked"
    filled = [
        key
        for key in expected
        if key.endswith("." + suffix) and key not in state and key[: -len(suffix)] + "running_mean" in state
    ]
    for key in filled:
        state[key] = torch.zeros((), dtype=torch.long)
    return filled


def check_run_checkpoint(path: str | os.PathLike) -> None:
    """Refuse a checkpoint of a run (``--ckpt_path``) that cannot be read, naming the file and the other ones.

    The project's checkpoints are zip archives (``torch.save``'s format); a file without a zip directory is a save
    that was cut short (killed while writing, disk full), which ``torch.load`` reports only as ``OSError: [Errno 22]``.

    Raises:
        ValueError: the file is empty, damaged or truncated (see :func:`check_checkpoint_file`).
    """
    path = os.fspath(path)
    check_checkpoint_file(path, "checkpoint")
    if not zipfile.is_zipfile(path) and not tarfile.is_tarfile(path):
        folder = os.path.dirname(path) or "."
        others = sorted(n for n in os.listdir(folder) if n.endswith(".ckpt") and n != os.path.basename(path))
        raise ValueError(
            f"checkpoint {path!r} is truncated ({os.path.getsize(path)} bytes, its zip directory is missing): a save "
            f"that was cut short (killed while writing, disk full). Resume from another file with --ckpt_path "
            f"{os.path.join(folder, others[0]) if others else 'PATH'}"
            f"{' (this folder also holds ' + ', '.join(others) + ')' if others else ''}, or move it away and start "
            "over with --new_version true."
        )
