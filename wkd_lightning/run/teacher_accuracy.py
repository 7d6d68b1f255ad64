"""The pretrained teacher's own validation accuracy: measured once per teacher file and validation set, then cached.

A distillation run is read against its teacher: a student at 76 % means something else under a 79 % teacher than
under a 70 % one, and a teacher that scores at chance is a wrong weights file. So at the start of training
:class:`TeacherAccuracy` logs ``teacher/val_top1`` and ``teacher/val_top5`` (top-5 when there are more than 5 classes)
in the first epoch's row (a resumed fit prints them but does not log them again) and prints them once, e.g.
``teacher SmallResNet: val top-1 91.20 %, top-5 99.80 % (10000 images; measured now, cached in …)``.

**Cached per teacher file.** The value depends only on the teacher's weights and on the validation data, so it is kept
in a small JSON file beside the weights, ``<teacher file>.val_accuracy.json``, keyed by the weights' SHA-256 (the
fingerprint every checkpoint stores, :mod:`wkd_lightning.run.fingerprints`) and by a description of the validation data
(the data module's class and settings; the batch limit, batch size and process count when a limit is set). Beside the
weights rather than in the run directory: every student distilled from that teacher, and every resume, reads the same
file and measures nothing. Where the teacher's folder cannot be written (a read-only model store), the file goes to
the run directory instead, which still spares a resume. It is written atomically (:mod:`wkd_lightning.run.files`); a
teacher file replaced in place has another SHA-256, and its old entries are dropped.

**DDP.** Rank 0 reads the cache and broadcasts what it found, so every rank takes the same branch (no collective
mismatch). To measure, each rank runs the teacher on its own shard of the validation loader (split exactly, without
padding duplicates: :class:`~wkd_lightning.data.sampling.EpochSampler`) and the counts are summed over the ranks;
rank 0 writes the cache.

Nothing happens without a pretrained teacher (teacher-free runs, online self-KD teachers), without a data module with
a validation loader, or with ``limit_val_batches`` 0. A ``fast_dev_run`` measures its one batch but caches nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from wkd_lightning.run.files import write_text_atomically

#: Appended to the teacher weights' file name for the cache beside it.
CACHE_SUFFIX = ".val_accuracy.json"
#: The cache's name in the run directory, where the teacher's folder cannot be written.
RUN_DIR_CACHE = "teacher_val_accuracy.json"
#: Data module settings that do not change which validation images are seen, or how they look.
_TRAINING_ONLY = frozenset(
    {"num_workers", "pin_memory", "augment", "augment_on_device", "return_index", "train_size", "channels_last"}
)


class TeacherAccuracy(L.Callback):
    """Log (``teacher/val_top1``, ``teacher/val_top5``) and print the frozen teacher's validation accuracy at the
    start of training, measured once per teacher file and validation set (see the module doc)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        teacher = getattr(pl_module, "teacher", None)
        datamodule = getattr(trainer, "datamodule", None)
        if teacher is None or datamodule is None or not trainer.limit_val_batches:
            return
        fingerprint = getattr(pl_module, "input_fingerprints", {}).get("teacher_weights")
        key = data_description(datamodule, trainer)
        caches = cache_files(fingerprint["path"], trainer.default_root_dir) if fingerprint else []
        found = None
        if trainer.is_global_zero:
            found = next((hit for path in caches if (hit := read_cache(path, fingerprint["sha256"], key))), None)
        found = trainer.strategy.broadcast(found, src=0)
        if found is not None:
            how = f"from the cache {found.pop('cache')}"
        else:
            found = measure(trainer, pl_module, datamodule)
            if found is None:  # an empty validation set: nothing to report
                return
            how = "measured now"
            if trainer.is_global_zero and caches and not trainer.fast_dev_run:
                written = write_cache(caches, fingerprint, key, found)
                how += f", cached in {written}" if written else ", not cached (no writable folder)"
        for name in ("val_top1", "val_top5"):
            if name in found and trainer.current_epoch == 0:  # a resumed fit's log has it in its first epoch's row
                pl_module.log(f"teacher/{name}", float(found[name]), on_step=False, on_epoch=True, sync_dist=True)
        top5 = f", top-5 {100 * found['val_top5']:.2f} %" if "val_top5" in found else ""
        rank_zero_info(
            f"teacher {type(teacher.model).__name__}: val top-1 {100 * found['val_top1']:.2f} %{top5} "
            f"({found['samples']} images; {how})"
        )


