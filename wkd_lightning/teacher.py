"""The one place that decides how a teacher is loaded and kept frozen.

Rules (tested): the teacher is in eval mode at all times, even after Lightning switches the surrounding module to
train mode; it never requires grad and never enters the optimizer; it runs under ``torch.no_grad``; its weights come
from a file that is read once with ``weights_only=True`` and are not written into the student's checkpoints.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from wkd_lightning.checkpoints import describe_mismatch, read_state_dict


def load_weights(model: nn.Module, path: str | os.PathLike, *, owner: str = "teacher") -> nn.Module:
    """Load the weights in ``path`` into ``model`` with strict key and shape checking.

    Raises:
        ValueError: the keys or shapes differ; the message lists the first mismatches so a wrong architecture is
            easy to spot.
    """
    state = read_state_dict(path)
    problem = describe_mismatch(model.state_dict(), state)
    if problem:
        raise ValueError(
            f"{owner} weights in {os.fspath(path)!r} do not fit {type(model).__name__}: {problem}. "
            f"Is the {owner} architecture in the config the one these weights were trained with?"
        )
    model.load_state_dict(state)
    return model


class FrozenTeacher(nn.Module):
    """A teacher network that stays frozen: eval mode always, no grad, no checkpoint entries.

    Args:
        model: the teacher network.
        weights: optional file to load into ``model`` first (see :func:`read_state_dict` for the formats).
    """

    def __init__(self, model: nn.Module, weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        if weights is not None:
            load_weights(model, weights)
        self.model = model
        self.model.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Ignore ``mode``: a teacher's BatchNorm statistics and dropout must never change."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)
