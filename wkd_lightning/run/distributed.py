"""Multi-process runs: a finite wait for collectives, and errors that say which rank failed and why.

Lightning's DDP/FSDP strategies wait up to ``timeout`` in any collective (all-reduce, broadcast, barrier). When a
rank dies or hangs (an out-of-memory kill, a stopped process, a node that left), the others block there; with a finite
timeout they fail instead, and :func:`explain_collective_failure` turns torch's low-level message (gloo's "Timed out
waiting ... for recv", "Connection reset by peer", NCCL's watchdog) into one that says what happened and what to do.
"""

from __future__ import annotations

import os
from datetime import timedelta
from functools import partial

from lightning.pytorch.strategies import FSDPStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

#: Seconds a rank waits in one collective by default (torch's own default is 30 minutes).
DEFAULT_TIMEOUT_S = 600.0
#: Fragments of the errors torch raises when a peer of a collective is gone or too slow.
PEER_FAILURE_MARKERS = ("timed out", "timeout", "connection reset by peer", "connection closed by peer", "broken pipe")


def say(message: str) -> None:
    """Print ``message`` once: on global rank 0 only (under a launcher, every rank runs the command)."""
    if rank_zero_only.rank == 0:
        print(message, flush=True)


def set_process_group_timeout(strategy: Strategy, seconds: float) -> None:
    """Give a DDP/FSDP ``strategy`` (before its process group exists) a collective timeout of ``seconds``.

    Lightning's DDP and FSDP strategies keep the timeout they pass to ``init_process_group`` in ``_timeout``; a
    strategy without one (single device) is left alone.
    """
    if seconds <= 0:
        raise ValueError(f"--ddp_timeout must be > 0 seconds, got {seconds}.")
    if hasattr(strategy, "_timeout"):
        strategy._timeout = timedelta(seconds=seconds)


def end_process_group() -> None:
    """Destroy the process group of a finished run before the interpreter exits; left to exit, gloo's threads were
    seen to abort a torchrun worker ("terminate called without an active exception") after a successful fit."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def explain_collective_failure(error: BaseException) -> str | None:
    """A user-facing explanation when ``error`` is a collective that lost a peer or timed out, or a start-up
    rendezvous that the other processes never joined; ``None`` for any other error."""
    import torch.distributed as dist

    text = str(error)
    first_line = (text.strip().splitlines() or [""])[0][:300]
    rank = dist.get_rank() if dist.is_initialized() else os.environ.get("RANK", os.environ.get("LOCAL_RANK", "?"))
    if "waiting for clients" in text:
        return (
            f"rank {rank}: the other processes of the job did not join it within the process-group timeout "
            f"({first_line}). Start every node's command (torchrun, srun) within --ddp_timeout seconds of each "
            "other, check that they use the same --master-addr/--master-port, or give a longer --ddp_timeout SECONDS."
        )
    distributed = isinstance(error, dist.DistError) or dist.is_initialized() or "gloo" in text or "NCCL" in text
    if not distributed or not any(marker in text.lower() for marker in PEER_FAILURE_MARKERS):
        return None
    return (
        f"rank {rank} stopped: a collective operation (all-reduce, broadcast or barrier) failed because another rank "
        f"died, hung or is unreachable ({first_line}). Look at the other ranks' output for the first error. A rank "
        "that is only slow (a long evaluation or checkpoint on one rank) needs a longer --ddp_timeout SECONDS. The "
        "run resumes from its last checkpoint, if it has one, with --ckpt_path last."
    )


class TeacherShardedFSDP(FSDPStrategy):
    """FSDP for a teacher too large for one GPU (a ViT-L teacher, say): the frozen teacher is sharded in FSDP units
    of its own, never flattened together with the student's trainable parameters.

    Each block of the teacher with at least ``teacher_min_params`` parameters not already in a smaller unit becomes
    one FSDP unit (all-gathered for its forward, freed after), and the rest of the teacher one more; the student and
    the losses' adapters stay in the root unit (or follow ``auto_wrap_policy`` for them, when given). So the teacher
    holds no optimizer state (it has no trainable parameter, and no flat parameter mixes it with one), and, as with
    every strategy, :class:`~wkd_lightning.DistillationModule` leaves it out of every checkpoint.

    Use it by class path: ``--trainer.strategy wkd_lightning.run.distributed.TeacherShardedFSDP`` (GPUs only; see the
    README's multi-GPU section).

    Args:
        teacher_min_params: parameter count from which a teacher block gets a unit of its own.
        **kwargs: :class:`~lightning.pytorch.strategies.FSDPStrategy` arguments (``use_orig_params`` defaults to
            True, which keeps the module paths the feature hooks read).
    """

    def __init__(self, teacher_min_params: int = 1_000_000, **kwargs) -> None:
        kwargs.setdefault("use_orig_params", True)
        kwargs.setdefault("timeout", timedelta(seconds=DEFAULT_TIMEOUT_S))
        self.student_policy = kwargs.pop("auto_wrap_policy", None)
        super().__init__(**kwargs)
        self.teacher_min_params = teacher_min_params

    def setup(self, trainer) -> None:
        teacher = getattr(self.lightning_module, "teacher", None)
        teacher_modules = {id(m) for m in teacher.modules()} if teacher is not None else set()
        self.kwargs["auto_wrap_policy"] = partial(
            _teacher_units, teacher_modules, id(teacher), self.teacher_min_params, self.student_policy
        )
        super().setup(trainer)


def _teacher_units(
    teacher_modules: set[int],
    teacher_root: int,
    min_params: int,
    student_policy,
    module: nn.Module,
    recurse: bool,
    nonwrapped_numel: int,
) -> bool:
    """FSDP's auto-wrap callable: ``recurse`` asks whether to look inside ``module``, else whether to wrap it."""
    if id(module) in teacher_modules:
        return True if recurse else id(module) == teacher_root or nonwrapped_numel >= min_params
    if student_policy is not None:
        return student_policy(module=module, recurse=recurse, nonwrapped_numel=nonwrapped_numel)
    return recurse
