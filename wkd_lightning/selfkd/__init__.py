"""Self-KD without a separate pretrained teacher (SPEC §7).

* Online (one run, no pretrained model): :class:`EMATeacher` (an EMA copy of the student) and
  :class:`PreviousEpochTeacher` (the student's predictions from the previous epoch), passed to
  ``DistillationModule(online_teacher=...)``; see :mod:`wkd_lightning.selfkd.online` for the contract.
* Born-Again generations: the ``wkd-ban`` command (:mod:`wkd_lightning.commands.ban`, above this package), where
  generation k is distilled from generation k−1's checkpoint.
"""

from wkd_lightning.selfkd.ema import EMATeacher
from wkd_lightning.selfkd.online import OnlineTeacher
from wkd_lightning.selfkd.previous_epoch import PreviousEpochTeacher

__all__ = ["EMATeacher", "OnlineTeacher", "PreviousEpochTeacher"]
