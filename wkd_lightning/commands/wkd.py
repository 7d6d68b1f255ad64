"""``wkd`` and ``wkd-det``: the LightningCLIs of the project (``wkd fit|validate|test|predict -c CONFIG.yaml [--key
value ...]``); ``wkd`` trains classifiers (:class:`DistillationModule`), ``wkd-det`` detectors
(:class:`~wkd_lightning.detection.DetectionDistillationModule`).

Every run writes to ``trainer.default_root_dir``: ``config.yaml`` (the full resolved config), ``metrics.csv``,
``summary.json`` and ``checkpoints/{best,last}.ckpt`` (best by the module's ``monitor`` metric: validation top-1, or
box mAP for detectors; ``last-interrupted.ckpt`` when Ctrl-C or SIGTERM stops a fit). ``--ckpt_path last`` resumes a
run from the newest of them. A fresh fit into a run directory that holds an earlier fit is refused (``--new_version
true``: into ``<run dir>/version_<N>``); ``validate``/``test``/``predict`` write into ``<run dir>/<subcommand>/<time
stamp>`` (:mod:`wkd_lightning.run.rundirs`), ``predict`` its ``predictions.csv`` (:mod:`wkd_lightning.run.predictions`).
``wkd models``, ``wkd configs`` (:mod:`wkd_lightning.commands.catalog`), ``wkd export``
(:mod:`wkd_lightning.commands.export`) and ``wkd summary`` (:mod:`wkd_lightning.commands.summary`) are commands of their
own. More loggers (Weights & Biases) come from ``trainer.logger``; a CSV logger
in the run directory is always kept.
"""

from __future__ import annotations

import glob
import importlib
import inspect
import os
import sys
import warnings
from collections.abc import Iterable

import lightning as L
import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger

from wkd_lightning.checkpoints import check_run_checkpoint
from wkd_lightning.commands.catalog import CatalogHelpFormatter
from wkd_lightning.detection import DetectionDistillationModule
from wkd_lightning.losses.base import DistillationLoss
from wkd_lightning.losses.schedule import WeightSchedule
from wkd_lightning.module import INJECTED_ARGUMENTS, DistillationModule
from wkd_lightning.run.config_layers import LOSSES_OPTION, WKDArgumentParser, keyed_losses_argv
from wkd_lightning.run.distributed import DEFAULT_TIMEOUT_S, set_process_group_timeout
from wkd_lightning.run.errors import run_command
from wkd_lightning.run.interruption import InterruptCheckpoint, StopOnSignal
from wkd_lightning.run.optim import resolve_loss_schedules, resolve_lr_scheduler
from wkd_lightning.run.predictions import PredictionWriter
from wkd_lightning.run.recipe import RecipeCheck, plain, recipe_of
from wkd_lightning.run.rundirs import (
    EVALUATION_COMMANDS,
    earlier_fit_files,
    evaluation_dir,
    next_version_dir,
    refuse_used_run_dir,
    shared_across_ranks,
)
from wkd_lightning.run.summary import RunSummary
from wkd_lightning.run.tracking import EpochLRMonitor, RunCSVLogger, check_wandb_reachable
from wkd_lightning.run.watch import FiniteModelCheckpoint


def checkpoint_dir(default_root_dir: str | None) -> str:
    """``<run dir>/checkpoints``; the run dir defaults to the working directory, as in Lightning."""
    return os.path.join(default_root_dir or os.getcwd(), "checkpoints")


#: The callbacks whose folder is the run's checkpoint folder.
CHECKPOINT_GROUPS = ("checkpoint", "last_checkpoint", "interrupt")


