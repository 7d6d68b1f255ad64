"""``wkd-study``: run a multi-seed study from a study file, report it, or write a SLURM job array for it.

Usage::

    wkd-study run -c configs/studies/fashion_mnist.yaml               # every step and (run, seed) not yet complete
    wkd-study run -c configs/studies/fashion_mnist.yaml --quick       # the study file's quick variant (minutes)
    wkd-study run -c STUDY.yaml --jobs 2                              # two at a time, the cores split between them
    wkd-study run -c STUDY.yaml --only kd wkd_l --seed 0 1            # a part (what it needs must be complete)
    wkd-study run -c STUDY.yaml --dry_run                             # print the plan and the command lines
    wkd-study report -c STUDY.yaml                                    # tables (Markdown, JSON) and plots
    wkd-study slurm -c STUDY.yaml --sbatch=--partition=gpu --sbatch=--gres=gpu:1   # a job array + submit.sh

(``python -m wkd_lightning.commands.study`` is the same command.) The study file's format is in
:mod:`wkd_lightning.study.spec`; how tasks run, skip and resume in :mod:`wkd_lightning.study.execute`; the statistics
in :mod:`wkd_lightning.study.stats`. ``run`` exits with status 1 when a task failed (after running the others). Ctrl-C
or SIGTERM stops the running tasks, each saving its checkpoint, and exits with 130 or 143; the same command resumes.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from wkd_lightning.run.errors import user_errors_as_messages
from wkd_lightning.study.execute import default_threads, execute
from wkd_lightning.study.plan import command_line, plan, state
from wkd_lightning.study.report import build_report, markdown_table, report_paths, write_report
from wkd_lightning.study.slurm import render, task_table
from wkd_lightning.study.spec import load_study


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wkd-study",
        description="Multi-seed studies: run every (run, seed) of a study file once (skip what finished, resume what "
        "was cut off), report mean ± std and paired differences to a baseline, or write a SLURM job array.",
    )
    commands = parser.add_subparsers(dest="action", required=True, metavar="{run,report,slurm}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", required=True, type=Path, help="the study file (YAML).")
    common.add_argument("--quick", action="store_true", help="apply the study file's `quick:` section.")

    run = commands.add_parser("run", parents=[common], help="run the study's steps and runs.")
    run.add_argument("--jobs", type=int, default=1, help="tasks at a time on this machine (default 1).")
    run.add_argument("--threads", type=int, help="torch threads per task (default: the cores / --jobs).")
    run.add_argument("--only", nargs="+", metavar="NAME", help="only these steps or runs.")
    run.add_argument("--seed", nargs="+", type=int, metavar="K", help="only these seeds (of the study's).")
    run.add_argument("--dry_run", action="store_true", help="print what would run, and how; run nothing.")

    report = commands.add_parser("report", parents=[common], help="aggregate the finished runs.")
    report.add_argument("--out", type=Path, help="folder of the report files (default: the study's report_dir).")

    slurm = commands.add_parser("slurm", parents=[common], help="write a SLURM job array (one task per run x seed).")
    slurm.add_argument("--out", type=Path, help="the script to write (default <study dir>/slurm/<name>.sbatch).")
    slurm.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="OPTION",
        help="an #SBATCH option for every task, e.g. --sbatch=--gres=gpu:1 (repeatable).",
    )
    slurm.add_argument("--python", help="the Python the tasks run (default: this one).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wkd-study`` console script; returns the exit status."""
    with user_errors_as_messages():
        args = build_parser().parse_args(argv)
        spec = load_study(args.config, quick=args.quick)
        if args.action == "run":
            return run(spec, args)
        if args.action == "report":
            return report(spec, args)
        return slurm(spec, args)
    return 1  # not reached: user errors exit inside the context manager


def run(spec, args) -> int:
    if args.jobs < 1 or (args.threads is not None and args.threads < 1):
        raise ValueError(f"--jobs and --threads must be >= 1, got {args.jobs} and {args.threads}.")
    tasks = plan(spec, args.only, args.seed)
    threads = args.threads or spec.threads or default_threads(args.jobs)
    print(
        f"[study] {spec.name}{' (--quick)' if spec.quick else ''}: {len(spec.steps)} step(s), {len(spec.runs)} run(s) "
        f"x seeds {list(spec.seeds)} -> {spec.dir}; {len(tasks)} task(s) here, {args.jobs} at a time, "
        f"{threads} thread(s) each",
        flush=True,
    )
    if args.dry_run:
        for i, task in enumerate(tasks, 1):
            current = state(task)
            print(f"[study] ({i}/{len(tasks)}) {task.title}: {current}")
            if current != "complete":
                print("    " + shlex.join(command_line(spec, task, resume=current == "resume")))
        return 0
    # Ctrl-C raises KeyboardInterrupt even where the shell started this process with SIGINT ignored (a background
    # job): the training commands it starts stop on SIGINT whatever they inherit, so this one must notice it too.
    handlers = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: _raise_terminated}
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        outcome = execute(spec, tasks, jobs=args.jobs, threads=threads, say=lambda text: print(text, flush=True))
    except (KeyboardInterrupt, Terminated) as stop:
        signum = signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT
        print(
            f"[study] stopped ({signal.Signals(signum).name}). Run the same command again to go on: finished runs are "
            "skipped, the interrupted ones resume from their checkpoints.",
            flush=True,
        )
        return 128 + signum  # the shell's convention (Ctrl-C: 130, SIGTERM: 143), as `wkd fit` exits
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    quick = " --quick" if spec.quick else ""
    print(f"[study] report: wkd-study report -c {args.config}{quick}")
    return 1 if outcome.failed else 0


class Terminated(Exception):
    """SIGTERM to ``wkd-study run``, raised in its main loop so that the running tasks are stopped as for Ctrl-C."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


def report(spec, args) -> int:
    command = "wkd-study report -c " + str(args.config) + (" --quick" if spec.quick else "")
    content = build_report(spec, command)
    written = write_report(content, report_paths(spec, args.out))
    print(f"[study] report of {spec.name}: " + ", ".join(str(p) for p in written.values()))
    missing = [r["key"] for r in content["records"] if not r["complete"]]
    if missing:
        print(f"[study] not complete, left out: {', '.join(missing)}")
    print()
    print(markdown_table(content["runs"]))
    return 0


def slurm(spec, args) -> int:
    script_path = args.out or spec.dir / "slurm" / f"{spec.name}.sbatch"
    script, submit = render(spec, script_path=Path(script_path), sbatch=args.sbatch, python=args.python)
    script_path = Path(script_path)
    script_path.parent.mkdir(parents=True, exist_ok=True)
    script_path.write_text(script)
    submit_path = script_path.parent / "submit.sh"
    submit_path.write_text(submit)
    for path in (script_path, submit_path):
        path.chmod(0o755)
    (spec.dir / "logs").mkdir(parents=True, exist_ok=True)  # SLURM does not create the --output folder
    print(
        f"[study] wrote {script_path} ({len(task_table(spec))} array tasks: {len(spec.runs)} runs x "
        f"{len(spec.seeds)} seeds) and {submit_path}. Submit from a login node:\n    bash {submit_path}"
    )
    return 0


def cli_main() -> None:
    """Console-script wrapper: the exit status of :func:`main`."""
    if os.path.basename(sys.argv[0]) in ("study.py", "__main__.py"):  # python -m: name the command in messages
        sys.argv[0] = "wkd-study"
    sys.exit(main())


if __name__ == "__main__":
    cli_main()
