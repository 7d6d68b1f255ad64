"""From a study file to the commands it runs: one task per step and per (run, seed), in order, each with its folder,
its derived config, its command line and its state on disk (complete, resumable, fresh).

Folders: a step goes to ``<study dir>/<step>/``, a run to ``<study dir>/<run>/seed<k>/``; logs to
``<study dir>/logs/<task>.log``. Each task's config is derived into ``<task dir>/study.input.yaml`` (its config files
merged, ``set`` applied, ``{study}``/``{seed}`` filled in; for ``wkd-ban`` the seed goes to ``fit.seed_everything``,
since that command sets ``seed + k`` per generation itself), and ``<task dir>/study_task.json`` records the time it
took (summed over resumes) and, for commands without a ``summary.json`` (``wkd-ir``), that it finished.

Command lines (``python -m <module>`` of :data:`~wkd_lightning.study.spec.COMMANDS`, with this Python)::

    wkd fit -c <dir>/study.input.yaml <args> --trainer.default_root_dir=<dir> --trainer.enable_progress_bar=false
            [--seed_everything=<seed> --data.init_args.seed=<seed>] [--ckpt_path=last]
    wkd-ban -c <dir>/study.input.yaml --run_dir=<dir> <args> --data.init_args.seed=<seed> ...
    wkd-ir  -c <dir>/study.input.yaml <args> --output_dir=<dir> --progress=false [--overwrite=true]

The seed also goes to the data module (``--data.init_args.seed``): it then draws the subset, the order and the
augmentation too, so a seed is a full repetition, and all runs of one seed see the same data (paired comparisons).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from wkd_lightning.run.files import write_text_atomically
from wkd_lightning.run.summary import can_resume, is_complete
from wkd_lightning.study.spec import COMMANDS, Entry, StudySpec, merge_configs, set_path, substitute

INPUT_FILE = "study.input.yaml"
TASK_FILE = "study_task.json"


@dataclass(frozen=True)
class Task:
    """One command of a study: a step, or a run at one seed."""

    entry: Entry
    seed: int | None
    dir: Path
    log: Path

    @property
    def key(self) -> str:
        """``teacher`` for a step, ``kd/seed0`` for a run."""
        return self.entry.name if self.seed is None else f"{self.entry.name}/seed{self.seed}"

    @property
    def title(self) -> str:
        return self.entry.name if self.seed is None else f"{self.entry.name} seed {self.seed}"

    @property
    def result_dir(self) -> Path:
        """The folder with the ``summary.json`` this task is judged by."""
        return self.dir / self.entry.result if self.entry.result else self.dir

    def need_keys(self, spec: StudySpec) -> list[str]:
        """The tasks this one needs: steps by name, runs at the same seed."""
        steps = {s.name for s in spec.steps}
        return [n if n in steps else f"{n}/seed{self.seed}" for n in self.entry.needs]


def plan(spec: StudySpec, only: list[str] | None = None, seeds: list[int] | None = None) -> list[Task]:
    """Every task of the study, steps first (in file order), then the runs seed by seed (in file order).

    Args:
        only: names of steps or runs to keep (default all).
        seeds: seeds to keep (default the study's); a seed outside the study's is refused.

    Raises:
        ValueError: an unknown name in ``only`` or a seed the study does not list.
    """
    names = [e.name for e in (*spec.steps, *spec.runs)]
    for name in only or []:
        if name not in names:
            raise ValueError(f"--only {name}: no such step or run in {spec.file}; choose among {', '.join(names)}.")
    for seed in seeds or []:
        if seed not in spec.seeds:
            raise ValueError(f"--seed {seed}: {spec.file} lists seeds {list(spec.seeds)}; add it there first.")
    keep = set(only or names)
    chosen = list(seeds) if seeds else list(spec.seeds)
    logs = spec.dir / "logs"
    tasks = [Task(s, None, spec.dir / s.name, logs / f"{s.name}.log") for s in spec.steps if s.name in keep]
    for seed in spec.seeds:
        if seed not in chosen:
            continue
        for run in spec.runs:
            if run.name in keep:
                tasks.append(Task(run, seed, spec.dir / run.name / f"seed{seed}", logs / f"{run.name}_seed{seed}.log"))
    return tasks


def all_tasks(spec: StudySpec) -> dict[str, Task]:
    return {t.key: t for t in plan(spec)}


# --------------------------------------------------------------------------------------------------------------------
# State on disk


def read_task_record(task: Task) -> dict:
    try:
        return json.loads((task.dir / TASK_FILE).read_text())
    except (OSError, ValueError):
        return {}


def write_task_record(task: Task, **values) -> None:
    task.dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(task.dir / TASK_FILE, json.dumps({**read_task_record(task), **values}, indent=2))


def uses_summary(task: Task) -> bool:
    return task.entry.command in ("wkd fit", "wkd-ban")


def is_done(task: Task) -> bool:
    """Whether the task finished earlier (``summary.json`` says complete; ``wkd-ir``: its record says so)."""
    if uses_summary(task):
        return is_complete(task.result_dir)
    return bool(read_task_record(task).get("complete"))


def state(task: Task) -> str:
    """``"complete"``, ``"resume"`` (a ``wkd fit`` with a last checkpoint; a ``wkd-ban`` or ``wkd-ir`` started
    before) or ``"fresh"``."""
    if is_done(task):
        return "complete"
    if task.entry.command == "wkd fit":
        return "resume" if can_resume(task.dir) else "fresh"
    if task.entry.command == "wkd-ban":
        return "resume" if any(task.dir.glob("gen*/summary.json")) else "fresh"
    return "resume" if any(task.dir.glob("*.pt")) else "fresh"


# --------------------------------------------------------------------------------------------------------------------
# Configs and command lines


def placeholders(spec: StudySpec, task: Task) -> dict[str, str]:
    values = {"study": str(spec.dir)}
    if task.seed is not None:
        values["seed"] = str(task.seed)
    return values


def derive_config(spec: StudySpec, task: Task) -> dict:
    """The task's config: its files merged, ``set`` applied, placeholders filled in, the seed for ``wkd-ban``."""
    values = placeholders(spec, task)
    config = merge_configs(task.entry.configs)
    for dotted, value in task.entry.set.items():
        set_path(config, dotted, substitute(value, values))
    if task.entry.command == "wkd-ban" and task.seed is not None:
        fit = config.get("fit", config)  # a driver config (ban: + fit:) or a plain fit config
        fit["seed_everything"] = task.seed
    return config


def write_config(spec: StudySpec, task: Task) -> Path:
    path = task.dir / INPUT_FILE
    task.dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, yaml.safe_dump(derive_config(spec, task), sort_keys=False))
    return path


def command_line(spec: StudySpec, task: Task, resume: bool = False, python: str | None = None) -> list[str]:
    """The command line of a task (see the module docstring); its config file is ``<task dir>/study.input.yaml``."""
    module, head = COMMANDS[task.entry.command]
    args = [substitute(a, placeholders(spec, task)) for a in task.entry.args]
    command = [python or sys.executable, "-m", module, *head]
    if task.entry.configs:
        command += ["-c", str(task.dir / INPUT_FILE)]
    if task.entry.command == "wkd fit":
        command += [*args, f"--trainer.default_root_dir={task.dir}", "--trainer.enable_progress_bar=false"]
        if task.seed is not None:
            command += [f"--seed_everything={task.seed}", f"--data.init_args.seed={task.seed}"]
        if resume:
            command.append("--ckpt_path=last")
    elif task.entry.command == "wkd-ban":
        command += [f"--run_dir={task.dir}", *args, "--trainer.enable_progress_bar=false"]
        if task.seed is not None:
            command.append(f"--data.init_args.seed={task.seed}")
    else:
        command += [*args, f"--output_dir={task.dir}", "--progress=false"]
        if resume:
            command.append("--overwrite=true")  # its files are from the run that was cut off
    return command