def data_description(datamodule: L.LightningDataModule, trainer: L.Trainer) -> str:
    """What identifies the validation images a measurement saw: the data module's class and settings, and the batch
    limit (with the batch size and the process count, which then decide the images too)."""
    hparams = dict(getattr(datamodule, "hparams", {}) or {})
    settings = {k: v for k, v in hparams.items() if k not in _TRAINING_ONLY and not k.startswith("_")}
    limit = trainer.limit_val_batches
    description = {"data": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}", "settings": settings}
    if limit != 1.0:
        description.update(limit_val_batches=limit, world_size=trainer.world_size)
    else:
        description["settings"].pop("batch_size", None)
    return json.dumps(description, sort_keys=True, default=str)


def cache_files(teacher_weights: str, run_dir: str | None) -> list[Path]:
    """Where the cache may be, in order: beside the teacher's weights, then in the run directory."""
    return [Path(teacher_weights + CACHE_SUFFIX), Path(run_dir or os.getcwd()) / RUN_DIR_CACHE]


def read_cache(path: Path, sha256: str, key: str) -> dict | None:
    """The cached measurement for these weights and this data (with ``"cache"``: the file), or ``None``."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):  # missing, unreadable or damaged: measured again, and rewritten
        return None
    if not isinstance(content, dict) or content.get("sha256") != sha256:
        return None
    entry = (content.get("measurements") or {}).get(key)
    return {**entry, "cache": str(path)} if isinstance(entry, dict) and "val_top1" in entry else None


def write_cache(paths: list[Path], fingerprint: dict, key: str, result: dict) -> Path | None:
    """Add ``result`` under ``key`` to the first cache file that can be written (atomically); its path, or ``None``."""
    for path in paths:
        try:
            content = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            content = {}
        if not isinstance(content, dict) or content.get("sha256") != fingerprint["sha256"]:
            content = {"teacher_weights": fingerprint["path"], "sha256": fingerprint["sha256"], "measurements": {}}
        content.setdefault("measurements", {})[key] = result
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomically(path, json.dumps(content, indent=1, sort_keys=True) + "\n")
        except OSError as error:
            rank_zero_warn(f"could not write the teacher accuracy cache {path} ({error}); trying the next place.")
            continue
        return path
    return None


@torch.no_grad()
def measure(trainer: L.Trainer, pl_module: L.LightningModule, datamodule: L.LightningDataModule) -> dict | None:
    """Top-1 (and top-5) of ``pl_module.teacher`` on the validation loader, each rank on its shard, summed over ranks.

    The teacher runs eagerly (not a compiled graph traced for training batches) under the run's precision; batches
    go through the same device transfer hooks as validation batches. ``None`` for an empty validation set.
    """
    loader = datamodule.val_dataloader()
    limit = trainer.limit_val_batches
    batches = min(len(loader), limit) if isinstance(limit, int) else int(len(loader) * limit)
    num_classes = pl_module.num_classes
    top_k = min(5, num_classes)
    counts = torch.zeros(3, dtype=torch.float64, device=pl_module.device)  # top-1 hits, top-5 hits, samples
    with torch.compiler.set_stance("force_eager"), trainer.precision_plugin.forward_context():
        for i, batch in enumerate(loader):
            if i >= batches:
                break
            x, target = trainer.strategy.batch_to_device(batch)[:2]
            logits = pl_module.teacher(x).float()
            hits = logits.topk(top_k, dim=1).indices == target.view(-1, 1)
            counts[0] += hits[:, 0].sum()
            counts[1] += hits.any(dim=1).sum()
            counts[2] += len(target)
    hooks = getattr(pl_module, "teacher_hooks", None)
    if hooks is not None:
        hooks.collect()  # drop the features the measurement captured
    top1, top5, samples = trainer.strategy.reduce(counts, reduce_op="sum").tolist()
    if not samples:
        return None
    result = {"val_top1": top1 / samples, "samples": int(samples)}
    if num_classes > 5:
        result["val_top5"] = top5 / samples
    return result
