"""A SLURM job array for a study: one task per (run, seed), each ``wkd-study run -c FILE --only RUN --seed K``.

The steps (a teacher, its cost matrices) run once before the array: the same script with
``WKD_STUDY_PART=steps`` runs them as one job. Runs that need other runs (a Born-Again generation 0 that is the
vanilla run) come in later "waves": the task table is ordered wave by wave, and the written ``submit.sh`` submits
each wave as a slice of the array that starts after the previous one has ended (``afterany``: a failed task does not
hold the others back; a task whose needs did not finish is reported as such and fails).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from wkd_lightning.study.spec import StudySpec

#: The command each task runs (``python -m``: works whether or not the console script is on the task's PATH).
MODULE = "wkd_lightning.commands.study"


def waves(spec: StudySpec) -> dict[str, int]:
    """Run name -> wave: 0 for runs that need no other run, else one more than the latest run they need."""
    run_names = {r.name for r in spec.runs}
    needs = {r.name: [n for n in r.needs if n in run_names] for r in spec.runs}
    wave: dict[str, int] = {}

    def of(name: str) -> int:
        if name not in wave:
            wave[name] = 1 + max((of(n) for n in needs[name]), default=-1)
        return wave[name]

    for name in needs:
        of(name)
    return wave


def task_table(spec: StudySpec) -> list[tuple[str, int]]:
    """``[(run, seed), ...]``: array task ``i`` runs entry ``i``; wave by wave, then seed by seed, in file order."""
    wave = waves(spec)
    return [
        (run.name, seed)
        for w in sorted(set(wave.values()))
        for seed in spec.seeds
        for run in spec.runs
        if wave[run.name] == w
    ]


def wave_ranges(spec: StudySpec) -> list[tuple[int, int]]:
    """``[(first task, last task), ...]`` of each wave."""
    wave = waves(spec)
    ranges: list[tuple[int, int]] = []
    for i, (run, _) in enumerate(task_table(spec)):
        if ranges and wave[run] == wave[task_table(spec)[ranges[-1][0]][0]]:
            ranges[-1] = (ranges[-1][0], i)
        else:
            ranges.append((i, i))
    return ranges


def render(
    spec: StudySpec,
    *,
    script_path: Path,
    sbatch: Sequence[str] = (),
    python: str | None = None,
    workdir: Path | None = None,
) -> tuple[str, str]:
    """``(array script, submit.sh)`` for ``spec``; ``sbatch`` are extra ``#SBATCH`` options (``--partition=gpu``)."""
    table = task_table(spec)
    python = python or sys.executable
    workdir = (workdir or Path.cwd()).absolute()
    study_file = Path(spec.file).absolute()
    quick = " --quick" if spec.quick else ""
    logs = (workdir / spec.dir / "logs").absolute()
    steps = [s.name for s in spec.steps]
    lines = [
        "#!/bin/bash",
        f"# SLURM job array of the study {spec.name} ({study_file}{', --quick' if spec.quick else ''}), written by "
        "wkd-study slurm.",
        f"# {len(spec.runs)} runs x {len(spec.seeds)} seeds = {len(table)} tasks; task i runs "
        "`wkd-study run --only RUN --seed SEED` with RUN, SEED = TASK_RUN[i], TASK_SEED[i].",
        "# Submit with submit.sh beside this file (the steps first, then the runs wave by wave), or by hand:",
    ]
    lines += [f"#   {line}" for line in submit_lines(spec, script_path)]
    lines += [
        f"#SBATCH --job-name={spec.name}",
        f"#SBATCH --array=0-{len(table) - 1}",
        f"#SBATCH --output={logs}/slurm_%A_%a.out",
        *(f"#SBATCH {option}" for option in sbatch),
        "set -euo pipefail",
        f"cd {shlex.quote(str(workdir))}",
        f"PYTHON=${{PYTHON:-{shlex.quote(python)}}}",
        f"STUDY={shlex.quote(str(study_file))}",
        "THREADS=${SLURM_CPUS_PER_TASK:-1}",
        "TASK_RUN=(" + " ".join(shlex.quote(run) for run, _ in table) + ")",
        "TASK_SEED=(" + " ".join(str(seed) for _, seed in table) + ")",
        'if [[ "${WKD_STUDY_PART:-runs}" == steps ]]; then',
    ]
    if steps:
        lines.append(
            f'  exec "$PYTHON" -m {MODULE} run -c "$STUDY"{quick} --threads "$THREADS" --only '
            + " ".join(shlex.quote(s) for s in steps)
        )
    else:
        lines.append('  echo "the study has no steps"; exit 0')
    lines += [
        "fi",
        'i="${SLURM_ARRAY_TASK_ID:?this script is a job array: submit it with sbatch (see the top of the file)}"',
        'if (( i < 0 || i >= ${#TASK_RUN[@]} )); then echo "task $i: the array has ${#TASK_RUN[@]} tasks" >&2; '
        "exit 2; fi",
        f'exec "$PYTHON" -m {MODULE} run -c "$STUDY"{quick} --threads "$THREADS" --only "${{TASK_RUN[$i]}}" '
        '--seed "${TASK_SEED[$i]}"',
        "",
    ]
    submit = [
        "#!/bin/bash",
        f"# Submits {script_path.name}: the steps, then the runs wave by wave.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        *submit_lines(spec, script_path, here=True),
        "",
    ]
    return "\n".join(lines), "\n".join(submit)


def submit_lines(spec: StudySpec, script_path: Path, here: bool = False) -> list[str]:
    """The ``sbatch`` commands that submit the study (steps, then each wave after the previous one)."""
    script = script_path.name if here else str(script_path)
    lines, previous = [], None
    if spec.steps:
        lines.append(f"steps=$(sbatch --parsable --array=0 --export=ALL,WKD_STUDY_PART=steps {script})")
        previous = "afterok:$steps"
    for k, (first, last) in enumerate(wave_ranges(spec)):
        dependency = f" --dependency={previous}" if previous else ""
        lines.append(f"wave{k}=$(sbatch --parsable --array={first}-{last}{dependency} {script})")
        previous = f"afterany:$wave{k}"
    lines.append(
        'echo "submitted: '
        + " ".join(
            (["steps $steps"] if spec.steps else []) + [f"wave{k} $wave{k}" for k in range(len(wave_ranges(spec)))]
        )
        + '"'
    )
    return lines
