"""Per-class teacher features over a data set, for the IR cost matrices (SPEC §3).

Rows follow the release: a feature map ``B×C×H×W`` gives every spatial position of every image a row (image-major,
then positions in row-major ``H, W`` order: the first ``H·W`` rows of a class are its first image), vectors ``B×D``
give one row per image, ``"logits"`` means the model's output. Rows keep the order of the data loader, which should
be sequential so that the result is reproducible (``cka_paired`` depends on it).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from tqdm import tqdm

from wkd_lightning.hooks import FeatureHooks
from wkd_lightning.teacher import FrozenTeacher

LOGITS = "logits"


def feature_rows(output: Tensor) -> tuple[Tensor, int]:
    """Reshape a layer output to rows: ``(B·P) × C`` with ``P`` positions per image, and ``P``.

    ``B×D`` → ``B×D`` (``P = 1``); ``B×C×H×W`` (or any ``B×C×…``) → every position a row, image-major.
    """
    if output.dim() < 2:
        raise ValueError(f"a feature layer must output B×D vectors or B×C×H×W maps, got shape {tuple(output.shape)}.")
    if output.dim() == 2:
        return output, 1
    flat = output.flatten(2)  # B × C × P
    return flat.transpose(1, 2).reshape(-1, flat.shape[1]), flat.shape[2]


@torch.no_grad()
def extract_class_features(
    model: nn.Module,
    loader: Iterable,
    layer: str = LOGITS,
    *,
    num_classes: int | None = None,
    max_per_class: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> list[Tensor]:
    """Run ``model`` (eval mode, no grad) over ``loader`` and collect the features of ``layer`` per class.

    Args:
        model: the teacher (a plain network or a :class:`~wkd_lightning.teacher.FrozenTeacher`); put in eval mode
            for the pass and restored to its previous mode afterwards.
        loader: yields ``(inputs, labels, ...)`` batches with integer class labels (use a sequential loader).
        layer: ``"logits"`` (the model's output) or the dotted path of a submodule (``layer3``, ``pool``).
        num_classes: C. When given, labels are checked against it, logits must have C columns, and the pass stops
            early once every class holds ``max_per_class`` images. Default: the largest label + 1.
        max_per_class: keep at most this many images per class (the first ones seen); rows = images × positions.
        device: where to run the model (default: where its parameters are). Features come back on the CPU in fp32.
        progress: show a tqdm progress bar.

    Returns:
        One ``n_k × d`` fp32 tensor per class ``k``.

    Raises:
        ValueError: soft or out-of-range labels, a logit width different from ``num_classes``, a class without any
            sample, or an unknown layer path (the message lists the valid ones).
    """
    if max_per_class is not None and max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1 or None, got {max_per_class}.")
    network = model.model if isinstance(model, FrozenTeacher) else model
    if device is not None:
        model.to(device)
    parameter = next(network.parameters(), None)
    run_device = torch.device(device) if device is not None else (parameter.device if parameter is not None else None)
    hooks = None if layer == LOGITS else FeatureHooks(network, [layer], owner="teacher")
    was_training = network.training
    network.eval()
    bank = ClassFeatureBank(num_classes, max_per_class)
    try:
        for batch in progress_bar(loader, layer, progress):
            inputs, labels = batch[0], batch[1]
            labels = torch.as_tensor(labels)
            if labels.dim() != 1 or labels.is_floating_point():
                raise ValueError(
                    f"IR extraction needs integer class labels (shape B), got {labels.dtype} of shape "
                    f"{tuple(labels.shape)}; soft or mixed labels cannot assign features to classes."
                )
            if run_device is not None:
                inputs = inputs.to(run_device)
            logits = network(inputs)
            wrong_width = isinstance(logits, Tensor) and logits.dim() == 2 and logits.shape[1] != num_classes
            if num_classes is not None and wrong_width:
                raise ValueError(
                    f"the teacher outputs {logits.shape[1]} logits but the data has {num_classes} classes: "
                    "build the teacher with the dataset's number of classes (e.g. --teacher.num_classes)."
                )
            bank.add(logits if hooks is None else hooks.collect()[layer], labels)
            if bank.full:
                break
    finally:
        if hooks is not None:
            hooks.remove()
        network.train(was_training)
    return bank.per_class("images")


def progress_bar(loader: Iterable, layer: str, progress: bool) -> Iterable:
    """``loader`` behind a tqdm bar (total known when the loader has a length)."""
    total = len(loader) if hasattr(loader, "__len__") else None
    return tqdm(
        loader, total=total, desc=f"teacher features ({layer})", unit="batch", mininterval=1.0, disable=not progress
    )


class ClassFeatureBank:
    """Collects feature rows per class, keeping at most ``max_per_class`` samples (images, boxes) of each.

    Args:
        num_classes: C, when known: labels are checked against it and :attr:`full` can turn true.
        max_per_class: samples kept per class (the first ones added); ``None``: all.
    """

    def __init__(self, num_classes: int | None, max_per_class: int | None) -> None:
        self.num_classes, self.max_per_class = num_classes, max_per_class
        self.chunks: dict[int, list[Tensor]] = {}
        self.kept: dict[int, int] = {}

    def add(self, output: Tensor, labels: Tensor) -> None:
        """Add one batch: ``output`` of ``N`` samples (``N×D`` vectors or ``N×C×H×W`` maps) and their ``N`` labels."""
        rows, positions = feature_rows(output.float())
        per_sample = rows.reshape(len(labels), positions, -1).cpu()
        labels = labels.cpu().long()
        if labels.numel() and (labels.min() < 0 or (self.num_classes is not None and labels.max() >= self.num_classes)):
            raise ValueError(
                f"label {int(labels.min() if labels.min() < 0 else labels.max())} is out of range for "
                f"{self.num_classes} classes."
            )
        for k in labels.unique().tolist():
            samples = per_sample[labels == k]
            if self.max_per_class is not None:
                samples = samples[: max(0, self.max_per_class - self.kept.get(k, 0))]
            if len(samples):
                self.chunks.setdefault(k, []).append(samples.reshape(-1, samples.shape[-1]).clone())
                self.kept[k] = self.kept.get(k, 0) + len(samples)

    @property
    def full(self) -> bool:
        """Every one of the C classes holds ``max_per_class`` samples (more data would change nothing)."""
        return (
            self.max_per_class is not None
            and self.num_classes is not None
            and len(self.kept) == self.num_classes
            and min(self.kept.values()) >= self.max_per_class
        )

    def per_class(self, samples: str, hint: str = "is the training subset too small?") -> list[Tensor]:
        """One ``n_k × d`` tensor per class; raises if a class has no sample (the message names the ``samples`` and
        ends with the ``hint``)."""
        num_classes = self.num_classes if self.num_classes is not None else (max(self.chunks) + 1 if self.chunks else 0)
        missing = [k for k in range(num_classes) if k not in self.chunks]
        if not self.chunks or missing:
            raise ValueError(
                f"no samples of classes {missing or 'any'} were seen in the data: every class needs training {samples} "
                f"for a cost matrix ({hint})."
            )
        return [torch.cat(self.chunks[k]) for k in range(num_classes)]
