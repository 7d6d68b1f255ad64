"""The student's own predictions from the previous epoch as soft targets (progressive self-KD)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from wkd_lightning.selfkd.online import OnlineTeacher

RETURN_INDEX_HINT = "the data module must return sample indices: set --data.return_index true"


class PreviousEpochTeacher(OnlineTeacher):
    """Teacher logits of a sample = the student's logits for that same sample the last time it was trained on.

    A bank of ``N×C`` fp32 logits (``N`` training samples) and an ``N``-long "seen" mask are kept as buffers; each
    training step reads the rows of its samples, then overwrites them with the student's current (detached) logits.
    The batches must carry each sample's index in the training set: ``(x, y, index)``.

    * **First epoch**: no sample has a stored prediction, so there is no distillation term (the step is CE only). In
      later epochs the distillation terms are averaged over the samples of the batch that have one (all of them when
      every epoch visits the whole training set).
    * **Checkpoints**: the bank is saved (``online_teacher.logits``, ``online_teacher.seen``; ``N×C`` floats, e.g.
      2.4 MB for 60k×10, 5 GB for ImageNet's 1.28M×1000) so that a resumed run distils from exactly the same targets.
    * The bank is sized from the training set at the start of fit (or from a checkpoint). A training set of another
      length is an error, as is training on several processes (each would see only its own shard's samples).
    * With ``refresh_cost``, the WKD-L cost is rebuilt at every epoch start from the student's classifier as it is
      then, i.e. as it was at the end of the previous epoch: the same network that produced the stored logits.

    Args:
        refresh_cost: see :class:`~wkd_lightning.selfkd.online.OnlineTeacher`.
        classifier: see :class:`~wkd_lightning.selfkd.online.OnlineTeacher`.
    """

    requires_index = True

    logits: Tensor | None
    seen: Tensor | None

    def __init__(self, refresh_cost: bool = True, classifier: str | None = None) -> None:
        super().__init__(refresh_cost, classifier)
        self.register_buffer("logits", None)
        self.register_buffer("seen", None)

    def prepare_state(self, state: Mapping[str, Tensor], prefix: str) -> None:
        saved = state.get(prefix + "logits")
        if saved is not None and (self.logits is None or self.logits.shape != saved.shape):
            self._allocate(saved.shape[0], saved.shape[1], saved.device)

    def start(self, *, num_samples: int | None, num_classes: int, world_size: int, device: torch.device) -> None:
        if world_size > 1:
            raise ValueError(
                f"PreviousEpochTeacher keeps every sample's logits in one process, but training runs on {world_size} "
                "processes (each sees only its shard). Train on one device, or use EMATeacher."
            )
        if num_samples is None:
            raise ValueError(
                "PreviousEpochTeacher needs the length of the training set (a DataLoader over a sized dataset) to "
                "size its per-sample logit bank."
            )
        if self.logits is None:
            self._allocate(num_samples, num_classes, device)
        elif self.logits.shape != (num_samples, num_classes):
            raise ValueError(
                f"PreviousEpochTeacher's logit bank was built for {self.logits.shape[0]} samples × "
                f"{self.logits.shape[1]} classes, but the training set now has {num_samples} samples × {num_classes} "
                "classes. Resume only with the same training set (same train_size/val_size/seed), or start a new run."
            )

    def targets(self, x: Tensor, index: Tensor | None) -> tuple[Tensor, Tensor]:
        index = self._check_index(index)
        return self.logits[index], self.seen[index]

    @torch.no_grad()
    def observe(self, index: Tensor | None, student_logits: Tensor) -> None:
        index = self._check_index(index)
        self.logits[index] = student_logits.detach().to(self.logits.dtype)
        self.seen[index] = True

    def _allocate(self, num_samples: int, num_classes: int, device: torch.device) -> None:
        self.logits = torch.zeros(num_samples, num_classes, device=device)
        self.seen = torch.zeros(num_samples, dtype=torch.bool, device=device)

    def _check_index(self, index: Tensor | None) -> Tensor:
        if index is None:
            raise ValueError(
                f"PreviousEpochTeacher needs each sample's index in the training set, but the batches are (x, y) "
                f"pairs: {RETURN_INDEX_HINT} (batches (x, y, index))."
            )
        if self.logits is None:
            raise RuntimeError("PreviousEpochTeacher has no logit bank yet: it is sized at the start of fit.")
        index = index.to(device=self.logits.device, dtype=torch.long)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.logits.shape[0]):
            raise ValueError(
                f"sample indices in [{int(index.min())}, {int(index.max())}] fall outside the training set of "
                f"{self.logits.shape[0]} samples: the batch's third item must be the index of each sample in it."
            )
        return index

    def extra_repr(self) -> str:
        size = "unsized" if self.logits is None else f"{self.logits.shape[0]}×{self.logits.shape[1]}"
        return f"bank={size}, refresh_cost={self.refresh_cost}, classifier={self.classifier!r}"
