"""``DistillationModule``: a trainable student, an optional frozen teacher and pluggable distillation losses.

One training step: batch → student (+ hooks) and teacher (+ hooks) → :class:`DistillationContext` → each loss
plug-in → ``CE + Σ weighted terms`` → optimizer. Nothing flows back into the teacher. The teacher is a pretrained
network or, for self-KD without one, an online teacher made from the student (:mod:`wkd_lightning.selfkd`);
:func:`~wkd_lightning.teacher.select_teacher` decides which, and both answer one interface
(:class:`~wkd_lightning.teacher.Teacher`). What every teacher→student module shares (teacher calls, checkpoints
without the teacher, optimizer, weighted sum, loss watch, logging, best metric) is in
:class:`~wkd_lightning.base_module.TeacherStudentModule`.

Example:
    >>> from wkd_lightning import DistillationModule
    >>> from wkd_lightning.losses import KD
    >>> from wkd_lightning.models import mini_resnet8, mini_resnet14
    >>> module = DistillationModule(student=mini_resnet8(), teacher=mini_resnet14(), losses=[KD(temperature=4)])
    >>> from wkd_lightning.selfkd import EMATeacher
    >>> self_kd = DistillationModule(student=mini_resnet8(), online_teacher=EMATeacher(decay=0.99), losses=[KD()])
"""

from __future__ import annotations

import warnings
from itertools import chain
from typing import ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from wkd_lightning.base_module import TeacherStudentModule
from wkd_lightning.evaluation import TopKEvaluation, unpack_batch
from wkd_lightning.hooks import FeatureHooks
from wkd_lightning.losses.base import DistillationContext, DistillationLoss, Terms, loss_plugins
from wkd_lightning.losses.checks import check_labels, check_number
from wkd_lightning.losses.cost_checks import check_costs_fit_data
from wkd_lightning.run.optim import PaperSGD
from wkd_lightning.run.teacher_accuracy import TeacherAccuracy
from wkd_lightning.run.watch import check_input_batch
from wkd_lightning.teacher import Teacher, select_teacher

#: Arguments that are objects (networks, loss plug-ins, optimizer callables): kept out of the hyperparameters of a
#: module built in Python (they would be pickled), stored as their config when LightningCLI builds the module.
INJECTED_ARGUMENTS = ("student", "teacher", "online_teacher", "losses", "optimizer", "lr_scheduler")
#: Checkpoint entry with the class count and input size that set-up resolved (see ``on_save_checkpoint``).
SHAPES_KEY = "wkd_shapes"
# The frozen teacher is in eval mode on purpose; Lightning's generic warning about it would only confuse users.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


