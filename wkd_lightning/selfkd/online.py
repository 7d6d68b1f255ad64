"""Online teachers: soft targets made from the student itself while it trains (SPEC §7, no pretrained model).

An :class:`OnlineTeacher` is handed to :class:`~wkd_lightning.module.DistillationModule` as ``online_teacher`` instead
of a ``teacher``/``teacher_weights`` pair. It answers the same :class:`~wkd_lightning.teacher.Teacher` interface as a
pretrained teacher (attach, prepare_state, start, refresh_costs, targets, observe, after_optimizer_step), so the
module drives both alike; an online teacher fills in the calls that are no-ops for a pretrained one.

Unlike a pretrained teacher, an online teacher's state (an EMA copy, stored predictions) cannot be rebuilt from any
file, so it is saved in the module's checkpoints under ``online_teacher.`` (the ``teacher.`` prefix stays reserved for
pretrained teachers, which are never saved).

**WKD-L cost.** With ``refresh_cost`` the C×C category cost ``D`` of every loss that has a ``set_cost`` (WKD-L) is
rebuilt at the start of each training epoch as ``D_ij = 1 − cos(w_i, w_j)`` of the rows ``w`` of the teacher's final
linear layer (:func:`~wkd_lightning.ir.methods.classifier_cosine`, the paper's "fc" interrelation). Costs set at run
time are not in checkpoints, so rebuilding them at every epoch start is also what makes a resumed run use the same
cost as an uninterrupted one. Without ``refresh_cost`` the WKD-L plug-in keeps its own ``cost`` (a file or
``uniform``).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from wkd_lightning.ir.methods import classifier_cosine, final_linear
from wkd_lightning.losses.base import DistillationLoss
from wkd_lightning.teacher import Teacher

CLASSIFIER_HINT = "set the online teacher's `classifier` to the path of its final layer, or refresh_cost to false."


class OnlineTeacher(Teacher):
    """Base class of the teachers made from the student during training.

    Args:
        refresh_cost: rebuild the WKD-L cost from the teacher's classifier at every training epoch start (see the
            module docstring); a WKD-L plug-in configured with its own cost file is then an error.
        classifier: dotted path of the final ``nn.Linear`` in the student (``fc``); default: its last ``nn.Linear``.
    """

    slot = "online_teacher"
    #: Whether :meth:`targets` needs each sample's index in the training set (batches ``(x, y, index)``).
    requires_index: bool = False

    def __init__(self, refresh_cost: bool = True, classifier: str | None = None) -> None:
        super().__init__()
        self.refresh_cost = refresh_cost
        self.classifier = classifier

    def attach(self, student: nn.Module, losses: Iterable[DistillationLoss]) -> None:
        """Build the teacher's parts from ``student`` and check that ``losses`` can be served by it.

        Raises:
            ValueError: no loss uses a teacher, a loss reads features (online teachers give logits only), a WKD-L
                plug-in has its own cost file while ``refresh_cost`` is set, or ``student`` has no final linear layer.
        """
        losses = list(losses)
        name = type(self).__name__
        if not any(loss.requires_teacher for loss in losses):
            raise ValueError(f"online_teacher {name} is set but no loss uses a teacher: add KD or WKDLogit.")
        with_features = [loss.name for loss in losses if loss.student_paths or loss.teacher_paths]
        if with_features:
            raise ValueError(
                f"losses {with_features} read intermediate features, but online teacher {name} gives logits only; "
                "use logit losses (KD, WKDLogit) in self-KD."
            )
        if self.refresh_cost:
            own_cost = [
                f"{loss.name}: {_own_cost(loss)}" for loss in losses if _own_cost(loss) not in (None, "uniform")
            ]
            if own_cost:
                raise ValueError(
                    f"online teacher {name} rebuilds the WKD-L cost from its classifier every epoch (refresh_cost), "
                    f"but the WKD-L plug-ins have their own cost ({', '.join(own_cost)}). Remove their `cost` or set "
                    "the online teacher's refresh_cost to false to keep it."
                )
            self._classifier(student)  # fail now, not at the first epoch

    def cost_network(self, student: nn.Module) -> nn.Module:
        """The network whose classifier defines the refreshed WKD-L cost (the teacher's, as of now)."""
        return student

    def _classifier(self, network: nn.Module) -> nn.Linear:
        return final_linear(network, self.classifier, owner="student", hint=CLASSIFIER_HINT)

    def refresh_costs(self, losses: Iterable[DistillationLoss], student: nn.Module) -> None:
        """With ``refresh_cost``: set ``D = classifier_cosine(teacher classifier)`` on every loss with ``set_cost``."""
        if not self.refresh_cost:
            return
        cost = None
        for loss in losses:
            if hasattr(loss, "set_cost"):
                if cost is None:
                    cost = classifier_cosine(self._classifier(self.cost_network(student)))
                loss.set_cost(cost)


def _own_cost(loss: DistillationLoss) -> str | None:
    """Where a cost-holding loss (WKD-L) took its cost from, or ``None`` for losses without one."""
    return getattr(loss, "cost_source", None) if hasattr(loss, "set_cost") else None
