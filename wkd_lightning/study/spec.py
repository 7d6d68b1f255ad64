"""The study file: what a multi-seed study runs, read and checked before anything starts.

A study file (YAML) has four sections; ``quick:`` is an optional fifth::

    study:                       # what the study is
      name: fashion_mnist        # names the report files (<report_dir>/<name>.{md,json}, <name>_top1.png, ...)
      dir: runs/study            # where every step and run goes: <dir>/<step>/, <dir>/<run>/seed<k>/
      seeds: [0, 1, 2]
      baseline: kd               # the run every other one is compared with, seed by seed
      chance: 0.1                # top-1 of a guess; runs below near_chance (default 2 x chance) are flagged
      report_dir: benchmarks/results   # default <dir>/report
    defaults:                    # put before every run's own args / set
      args: [--trainer.max_epochs=12]
    steps:                       # run once, before the runs that need them (a teacher, its cost matrices)
      - name: teacher
        command: wkd fit
        config: configs/fashion_mnist/teacher.yaml
      - name: ir
        command: wkd-ir
        config: configs/fashion_mnist/ir.yaml
        needs: [teacher]
        args: [--teacher_weights={study}/teacher/checkpoints/best.ckpt]
    runs:                        # each run once per seed
      - name: kd
        label: KD (T=4)
        command: wkd fit         # or wkd-ban
        config: configs/fashion_mnist/kd.yaml      # or a list of files, merged in order
        needs: [teacher]
        args: [--model.teacher_weights={study}/teacher/checkpoints/best.ckpt]
        set: {model.losses.kd.init_args.temperature: 2.0}   # dotted paths into the config (numbers index lists)
    quick:                       # `--quick`: the same study, small (a check of the pipeline, not a result)
      study: {dir: runs/study_quick, seeds: [0]}
      defaults: {args: [--trainer.max_epochs=3]}           # `args` are appended, mappings merged
      steps: {teacher: {args: [--trainer.max_epochs=1]}}   # by name

Entries (steps and runs) take: ``name``, ``command`` (``wkd fit``, ``wkd-ban``; steps also ``wkd-ir``), ``config``
(one file or a list), ``args`` (command-line arguments, after the config), ``set`` (values written into the config),
``needs`` (steps, or runs of the same seed, that must have finished first), ``label``; runs also ``baseline`` (another
run to compare with than the study's), ``result`` (the sub-folder whose ``summary.json`` is the run's result; for
``wkd-ban`` the last generation, ``gen<G-1>``, by default) and ``link`` (``{sub-folder: run}``: before the run starts,
``<run dir>/<sub-folder>`` becomes a link to that run of the same seed, e.g. a Born-Again generation 0 that is exactly
the vanilla run). In ``args`` and ``set`` values, ``{study}`` is the study directory and ``{seed}`` the run's seed.

Paths (configs, ``dir``, ``report_dir``) are relative to the directory ``wkd-study`` runs in, as the configs' own
paths are. Everything wrong with a file is a ``ValueError``/``FileNotFoundError`` that names the problem and the fix.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

#: The commands a study can run: name -> (Python module run with ``python -m``, arguments before the user's).
#: One place to change when the commands move; tests/study/test_study.py checks it against pyproject.toml's scripts.
COMMANDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "wkd fit": ("wkd_lightning.commands.wkd", ("fit",)),
    "wkd-ban": ("wkd_lightning.commands.ban", ()),
    "wkd-ir": ("wkd_lightning.commands.ir", ()),
}
#: Commands a run (once per seed) may use; steps may use every command of :data:`COMMANDS`.
RUN_COMMANDS = ("wkd fit", "wkd-ban")
SECTIONS = ("study", "defaults", "steps", "runs", "quick")
STUDY_KEYS = ("name", "dir", "seeds", "baseline", "chance", "near_chance", "report_dir", "title", "threads", "notes")
DEFAULT_KEYS = ("args", "set")
STEP_KEYS = ("name", "label", "command", "config", "args", "set", "needs")
RUN_KEYS = (*STEP_KEYS, "baseline", "result", "link")
PLACEHOLDER = re.compile(r"\{(study|seed)\}")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class StudyFileError(ValueError):
    """A study file that cannot be run as it is; the message names the problem and the fix."""


@dataclass(frozen=True)
class Entry:
    """A step (run once) or a run (once per seed) of a study.

    Attributes:
        name: folder name and row name.
        command: a key of :data:`COMMANDS`.
        configs: config files, merged in order (:func:`merge`).
        args: command-line arguments after ``-c <derived config>``.
        set: ``{dotted path: value}`` written into the merged config.
        needs: names of steps (or, for runs, of runs of the same seed) that must be complete first.
        label: what the row means, for tables.
        is_step: a step rather than a run.
        baseline: the run this run is compared with (runs; None for the study's baseline).
        result: sub-folder of the run directory that holds the result's ``summary.json`` (``""``: the folder itself).
        link: ``{sub-folder: run}`` links made before the run starts.
    """

    name: str
    command: str
    configs: tuple[Path, ...]
    args: tuple[str, ...] = ()
    set: Mapping[str, object] = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    label: str = ""
    is_step: bool = False
    baseline: str | None = None
    result: str = ""
    link: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StudySpec:
    """A checked study file (see the module docstring)."""

    file: Path
    name: str
    dir: Path
    seeds: tuple[int, ...]
    baseline: str | None
    steps: tuple[Entry, ...]
    runs: tuple[Entry, ...]
    chance: float | None = None
    near_chance: float | None = None
    report_dir: Path | None = None
    title: str = ""
    threads: int | None = None
    quick: bool = False
    notes: str = ""

    @property
    def entries(self) -> dict[str, Entry]:
        return {e.name: e for e in (*self.steps, *self.runs)}

    def run(self, name: str) -> Entry:
        return next(r for r in self.runs if r.name == name)

    def baseline_of(self, run: Entry) -> str | None:
        """The run ``run`` is compared with (None: the baseline itself, or no baseline)."""
        baseline = run.baseline or self.baseline
        return None if baseline == run.name else baseline

    @property
    def reports(self) -> Path:
        return self.report_dir if self.report_dir is not None else self.dir / "report"

    @property
    def near_chance_top1(self) -> float | None:
        if self.near_chance is not None:
            return self.near_chance
        return None if self.chance is None else 2 * self.chance


# --------------------------------------------------------------------------------------------------------------------
# Reading


def load_study(path: str | Path, *, quick: bool = False) -> StudySpec:
    """Read and check a study file (with its ``quick:`` overlay applied when ``quick``).

    Raises:
        FileNotFoundError: the study file or a config it names does not exist.
        StudyFileError: anything else wrong with it (unknown key, duplicate name, unknown need or baseline...).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"study file {path} does not exist; pass an existing file with -c (e.g. "
            "configs/studies/fashion_mnist.yaml)."
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise StudyFileError(f"{path} is not valid YAML ({error}).") from error
    if not isinstance(data, dict):
        raise StudyFileError(f"{path} must hold a mapping with sections {', '.join(SECTIONS)}.")
    _known(data, SECTIONS, f"{path}", "a section")
    if quick:
        if not data.get("quick"):
            raise StudyFileError(f"{path} has no `quick:` section, so --quick means nothing for it; drop --quick.")
        data = apply_quick(data, data["quick"], path)
    return _build(data, path, quick)


def apply_quick(data: dict, quick: dict, path: Path) -> dict:
    """The study file with its ``quick:`` overlay: ``study`` keys replaced, ``defaults``/step/run fields merged,
    ``args`` appended, ``set`` merged; steps and runs are matched by name."""
    if not isinstance(quick, dict):
        raise StudyFileError(f"{path}: `quick:` must be a mapping with any of study, defaults, steps, runs.")
    _known(quick, ("study", "defaults", "steps", "runs"), f"{path}: quick", "a section")
    data = copy.deepcopy(data)
    data.pop("quick", None)
    data["study"] = {**(data.get("study") or {}), **(quick.get("study") or {})}
    data["defaults"] = _overlay(data.get("defaults") or {}, quick.get("defaults") or {})
    for section in ("steps", "runs"):
        overlays = quick.get(section) or {}
        if not isinstance(overlays, dict):
            raise StudyFileError(f"{path}: quick.{section} must map {section[:-1]} names to the fields to change.")
        entries = data.get(section) or []
        names = [e.get("name") for e in entries if isinstance(e, dict)]
        for name in overlays:
            if name not in names:
                raise StudyFileError(
                    f"{path}: quick.{section} names {name!r}, which is not one of the {section} ({', '.join(names)})."
                )
        data[section] = [_overlay(e, overlays.get(e.get("name")) or {}) if isinstance(e, dict) else e for e in entries]
    return data


def _overlay(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if key == "args":
            merged[key] = [*_as_list(base.get(key)), *_as_list(value)]
        elif key == "set":
            merged[key] = {**(base.get(key) or {}), **(value or {})}
        else:
            merged[key] = value
    return merged


def _build(data: dict, path: Path, quick: bool) -> StudySpec:
    study = data.get("study")
    if not isinstance(study, dict):
        raise StudyFileError(f"{path} has no `study:` section (name, dir, seeds, baseline...); add one.")
    _known(study, STUDY_KEYS, f"{path}: study", "a key")
    for key in ("name", "dir", "seeds"):
        if study.get(key) in (None, "", []):
            raise StudyFileError(
                f"{path}: study.{key} is missing; set it (e.g. name: my_study, dir: runs/my_study, seeds: [0, 1, 2])."
            )
    seeds = study["seeds"]
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise StudyFileError(f"{path}: study.seeds must be a list of integers, got {seeds!r}.")
    if len(set(seeds)) != len(seeds):
        raise StudyFileError(f"{path}: study.seeds {seeds} repeats a seed; list each once.")
    name = str(study["name"])
    if not NAME.match(name):
        raise StudyFileError(f"{path}: study.name {name!r} must be a plain file name (letters, digits, _ . -).")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise StudyFileError(f"{path}: `defaults:` must be a mapping with `args` and/or `set`.")
    _known(defaults, DEFAULT_KEYS, f"{path}: defaults", "a key")

    steps = tuple(_entry(e, i, path, is_step=True, defaults={}) for i, e in enumerate(_as_list(data.get("steps"))))
    runs = tuple(_entry(e, i, path, is_step=False, defaults=defaults) for i, e in enumerate(_as_list(data.get("runs"))))
    if not runs:
        raise StudyFileError(f"{path} lists no runs; add a `runs:` list (name, command, config...).")
    seen: dict[str, str] = {}
    for entry in (*steps, *runs):
        kind = "step" if entry.is_step else "run"
        if entry.name in seen:
            raise StudyFileError(
                f"{path}: the name {entry.name!r} is used twice ({seen[entry.name]} and {kind}); every step and run "
                "needs its own name (it is also its folder)."
            )
        seen[entry.name] = kind
    step_names = {s.name for s in steps}
    run_names = [r.name for r in runs]
    for entry in (*steps, *runs):
        allowed = step_names if entry.is_step else step_names | set(run_names)
        for need in entry.needs:
            if need not in allowed or need == entry.name:
                what = "steps" if entry.is_step else "steps or runs"
                raise StudyFileError(
                    f"{path}: {entry.name!r} needs {need!r}, which is not one of the {what} of the study "
                    f"({', '.join(sorted(allowed - {entry.name})) or 'none'}); fix the name or add it."
                )
        for folder, target in entry.link.items():
            if target not in run_names or target == entry.name:
                raise StudyFileError(
                    f"{path}: {entry.name!r} links {folder} to {target!r}, which is not another run "
                    f"of the study ({', '.join(run_names)})."
                )
    _check_acyclic(runs, path)
    baseline = study.get("baseline")
    for owner, value in [("study.baseline", baseline)] + [(f"run {r.name!r}: baseline", r.baseline) for r in runs]:
        if value is not None and value not in run_names:
            raise StudyFileError(
                f"{path}: {owner} is {value!r}, which is not a run of the study; name one of {', '.join(run_names)}."
            )
    chance, near = study.get("chance"), study.get("near_chance")
    for key, value in (("chance", chance), ("near_chance", near)):
        if value is not None and (not isinstance(value, int | float) or not 0 <= value <= 1):
            raise StudyFileError(f"{path}: study.{key} must be a top-1 fraction in [0, 1], got {value!r}.")
    threads = study.get("threads")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise StudyFileError(f"{path}: study.threads must be an integer >= 1 (torch threads per run), got {threads!r}.")
    return StudySpec(
        file=path,
        name=name,
        dir=Path(str(study["dir"])),
        seeds=tuple(seeds),
        baseline=baseline,
        steps=steps,
        runs=runs,
        chance=chance,
        near_chance=near,
        report_dir=Path(str(study["report_dir"])) if study.get("report_dir") else None,
        title=str(study.get("title") or name),
        threads=threads,
        quick=quick,
        notes=str(study.get("notes") or ""),
    )


def _entry(data, index: int, path: Path, *, is_step: bool, defaults: dict) -> Entry:
    section = "steps" if is_step else "runs"
    where = f"{path}: {section}[{index}]"
    if not isinstance(data, dict):
        raise StudyFileError(f"{where} must be a mapping (name, command, config...), got {data!r}.")
    name = data.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise StudyFileError(
            f"{where} needs a `name:` that is a plain folder name (letters, digits, _ . -), got {name!r}."
        )
    where = f"{path}: {section[:-1]} {name!r}"
    _known(data, STEP_KEYS if is_step else RUN_KEYS, where, "a key")
    command = data.get("command", "wkd fit")
    allowed = tuple(COMMANDS) if is_step else RUN_COMMANDS
    if command not in allowed:
        raise StudyFileError(f"{where}: command {command!r} is not one of {', '.join(allowed)}.")
    configs = tuple(Path(str(c)) for c in _as_list(data.get("config")))
    if not configs and command != "wkd-ir":
        raise StudyFileError(f"{where} has no `config:`; name the config file(s) it runs.")
    for config in configs:
        if not config.is_file():
            raise FileNotFoundError(
                f"{where}: config file {config} does not exist (relative paths are from the directory wkd-study runs "
                f"in, {Path.cwd()}); fix the path or run wkd-study from the repository root."
            )
    args = tuple(str(a) for a in (*_as_list(defaults.get("args")), *_as_list(data.get("args"))))
    settings = {**(defaults.get("set") or {}), **(data.get("set") or {})}
    if not isinstance(data.get("set") or {}, dict):
        raise StudyFileError(f"{where}: `set:` must map dotted config paths to values.")
    for arg in args:
        if not arg.startswith("-"):
            raise StudyFileError(f"{where}: args entry {arg!r} is not an option; write each as '--key=value'.")
    needs = tuple(str(n) for n in _as_list(data.get("needs")))
    link = data.get("link") or {}
    if not isinstance(link, dict):
        raise StudyFileError(f"{where}: `link:` must map a sub-folder to a run name, e.g. {{gen0: vanilla}}.")
    config = merge_configs(configs)
    for dotted, value in settings.items():  # checked now: a wrong path is found before anything runs
        set_path(config, dotted, value, where=where)
    result = str(data.get("result") or "")
    if not is_step and command == "wkd-ban" and not result:
        result = f"gen{_generations(config, args, where) - 1}"
    if Path(result).is_absolute() or ".." in Path(result).parts:
        raise StudyFileError(f"{where}: result {result!r} must be a sub-folder of the run directory.")
    link_needs = tuple(str(t) for t in link.values() if str(t) not in needs)
    return Entry(
        name=name,
        command=command,
        configs=configs,
        args=args,
        set=settings,
        needs=(*needs, *link_needs),
        label=str(data.get("label") or name),
        is_step=is_step,
        baseline=data.get("baseline"),
        result=result,
        link={str(k): str(v) for k, v in link.items()},
    )


def _generations(config: dict, args: Sequence[str], where: str) -> int:
    """The number of generations of a ``wkd-ban`` run (``--generations`` in args, else the config's ``ban:``)."""
    for i, arg in enumerate(args):
        if arg.startswith("--generations="):
            return int(arg.split("=", 1)[1])
        if arg == "--generations" and i + 1 < len(args):
            return int(args[i + 1])
    generations = (config.get("ban") or {}).get("generations")
    if not isinstance(generations, int):
        raise StudyFileError(
            f"{where}: cannot tell how many generations this wkd-ban run has; set ban.generations in "
            "its config, --generations=N in args, or `result: gen<k>` (the generation to report)."
        )
    return generations


def _check_acyclic(runs: Sequence[Entry], path: Path) -> None:
    run_names = {r.name for r in runs}
    needs = {r.name: [n for n in r.needs if n in run_names] for r in runs}
    state: dict[str, int] = {}

    def visit(name: str, chain: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = " -> ".join([*chain[chain.index(name) :], name])
            raise StudyFileError(f"{path}: the runs need each other in a circle ({cycle}); remove one of the needs.")
        state[name] = 1
        for need in needs[name]:
            visit(need, [*chain, name])
        state[name] = 2

    for name in needs:
        visit(name, [])


def _known(data: dict, keys: Sequence[str], where: str, what: str) -> None:
    unknown = [k for k in data if k not in keys]
    if unknown:
        raise StudyFileError(
            f"{where}: unknown {'keys' if len(unknown) > 1 else 'key'} {', '.join(map(repr, unknown))}; "
            f"{what} is one of {', '.join(keys)}."
        )


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


# --------------------------------------------------------------------------------------------------------------------
# Configs


def merge(base: dict, extra: dict) -> dict:
    """``extra`` over ``base``: mappings merge key by key, any other value (lists included) is replaced."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def merge_configs(paths: Sequence[Path]) -> dict:
    config: dict = {}
    for path in paths:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise StudyFileError(f"config file {path} does not hold a YAML mapping.")
        config = merge(config, data)
    return config


def set_path(config: dict, dotted: str, value, where: str = "") -> None:
    """Write ``value`` at ``dotted`` (``model.losses.wkd_l.init_args.weight``; numbers index lists) in place.

    Raises:
        StudyFileError: a list index that does not exist, or a path through a value that is not a mapping or list.
    """
    parts = dotted.split(".")
    node = config
    where = f"{where}: " if where else ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise StudyFileError(
                    f"{where}set {dotted}: {'.'.join(parts[:i]) or 'the config'} is a list of {len(node)}; "
                    f"{part!r} is not an index of it (0 to {len(node) - 1})."
                )
            key = int(part)
        elif isinstance(node, dict):
            key = part
            if not last and key not in node:
                node[key] = {}
        else:
            raise StudyFileError(f"{where}set {dotted}: {'.'.join(parts[:i])} is {node!r}, not a mapping or a list.")
        if last:
            node[key] = value
        else:
            node = node[key]


def substitute(value, values: Mapping[str, str]):
    """``{study}``/``{seed}`` replaced in a string (``"{seed}"`` alone becomes the integer), inside lists and dicts."""
    if isinstance(value, str):
        if value == "{seed}" and "seed" in values:
            return int(values["seed"])
        return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), value)
    if isinstance(value, list):
        return [substitute(v, values) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, values) for k, v in value.items()}
    return value
