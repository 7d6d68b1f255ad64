"""What ``wkd predict`` writes: the student's top-k classes and probabilities for every sample, in one CSV file.

``wkd predict -c CONFIG --ckpt_path RUN/checkpoints/best.ckpt`` reads the data module's ``predict_dataloader`` (the
test split, in order, for the project's data modules) and writes ``predictions.csv`` into its evaluation folder
(``RUN/predict/<time stamp>/``, :mod:`wkd_lightning.run.rundirs`), one row per sample in dataset order::

    index,label,label_name,top1,top1_name,top1_prob,...,top5,top5_name,top5_prob
    0,9,Ankle boot,9,Ankle boot,0.8123,7,Sneaker,0.0912,...

``index`` is the sample's position in the predicted dataset, ``label`` its label when the batches carry one, the
``*_name`` columns appear when the data module has ``class_names``; the probabilities are the softmax of the
student's logits (the module's ``predict_step``). Under DDP each rank predicts its own share (evaluation shards are
exact, never padded: :class:`~wkd_lightning.data.sampling.EpochSampler`); rank 0 gathers the rows and writes the
file alone, so no sample is lost or written twice.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence

import lightning as L
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

from wkd_lightning.run.distributed import say
from wkd_lightning.run.files import write_text_atomically

PREDICTIONS_FILE = "predictions.csv"


class PredictionWriter(BasePredictionWriter):
    """Write the top-``top_k`` predictions of ``wkd predict`` to ``<output_dir>/<filename>`` (see the module
    docstring).

    Args:
        top_k: classes per sample (at most the number of classes).
        filename: the file's name.
        output_dir: its folder; default: the trainer's ``default_root_dir`` (the evaluation folder of the run).
    """

    def __init__(self, top_k: int = 5, filename: str = PREDICTIONS_FILE, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        if top_k < 1:
            raise ValueError(f"predictions.top_k must be >= 1, got {top_k}.")
        if not filename or os.sep in filename:
            raise ValueError(f"predictions.filename must be a file name without folders, got {filename!r}.")
        self.top_k, self.filename, self.output_dir = top_k, filename, output_dir
        self._rows: list[tuple] = []

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows = []

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Tensor,
        batch_indices: Sequence[int] | None,
        batch,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if not isinstance(prediction, Tensor) or prediction.ndim != 2:
            raise ValueError(
                f"the predictions writer needs predict_step to return a B×C tensor of class probabilities, got "
                f"{type(prediction).__name__} {tuple(getattr(prediction, 'shape', ()))}."
            )
        if batch_indices is None or len(batch_indices) != len(prediction):
            raise ValueError(
                "the predictions writer cannot tell which samples a batch holds (the predict loader has no batch "
                "sampler Lightning can follow); use a map-style dataset with the data module's predict_dataloader."
            )
        k = min(self.top_k, prediction.shape[1])
        probs, classes = prediction.detach().float().topk(k, dim=1)
        labels = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
        labels = labels.tolist() if isinstance(labels, Tensor) and labels.ndim == 1 else [None] * len(prediction)
        for index, label, c, p in zip(batch_indices, labels, classes.tolist(), probs.tolist()):
            self._rows.append((int(index), label, c, p))

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows = self._rows
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            shares = [None] * trainer.world_size if trainer.is_global_zero else None
            dist.gather_object(rows, shares, dst=0)
            rows = [row for share in shares or [] for row in share]
        self._rows = []
        if not trainer.is_global_zero:
            return
        rows.sort(key=lambda row: row[0])
        indices = [row[0] for row in rows]
        if len(set(indices)) != len(indices):
            raise RuntimeError("the predictions of some samples came twice (a padded distributed sampler?).")
        names = class_names(trainer)
        path = os.path.join(self.output_dir or trainer.default_root_dir, self.filename)
        write_text_atomically(path, to_csv(rows, names))
        k = len(rows[0][2]) if rows else self.top_k
        say(f"wkd predict: wrote the top-{k} predictions of {len(rows)} samples to {path}")


def class_names(trainer: L.Trainer) -> list[str] | None:
    """The data module's ``class_names``, when it has them."""
    names = getattr(getattr(trainer, "datamodule", None), "class_names", None)
    return [str(name) for name in names] if names else None


def to_csv(rows: Sequence[tuple], names: Sequence[str] | None) -> str:
    """The CSV text of ``(index, label, classes, probabilities)`` rows."""
    k = max((len(row[2]) for row in rows), default=0)
    with_labels = any(row[1] is not None for row in rows)

    def name(c: int | None) -> str:
        return names[c] if names is not None and c is not None and 0 <= c < len(names) else ""

    header = ["index", *(["label"] + (["label_name"] if names else []) if with_labels else [])]
    for i in range(1, k + 1):
        header += [f"top{i}", *([f"top{i}_name"] if names else []), f"top{i}_prob"]
    lines = [header]
    for index, label, classes, probs in rows:
        line = [index, *([label] + ([name(label)] if names else []) if with_labels else [])]
        for c, p in zip(classes, probs):
            line += [c, *([name(c)] if names else []), f"{p:.6f}"]
        lines.append(line)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(lines)
    return buffer.getvalue()