class DistillationModule(TopKEvaluation, TeacherStudentModule):
    """Train ``student`` with cross-entropy plus distillation losses from a frozen ``teacher``.

    Args:
        student: the network to train (any ``nn.Module`` mapping a batch of inputs to B×C logits).
        teacher: the teacher network, or ``None`` to train without one (teachers themselves, vanilla baselines).
            It is wrapped in :class:`~wkd_lightning.teacher.FrozenTeacher`: eval mode, no grad, not in the optimizer,
            not in checkpoints (restored from ``teacher_weights`` when the module is rebuilt).
        teacher_weights: file with the teacher's weights (Lightning checkpoint of a run of this module, a
            ``{"model": state_dict}`` dict or a plain state dict), loaded once at construction.
        online_teacher: self-KD without a pretrained model: a teacher made from the student while it trains
            (:class:`~wkd_lightning.selfkd.EMATeacher`, :class:`~wkd_lightning.selfkd.PreviousEpochTeacher`). It
            excludes ``teacher``/``teacher_weights``, is saved in checkpoints under ``online_teacher.``, and may
            rebuild the WKD-L cost at every epoch start (see :mod:`wkd_lightning.selfkd.online`).
        losses: distillation loss plug-ins by key (``{"wkd_l": WKDLogit(...), "wkd_f": WKDFeature(...)}``); their raw
            terms, times ``weight · c(e)``, are added to the weighted cross-entropy. The key is the loss's name in logs
            (``train/loss/<key>/...``) and on the command line (``--model.losses.<key>.weight 30``); ``None`` values
            are left out (a config layer's ``<key>: null`` removes a loss). A list also works in Python, each
            plug-in keyed by its class's ``name`` (``wkd_l``, ``wkd_f``, ``kd``, ``dkd``, ``fitnet``). See
            :func:`~wkd_lightning.losses.base.loss_plugins`.
        optimizer: builds the optimizer from the trainable parameters (student and the losses' adapters only).
        lr_scheduler: builds an epoch-wise LR scheduler from the optimizer; ``None`` keeps the LR constant.
        num_classes: C; taken from the data module's ``num_classes`` when not given.
        input_size: (channels, height, width) of one input, used for the one-sample probe that checks output
            shapes and builds shape-dependent adapters; taken from the data module's ``input_size`` when not given.
        label_smoothing: label smoothing of the cross-entropy term (0 in the paper).
        ce_weight: weight of the cross-entropy term, ``ce_weight · CE(z_s, y)`` (1 in the WKD release; mdistiller's
            KD baselines use 0.1 on CIFAR-100 and 0.5 on ImageNet).
        allow_changed_inputs: load a checkpoint (resume, ``validate``/``test --ckpt_path``) even when its run read
            other teacher weights or WKD-L cost files than this module (their SHA-256 is stored in every checkpoint,
            see :mod:`wkd_lightning.run.fingerprints`), with a warning; by default that is an error.
        compile: compile the student, the pretrained teacher and the loss plug-ins with ``torch.compile`` (in place,
            ``nn.Module.compile``: checkpoint keys and feature hooks are unchanged). The teacher's graph is traced
            under its ``no_grad`` and the step's autocast. The first training step of each epoch runs the plug-ins
            eagerly, with every input check (see :mod:`wkd_lightning.losses.checks`).

    Batches are ``(x, y)`` or ``(x, y, index)`` with each sample's index in its dataset; the index is read by online
    teachers that store per-sample predictions, and names the samples of a batch with NaN/inf pixels.

    Logged in training, all as epoch means: the loss and its terms (:mod:`wkd_lightning.base_module`; the task term
    is ``ce``, weighted by ``ce_weight``), ``train/top1``/``top5``. In validation ``val/top1``/``top5`` and
    ``val/top1_best``. With a pretrained teacher, ``teacher/val_top1``/``top5`` once per fit
    (:mod:`wkd_lightning.run.teacher_accuracy`).
    """

    #: The validation metric that picks the best checkpoint and fills ``summary.json`` (higher is better).
    monitor = "val/top1"
    #: How to configure a teacher, in the error raised when a loss needs one.
    teacher_hint = "set `teacher` and `teacher_weights`, or an `online_teacher` for self-KD."
    #: Keyword arguments of ``torch.compile`` when ``compile=True`` (e.g. ``{"mode": "max-autotune"}``).
    compile_options: ClassVar[dict] = {}

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        teacher_weights: str | None = None,
        online_teacher: Teacher | None = None,
        losses: dict[str, DistillationLoss | None] | None = None,
        optimizer: OptimizerCallable = PaperSGD,
        lr_scheduler: LRSchedulerCallable | None = None,
        num_classes: int | None = None,
        input_size: tuple[int, int, int] | None = None,
        label_smoothing: float = 0.0,
        ce_weight: float = 1.0,
        allow_changed_inputs: bool = False,
        compile: bool = False,
    ) -> None:
        plugins = loss_plugins(losses)
        # Before the student's hooks exist: an online teacher may copy the student.
        source = select_teacher(student, teacher, teacher_weights, online_teacher, plugins)
        super().__init__(student, source, plugins, optimizer, lr_scheduler, self.teacher_hint)
        self.save_hyperparameters(ignore=list(INJECTED_ARGUMENTS))
        if "_instantiator" in self.hparams:
            # Built by LightningCLI: the hyperparameters are the run's config, in which the injected networks, losses
            # and optimizer are plain `class_path`/`init_args` data; stored too, they let `load_from_checkpoint(path)`
            # rebuild the module from the checkpoint alone (through Lightning's trusted CLI instantiator).
            self.save_hyperparameters()
        self.num_classes = num_classes
        self.input_size = tuple(input_size) if input_size is not None else None
        self.label_smoothing = label_smoothing
        self.ce_weight = check_number(ce_weight, "ce_weight", "DistillationModule")
        self.student_hooks = FeatureHooks(
            student, chain.from_iterable(x.student_paths for x in self.losses), owner="student"
        )
        teacher_paths = list(chain.from_iterable(x.teacher_paths for x in self.losses))
        if teacher_paths and self.teacher is None:
            raise ValueError(f"losses read teacher features {teacher_paths} but `teacher` is None.")
        self.teacher_hooks = FeatureHooks(self.teacher.model, teacher_paths, owner="teacher") if teacher_paths else None
        self.uses_teacher = bool(teacher_paths) or any(loss.requires_teacher for loss in self.losses)
        self.record_input_fingerprints(teacher_weights, self.losses, allow_changed_inputs)
        self._probed = self._prepared = False
        self.compile_models = compile
        if num_classes is not None:
            self._make_metrics(num_classes)

    # ------------------------------------------------------------------ set-up
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data_classes = getattr(datamodule, "num_classes", None)
        if self.num_classes is None:
            self.num_classes = data_classes
        if self.num_classes is None:
            raise ValueError("num_classes is unknown: set `model.num_classes` or use a data module with `num_classes`.")
        if data_classes is not None and data_classes != self.num_classes:
            raise ValueError(
                f"the data module has {data_classes} classes but the model is configured for {self.num_classes}."
            )
        if datamodule is not None:
            check_costs_fit_data(self.losses, datamodule)
        if self.input_size is None:
            self.input_size = getattr(datamodule, "input_size", None)
        if not hasattr(self, "val_metrics"):
            self._make_metrics(self.num_classes)
        if not self._probed:
            self._probe()
        if self._probed and not self._prepared:
            self._prepare_models(getattr(datamodule, "channels_last", False))

    @torch.no_grad()
    def _probe(self) -> None:
        """Run one all-zero sample through student and teacher in eval mode (no BatchNorm statistics move).

        Checks the class counts early and hands example features to the losses so they can build their adapters
        (projectors) before the optimizer is created.
        """
        if self.input_size is None:
            if any(x.student_paths or x.teacher_paths for x in self.losses):
                raise ValueError(
                    "feature losses need one example input to size their projectors: set `model.input_size` "
                    "(channels, height, width) or use a data module with `input_size`."
                )
            return
        device = next(chain(self.student.parameters(), self.student.buffers())).device
        example = torch.zeros(1, *self.input_size, device=device)
        was_training = self.student.training
        self.student.eval()
        try:
            student_logits = self.student(example)
            student_features = self.student_hooks.collect()
        finally:
            self.student.train(was_training)
        if student_logits.ndim != 2 or student_logits.shape[1] != self.num_classes:
            raise ValueError(
                f"the student outputs shape {tuple(student_logits.shape)} for one input but {self.num_classes} "
                "classes are expected; set the student's num_classes to the data's."
            )
        teacher_features = {}
        if self.teacher is not None and self.uses_teacher:
            teacher_logits = self.teacher(example)
            teacher_features = self.teacher_hooks.collect() if self.teacher_hooks else {}
            if teacher_logits.shape != student_logits.shape:
                raise ValueError(
                    f"the teacher outputs {tuple(teacher_logits.shape)} but the student {tuple(student_logits.shape)}: "
                    "teacher and student must predict the same classes."
                )
        # Adapters start from the run's seed, not from wherever the global RNG happens to be at set-up: Lightning
        # re-seeds it when a DDP process group starts, so otherwise 1 and N processes would build other projectors.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(torch.initial_seed())
            for loss in self.losses:
                loss.build(student_features, teacher_features)
        self._probed = True

    def _prepare_models(self, channels_last: bool) -> None:
        """Channels-last weights when the data comes channels-last, then ``torch.compile`` (``compile=True``)."""
        networks = [self.student, self.losses, self.teacher, self.online_teacher]
        if channels_last:
            for network in filter(None, networks):
                network.to(memory_format=torch.channels_last)
        if self.compile_models:
            # Dynamo skips guards on module hooks by default, so a graph traced for another instance of the same class
            # without feature hooks would be reused and the features never captured: guard on them.
            torch._dynamo.config.skip_nnmodule_hook_guards = False
            self.student.compile(**self.compile_options)
            if self.teacher is not None and self.uses_teacher:
                self.teacher.model.compile(**self.compile_options)
            for loss in self.losses:
                loss.compile(**self.compile_options)
        self._prepared = True

    def configure_callbacks(self) -> list[L.Callback]:
        """With a pretrained teacher: measure and log its validation accuracy once
        (:mod:`wkd_lightning.run.teacher_accuracy`)."""
        return [TeacherAccuracy()] if self.teacher is not None else []

    # ------------------------------------------------------------------ checkpoints: the shapes set-up resolved
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The shapes set-up took from the data module: a module rebuilt from the checkpoint alone
        # (``load_from_checkpoint``) sizes its adapters (projectors) with them before the weights are loaded.
        checkpoint[SHAPES_KEY] = {"num_classes": self.num_classes, "input_size": self.input_size}
        super().on_save_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        shapes = checkpoint.get(SHAPES_KEY) or {}
        if self._trainer is None and not self._probed:  # load_from_checkpoint: no set-up before the weights load
            if self.num_classes is None and shapes.get("num_classes") is not None:
                self.num_classes = shapes["num_classes"]
                self._make_metrics(self.num_classes)
            if self.input_size is None and shapes.get("input_size") is not None:
                self.input_size = tuple(shapes["input_size"])
            if self.num_classes is not None:
                self._probe()

    # ------------------------------------------------------------------ steps
    def forward(self, x: Tensor) -> Tensor:
        return self.student(x)

    def _context(self, x: Tensor, target: Tensor, index: Tensor | None) -> tuple[DistillationContext, Tensor | None]:
        """The step's context, and which samples have teacher logits (``None``: all of them)."""
        student_logits = self.student(x)
        student_features = self.student_hooks.collect()
        teacher_logits, has_teacher = self.teacher_slot.targets(x, index) if self.uses_teacher else (None, None)
        ctx = self.training_context(
            student_logits=student_logits,
            teacher_logits=teacher_logits,
            target=target,
            student_features=student_features,
            teacher_features=self.teacher_hooks.collect() if self.teacher_hooks else {},
        )
        return ctx, has_teacher

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        x, target, index = unpack_batch(batch)
        ctx, has_teacher = self._context(x, target, index)
        logits = ctx.student_logits
        checked = self.first_step_of_epoch()
        if checked:
            if target.ndim == 1:
                check_labels(target, logits.shape[1])
            check_input_batch(x, index, ctx.epoch, batch_idx)  # before the losses blame the student for NaN pixels
        terms = Terms()
        terms.add("ce", F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing), self.ce_weight)
        # None: no sample of the batch has a teacher target yet (CE-only step)
        distill_ctx = ctx if has_teacher is None else ctx.restricted(has_teacher)
        total = self.step_loss(terms, distill_ctx, checked, batch_idx, x.shape[0], inputs=x, index=index)
        if self.teacher_slot is not None:
            self.teacher_slot.observe(index, logits.detach())
        self.train_metrics.update(logits.detach(), ctx.hard_target)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=x.shape[0])
        return total