class WKDCLI(LightningCLI):
    """LightningCLI with the project's defaults: best/last checkpoints, run summary, CSV log in the run dir.

    The best checkpoint and the summary follow the model class's ``monitor`` metric (higher is better).
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        monitor = self.model_class.monitor
        # Two checkpoint callbacks: Lightning 2.6's `save_last` of a monitoring ModelCheckpoint only refreshes
        # last.ckpt in epochs where the monitored metric improved, so `last` gets its own unmonitored callback.
        # FiniteModelCheckpoint: a diverged run (NaN/inf weights) keeps its last healthy files.
        parser.add_lightning_class_args(FiniteModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(FiniteModelCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": monitor,
                "checkpoint.mode": "max",
                "checkpoint.filename": "best",
                "checkpoint.enable_version_counter": False,
                "last_checkpoint.filename": "last",  # monitor None, top-1: overwritten at every epoch end
                "last_checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(RunSummary, "summary")
        parser.set_defaults({"summary.metric": monitor})
        parser.add_lightning_class_args(InterruptCheckpoint, "interrupt")
        parser.add_lightning_class_args(StopOnSignal, "stop_on_signal")
        parser.add_lightning_class_args(EpochLRMonitor, "lr_monitor")  # lr-<optimizer> once per epoch, if logged
        if not issubclass(self.model_class, DetectionDistillationModule):  # a classifier's top-k, not boxes
            # `wkd predict` writes <evaluation folder>/predictions.csv (the top-k of every sample); idle otherwise.
            parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_argument(
            "--ddp_timeout",
            type=float,
            default=DEFAULT_TIMEOUT_S,
            help="seconds a multi-process run waits in one collective (all-reduce, barrier) before it fails, "
            "for strategies given by name (ddp, ddp_spawn, fsdp, ...): a rank that died or hangs ends the run "
            "instead of blocking the others forever.",
        )
        parser.add_argument(
            "--new_version",
            type=bool,
            default=False,
            help="fit: when the run directory already holds an earlier fit (checkpoints, summary.json), start over "
            "in its first free version_<N> subfolder instead of refusing; --ckpt_path last resumes instead.",
        )
        parser.add_argument(
            "--allow_changed_recipe",
            type=bool,
            default=False,
            help="fit --ckpt_path: resume even when the model config (student, teacher, losses and their settings) "
            "differs from the one the checkpoint was trained with (a warning instead of an error).",
        )
        for group in CHECKPOINT_GROUPS:
            parser.link_arguments("trainer.default_root_dir", f"{group}.dirpath", compute_fn=checkpoint_dir)

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        """Lightning's parsing, but ``--print_config`` prints after :meth:`before_instantiate_classes` has resolved
        the config (the schedules' epochs), so that it shows the values the run would use; a whole
        ``--model.losses VALUE`` is layered as a config file's is (:mod:`wkd_lightning.run.config_layers`)."""
        self._print_config = None
        if isinstance(args, (dict, Namespace)):
            return super().parse_arguments(parser, args)
        argv = list(sys.argv[1:] if args is None else args)
        for i, arg in enumerate(argv):
            if arg == "--print_config" or arg.startswith("--print_config="):
                self._print_config = arg.partition("=")[2]
                del argv[i]
                break
        fit_parser = parser._subcommands_action._name_parser_map.get("fit") if parser._subcommands_action else parser
        if isinstance(fit_parser, WKDArgumentParser) and fit_parser._keyed_losses():
            refuse_unkeyed_loss_options(argv)
            argv = keyed_losses_argv(argv)
        self._one_batch_limits = one_batch_limits(argv)
        self.config = parser.parse_args(argv)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        max_epochs = config.trainer.get("max_epochs")
        resolve_lr_scheduler(config.model.get("lr_scheduler"), max_epochs)
        losses = config.model.get("losses")
        if isinstance(losses, dict):  # `<key>: null` in a layer removed that loss
            config.model.losses = {key: loss for key, loss in losses.items() if loss is not None}
        # The recipe keeps the loss schedules as configured (a fraction of the run): a resume may extend a run.
        self._recipe_model = config.model.clone()
        resolve_loss_schedules(config.model.get("losses"), max_epochs)
        for key, source in getattr(self, "_one_batch_limits", {}).items():
            if config.trainer.get(key) != 1:
                continue
            warnings.warn(  # set on the trainer (instantiation would make it 1.0)
                f"{source}: the CLI reads limits as floats, and Lightning reads the float 1.0 as 100 % of the "
                f"batches; taken as 1 batch, as {'typed' if source.startswith('--') else 'written'}. Write 1.0 for "
                "all batches.",
                UserWarning,
                stacklevel=2,
            )
        if self._print_config is not None:
            subparser = self.parser._subcommands_action._name_parser_map[self.subcommand]
            skip_none = "skip_null" in self._print_config.split(",")
            sys.stdout.write(subparser.dump(config, skip_none=skip_none))
            sys.exit(0)
        self._check_resumed_checkpoint(config)
        self._choose_run_dir(config)
        if self.subcommand and config.get("weights_only") is None:
            config.weights_only = True  # resumed/evaluated checkpoints are read without unpickling code
        model = config.model
        if model.get("teacher") is not None and model.get("teacher_weights") is None:
            raise ValueError(
                "the config sets a teacher architecture but no `model.teacher_weights`: a teacher is never used with "
                "random weights. Pass --model.teacher_weights PATH (e.g. runs/fashion_mnist/teacher/checkpoints/"
                "best.ckpt after `wkd fit -c configs/fashion_mnist/teacher.yaml`)."
            )

    def _parse_ckpt_path(self) -> None:
        """One rule for the model options a checkpoint stores (``teacher_weights``, ``label_smoothing``, ...): the
        command line and config files win, as ``--print_config`` shows them; a stored value that differs is named
        in a warning. (Lightning's own rule, replaced here, silently let the checkpoint's values win.) A damaged or
        truncated ``--ckpt_path`` file is refused first, with a message naming it."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not (isinstance(ckpt_path, str) and os.path.isfile(ckpt_path)):
            return
        check_run_checkpoint(ckpt_path)
        stored = torch.load(ckpt_path, weights_only=True, map_location="cpu").get("hyper_parameters") or {}
        model = self.config[subcommand].get("model") or {}
        for key, value in stored.items():
            if key.startswith("_") or key in INJECTED_ARGUMENTS:  # networks, losses, optimizer: RecipeCheck compares
                continue
            if key in model and plain(model[key]) != plain(value):
                warnings.warn(
                    f"--ckpt_path {ckpt_path}: model.{key} is {model[key]!r} in this command but {value!r} in the "
                    f"checkpoint; the command's value is used (as --print_config shows). Pass --model.{key} "
                    f"{value!r} to use the checkpoint's.",
                    UserWarning,
                    stacklevel=2,
                )

    def before_fit(self) -> None:
        """Every checkpoint of the fit stores its recipe; a resume compares it (:mod:`wkd_lightning.run.recipe`)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        model = getattr(self, "_recipe_model", config.model)  # before the loss schedules' epochs were resolved
        self.trainer.callbacks.append(RecipeCheck(recipe_of(model), config.get("allow_changed_recipe", False)))

    def _choose_run_dir(self, config) -> None:
        """A fresh fit into a used run directory is refused or versioned; an evaluation writes beside the run."""
        root = config.trainer.get("default_root_dir") or os.getcwd()
        if self.subcommand == "fit" and config.get("ckpt_path") is None and not config.trainer.get("fast_dev_run"):
            if earlier_fit_files(root):
                if not config.get("new_version"):
                    refuse_used_run_dir(root, command=self._command_name())
                root = shared_across_ranks("WKD_NEW_VERSION_DIR", lambda: next_version_dir(root))
                config.trainer.default_root_dir = root
                for group in CHECKPOINT_GROUPS:
                    config[group].dirpath = checkpoint_dir(root)
        elif self.subcommand in EVALUATION_COMMANDS:
            # Only the trainer's folder moves (config.yaml, metrics.csv); `--ckpt_path last|best` still finds the run's
            # checkpoints through the checkpoint callbacks' dirpath.
            config.trainer.default_root_dir = shared_across_ranks(
                "WKD_EVALUATION_DIR", lambda: evaluation_dir(root, self.subcommand)
            )

    def _check_resumed_checkpoint(self, config) -> None:
        """A damaged or truncated ``--ckpt_path`` (``last``: the newest ``last*.ckpt``, as Lightning picks it) is
        refused with a message naming the file, before anything is built."""
        ckpt_path = config.get("ckpt_path")
        if ckpt_path == "last":
            folder = config.get("last_checkpoint", {}).get("dirpath") or checkpoint_dir(config.trainer.default_root_dir)
            candidates = glob.glob(os.path.join(folder, "last*.ckpt"))
            ckpt_path = max(candidates, key=os.path.getmtime) if candidates else None
        if isinstance(ckpt_path, str) and os.path.isfile(ckpt_path):
            check_run_checkpoint(ckpt_path)

    def _command_name(self) -> str:
        return "wkd-det fit" if issubclass(self.model_class, DetectionDistillationModule) else "wkd fit"

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        trainer_config = self._get(self.config_init, "trainer", default={})
        logger = kwargs.get("logger", trainer_config.get("logger"))
        if logger is not False:
            loggers = [] if logger in (None, True) else list(logger) if isinstance(logger, Iterable) else [logger]
            if not any(isinstance(x, CSVLogger) for x in loggers):
                root = trainer_config.get("default_root_dir") or os.getcwd()
                config = self.config[self.subcommand] if self.subcommand else self.config
                fresh_fit = self.subcommand == "fit" and config.get("ckpt_path") is None
                loggers.insert(0, RunCSVLogger(save_dir=root, append=not fresh_fit))
            check_wandb_reachable(loggers)
            kwargs["logger"] = loggers
        trainer = super().instantiate_trainer(**kwargs)
        config = self.config[self.subcommand] if self.subcommand else self.config
        for key in getattr(self, "_one_batch_limits", {}):
            if config.trainer.get(key) == 1:
                setattr(trainer, key, 1)  # read by Lightning when the loaders are set up
        if isinstance(trainer_config.get("strategy", "auto"), str):  # a Strategy object keeps its own timeout
            config = self.config[self.subcommand] if self.subcommand else self.config
            set_process_group_timeout(trainer.strategy, config.get("ddp_timeout", DEFAULT_TIMEOUT_S))
        return trainer


#: Lightning's batch limits: an int is a count of batches, a float a fraction (1.0: all of them).
BATCH_LIMITS = tuple(f"limit_{stage}_batches" for stage in ("train", "val", "test", "predict"))


def one_batch_limits(argv: list[str]) -> dict[str, str]:
    """The batch limits given as ``1``, each with where it was given: on the command line
    (``--trainer.limit_train_batches 1`` or ``=1``) or as an integer in a config file (``limit_train_batches: 1`` in
    the ``trainer:`` of a ``-c``/``--config`` file; ``1.0`` there means all batches). The last layer that sets a
    limit counts, as in the parsing."""
    typed = {}  # the last value given for each limit (the one that counts) -> where, when it is a 1
    for i, arg in enumerate(argv):
        name, equals, value = arg.partition("=")
        if not equals:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        key = name.removeprefix("--trainer.")
        if name.startswith("--trainer.") and key in BATCH_LIMITS:
            typed[key] = f"--trainer.{key} 1" if value.strip() == "1" else None
        elif name in ("-c", "--config"):
            for key, given in config_file_limits(value).items():
                typed[key] = f"trainer.{key}: 1 in {value}" if type(given) is int and given == 1 else None
    return {key: source for key, source in typed.items() if source is not None}


def config_file_limits(path: str) -> dict:
    """The batch limits in the ``trainer:`` section of a config file, as written (``{}`` if it cannot be read: the
    parser reports that)."""
    try:
        with open(path) as file:
            data = yaml.safe_load(file)
    except (OSError, yaml.YAMLError):
        return {}
    trainer = data.get("trainer") if isinstance(data, dict) else None
    return {key: trainer[key] for key in BATCH_LIMITS if key in trainer} if isinstance(trainer, dict) else {}


def refuse_unkeyed_loss_options(argv: list[str]) -> None:
    """A ``--model.losses.<setting>`` without a loss key (``--model.losses.weight 5``, the list-era form that changed
    only the last loss) is an error that shows the keyed form.

    Raises:
        ValueError: naming the option and the form to use.
    """
    settings = {"class_path", "init_args", "dict_kwargs"} | loss_setting_names()
    for arg in argv:
        name = arg.partition("=")[0]
        if name.startswith(LOSSES_OPTION + "."):
            first = name[len(LOSSES_OPTION) + 1 :].split(".")[0]
            if first in settings:
                rest = name[len(LOSSES_OPTION) + 1 :]
                raise ValueError(
                    f"{name}: losses are keyed, so name the loss: {LOSSES_OPTION}.<key>.{rest} (e.g. "
                    f"{LOSSES_OPTION}.wkd_l.{rest}). The keys are those under model.losses in the config "
                    "(--print_config shows them)."
                )


def loss_setting_names() -> set[str]:
    """The ``__init__`` arguments of the shipped loss plug-ins and weight schedules."""
    import wkd_lightning.losses as losses

    names = set()
    for obj in vars(losses).values():
        if isinstance(obj, type) and issubclass(obj, (DistillationLoss, WeightSchedule)):
            names |= set(inspect.signature(obj.__init__).parameters) - {"self", "args", "kwargs"}
    return names


def make_cli(
    args: list[str] | None = None, run: bool = True, model_class: type[L.LightningModule] = DistillationModule
) -> WKDCLI:
    """Build (and with ``run``, execute) the ``wkd`` CLI; ``args`` replaces ``sys.argv`` (used by tests).

    ``model_class`` is :class:`DistillationModule` for ``wkd`` and
    :class:`~wkd_lightning.detection.DetectionDistillationModule` for ``wkd-det``.
    """
    # Lightning 2.6 trips a deprecation of newer torch's pytree on every run; it is not the user's concern.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # The help of --model.student/--model.teacher lists our models, not every nn.Module subclass torch defines.
    formatter = {"formatter_class": CatalogHelpFormatter}
    parser_kwargs = {**formatter, **{name: dict(formatter) for name in LightningCLI.subcommands()}}
    if model_class is DistillationModule:
        parser_kwargs["epilog"] = "more commands: " + "; ".join(
            f"wkd {name}: {what}" for name, (_, _, what) in EXTRA_COMMANDS.items()
        )
    return WKDCLI(
        model_class,
        L.LightningDataModule,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_class=WKDArgumentParser,
        seed_everything_default=0,
        parser_kwargs=parser_kwargs,
        args=args,
        run=run,
    )


#: ``wkd`` commands besides LightningCLI's fit/validate/test/predict: name → (module, function, what it does).
_HERE = "wkd_lightning.commands"
EXTRA_COMMANDS = {
    "models": (f"{_HERE}.catalog", "models_main", "list the registered architectures and their class paths"),
    "configs": (f"{_HERE}.catalog", "configs_main", "list the shipped configs with a line on each"),
    "export": (f"{_HERE}.export", "main", "write a trained student alone (state_dict, TorchScript, ONNX)"),
    "summary": (f"{_HERE}.summary", "main", "print the best and last validation metrics of run directories as a table"),
}


def main(model_class: type[L.LightningModule] = DistillationModule) -> None:
    """Entry point of the ``wkd`` console script.

    ``wkd models``, ``wkd configs`` and ``wkd export`` (:data:`EXTRA_COMMANDS`) are recognised before LightningCLI
    parses anything; everything else is LightningCLI's ``fit|validate|test|predict``. The command ends as every
    training command does (:func:`~wkd_lightning.run.errors.run_command`): a bad input (a wrong config value, a missing
    or damaged file, a used run directory) with its message alone and exit status 1 (``--debug`` or ``WKD_DEBUG=1``:
    the traceback); a stop by SIGTERM with 143 (Ctrl-C: 130), not Lightning's 0; a collective that failed because
    another rank died or hung with one message that says so.
    """
    extra = sys.argv[1] if len(sys.argv) > 1 and model_class is DistillationModule else None
    if extra in EXTRA_COMMANDS:
        module_name, function, _ = EXTRA_COMMANDS[extra]
        command = getattr(importlib.import_module(module_name), function)
        run_command(lambda: command(sys.argv[2:]), f"wkd {extra}")
        return
    run_command(lambda: make_cli(model_class=model_class))


def detection_main() -> None:
    """Entry point of the ``wkd-det`` console script (detectors; see :mod:`wkd_lightning.detection`)."""
    main(DetectionDistillationModule)


if __name__ == "__main__":
    main()
