"""Fingerprints of a run's input files (teacher weights, WKD-L cost files), stored in every checkpoint and checked
when a checkpoint is loaded again.

A checkpoint holds the student but not the teacher, nor the category-cost matrix ``D`` of WKD-L: both are read again
from the files the config names. If those files changed in between (a retrained teacher at the same path, a cost
rebuilt by ``wkd-ir`` with another method), a resumed run or an evaluation would silently mix two experiments. So the
module records the SHA-256 of each input file once, when it is built, writes them into every checkpoint under
:data:`FINGERPRINT_KEY`, and on loading a checkpoint (``wkd fit|validate|test --ckpt_path``) compares them with the
files it was built from: a different file is an error, or, with ``allow_changed_inputs=True``, a loud warning. Only
the contents count: the same file under another path is accepted.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterable, Mapping

from lightning.pytorch.utilities import rank_zero_warn

from wkd_lightning.checkpoints import check_checkpoint_file

#: Where a checkpoint keeps the fingerprints of its run's input files.
FINGERPRINT_KEY = "wkd_input_fingerprints"
_CHUNK = 1 << 20


def _sha256_of_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@functools.lru_cache(maxsize=128)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    return _sha256_of_file(path)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, cached per (absolute path, size, modification time)."""
    path = os.path.abspath(os.fspath(path))
    stat = os.stat(path)
    return _cached_sha256(path, stat.st_size, stat.st_mtime_ns)


def input_fingerprints(teacher_weights: str | os.PathLike | None, losses: Iterable) -> dict[str, dict[str, str]]:
    """``{"teacher_weights": {"path", "sha256"}, "losses.<i>.cost": {...}}`` for the input files that exist.

    Args:
        teacher_weights: the teacher's weights file, or ``None``.
        losses: the loss plug-ins; those with a ``cost_source`` naming a file (WKD-L's cost) are fingerprinted, after
            the same file checks as teacher weights (:func:`~wkd_lightning.checkpoints.check_checkpoint_file`: a cost
            file damaged in place is refused here, before the first step).

    Raises:
        ValueError: a cost file is damaged or not a checkpoint.
    """
    files = {}
    if teacher_weights is not None:
        files["teacher_weights"] = os.fspath(teacher_weights)
    for index, loss in enumerate(losses):
        source = getattr(loss, "cost_source", None)
        if isinstance(source, str) and os.path.isfile(source):
            check_checkpoint_file(source, "WKD-L cost")
            files[f"losses.{index}.cost"] = source
    return {name: {"path": path, "sha256": file_sha256(path)} for name, path in files.items()}


def changed_inputs(saved: Mapping[str, Mapping[str, str]], current: Mapping[str, Mapping[str, str]]) -> list[str]:
    """One sentence per input file that both runs have and whose contents differ."""
    changes = []
    for name in sorted(set(saved) & set(current)):
        before, now = saved[name], current[name]
        if before["sha256"] != now["sha256"]:
            changes.append(
                f"{name}: the checkpoint's run read {before['path']!r} (sha256 {before['sha256'][:12]}…), this run "
                f"reads {now['path']!r} (sha256 {now['sha256'][:12]}…)"
            )
    return changes


class InputFingerprints:
    """Mixin for the LightningModules: writes :data:`FINGERPRINT_KEY` into checkpoints and checks it on loading.

    The module calls :meth:`record_input_fingerprints` once in its ``__init__``, after its teacher and losses have
    read their files.
    """

    input_fingerprints: dict[str, dict[str, str]]
    allow_changed_inputs: bool

    def record_input_fingerprints(
        self, teacher_weights: str | os.PathLike | None, losses: Iterable, allow_changed_inputs: bool
    ) -> None:
        """Fingerprint the input files now (once: never per step or per checkpoint)."""
        self.input_fingerprints = input_fingerprints(teacher_weights, losses)
        self.allow_changed_inputs = bool(allow_changed_inputs)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[FINGERPRINT_KEY] = {name: dict(entry) for name, entry in self.input_fingerprints.items()}
        super().on_save_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse (or, with ``allow_changed_inputs``, warn about) a checkpoint whose run read other input files.

        Raises:
            ValueError: naming each changed file, both paths and both hashes, and the way out.
        """
        changes = changed_inputs(checkpoint.get(FINGERPRINT_KEY) or {}, self.input_fingerprints)
        if changes:
            summary = "; ".join(changes)
            if not self.allow_changed_inputs:
                raise ValueError(
                    f"this checkpoint was written by a run with other input files: {summary}. Resuming or evaluating "
                    "it with them would mix two experiments. Point the config at the original files, or pass "
                    "--model.allow_changed_inputs true to load it anyway (with a warning)."
                )
            rank_zero_warn(
                f"allow_changed_inputs=True: loading a checkpoint whose run read other input files: {summary}. "
                "Results after this point do not belong to the checkpoint's experiment."
            )
        super().on_load_checkpoint(checkpoint)
