"""Run a study's tasks on one machine: each once, in order, up to ``jobs`` at a time, each in its own process.

* A task whose ``summary.json`` says complete (``wkd-ir``: its ``study_task.json``) is skipped; one that was cut off
  resumes (``--ckpt_path=last``; ``wkd-ban`` resumes per generation by itself; ``wkd-ir`` redoes its files with
  ``--overwrite=true``).
* A task starts once everything it needs is complete. When something it needs failed, it is not started and counts
  as failed too ("skipped: needs ...").
* Each process gets ``OMP_NUM_THREADS=threads`` (and MKL's): by default the machine's cores split between the jobs,
  so parallel runs do not fight over them.
* Every task's output goes to its log file; a failed task is reported with the last lines of its log and the others
  go on. :func:`execute` returns the failed tasks' keys.
* Ctrl-C (or SIGTERM, which ``wkd-study run`` turns into the same exception) stops the running tasks so that each
  saves its interrupt checkpoint (:func:`stop_running`); running the study again resumes them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wkd_lightning.run.summary import read_summary
from wkd_lightning.study.plan import (
    Task,
    all_tasks,
    command_line,
    is_done,
    read_task_record,
    state,
    write_config,
    write_task_record,
)
from wkd_lightning.study.spec import StudySpec

TAIL_LINES = 20
#: Seconds the running tasks get to stop by themselves after Ctrl-C before they are sent SIGTERM (see stop_running).
STOP_GRACE_S = 30.0


def default_threads(jobs: int) -> int:
    """The machine's cores split between ``jobs`` parallel runs (at least 1 each)."""
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def log_tail(log_file: Path, lines: int = TAIL_LINES) -> str:
    try:
        return "\n".join(Path(log_file).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Running:
    task: Task
    process: subprocess.Popen
    started: float
    number: int
    resumed: bool


@dataclass
class Outcome:
    """What :func:`execute` did: task keys by result."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # complete before
    failed: list[str] = field(default_factory=list)


def execute(
    spec: StudySpec,
    tasks: Sequence[Task],
    *,
    jobs: int = 1,
    threads: int | None = None,
    say: Callable[[str], None] = print,
    stop_grace: float = STOP_GRACE_S,
) -> Outcome:
    """Run ``tasks`` (see the module docstring); returns what was run, skipped and failed.

    On Ctrl-C (any exception) the running tasks are stopped with :func:`stop_running` (``stop_grace`` seconds to stop
    by themselves) and the exception propagates."""
    jobs = max(1, jobs)
    threads = threads or spec.threads or default_threads(jobs)
    selected = {t.key for t in tasks}
    total = len(tasks)
    outcome = Outcome()
    done: set[str] = set()
    bad: dict[str, str] = {}  # key -> why (failed, or skipped for a failed need)
    waiting = list(tasks)
    running: list[Running] = []
    number = 0
    start = time.monotonic()

    def elapsed() -> str:
        return format_seconds(time.monotonic() - start)

    for task in list(waiting):  # finished earlier: nothing to start
        if is_done(task):
            number += 1
            waiting.remove(task)
            done.add(task.key)
            outcome.skipped.append(task.key)
            say(f"[study] ({number}/{total}) {task.title}: complete, skipped ({result_text(task)})")

    try:
        while waiting or running:
            for task in list(waiting):
                if len(running) >= jobs:
                    break
                needs = task.need_keys(spec)
                failed_needs = [n for n in needs if n in bad]
                missing = [n for n in needs if n not in selected and n not in done and not _done_key(spec, n)]
                if failed_needs or missing:
                    number += 1
                    waiting.remove(task)
                    if failed_needs:
                        why = f"skipped: needs {', '.join(failed_needs)}, which did not finish"
                    else:
                        why = (
                            f"skipped: needs {', '.join(missing)}, which is not complete and not part of this "
                            "invocation (run it first, e.g. without --only)"
                        )
                    bad[task.key] = why
                    outcome.failed.append(task.key)
                    say(f"[study] ({number}/{total}) {task.title}: {why}")
                    continue
                if all(n in done or (n not in selected and _done_key(spec, n)) for n in needs):
                    number += 1
                    waiting.remove(task)
                    running.append(_start(spec, task, number, total, threads, say, elapsed))
            if not running:
                if waiting:  # cannot happen with an acyclic study; guard against a silent hang
                    raise RuntimeError(f"no task can start: {[t.key for t in waiting]}")
                break
            time.sleep(0.2)
            for item in list(running):
                if item.process.poll() is None:
                    continue
                running.remove(item)
                if _finish(item, say, elapsed, total):
                    done.add(item.task.key)
                    outcome.ran.append(item.task.key)
                else:
                    bad[item.task.key] = "failed"
                    outcome.failed.append(item.task.key)
    except BaseException:
        stop_running(running, say, stop_grace)
        raise
    say(
        f"[study] done in {elapsed()}: {len(outcome.ran)} ran, {len(outcome.skipped)} complete before, "
        f"{len(outcome.failed)} failed" + (f" ({', '.join(outcome.failed)})" if outcome.failed else "") + "."
    )
    return outcome


def stop_running(running: Sequence[Running], say: Callable[[str], None], grace: float = STOP_GRACE_S) -> None:
    """Stop the running tasks so that each saves its interrupt checkpoint, and record their training time.

    Ctrl-C in a terminal (or a scheduler's signal to the whole job) reaches the tasks too, and a training command
    that gets a second signal stops at once, inside its step. So the tasks first get ``grace`` seconds to stop by
    themselves; only those still running then are sent SIGTERM (one signal: a graceful stop at the next step), and
    killed if they have not ended 60 s later.
    """
    alive = [item for item in running if item.process.poll() is None]
    if alive:
        say(f"[study] stopping: {len(alive)} running task(s) save their state first (Ctrl-C again: at once)")
    deadline = time.monotonic() + grace
    while any(item.process.poll() is None for item in alive) and time.monotonic() < deadline:
        time.sleep(0.2)
    for item in alive:
        if item.process.poll() is None:
            item.process.send_signal(signal.SIGTERM)
    for item in running:
        try:
            item.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            item.process.kill()
            item.process.wait()
        _add_seconds(item)


def _done_key(spec: StudySpec, key: str) -> bool:
    task = all_tasks(spec).get(key)
    return task is not None and is_done(task)


def _start(spec: StudySpec, task: Task, number: int, total: int, threads: int, say, elapsed) -> Running:
    current = state(task)
    for folder, target in task.entry.link.items():
        _link(task.dir / folder, task.dir.parent.parent / target / f"seed{task.seed}")
    write_config(spec, task)
    command = command_line(spec, task, resume=current == "resume")
    task.log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    verb = "resuming" if current == "resume" else "starting"
    say(f"[study] ({number}/{total}) {task.title}: {verb} in {task.dir} (log {task.log}; elapsed {elapsed()})")
    with open(task.log, "a") as log:
        log.write(f"\n$ OMP_NUM_THREADS={threads} {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    return Running(task, process, time.monotonic(), number, current == "resume")


def _add_seconds(item: Running) -> float:
    seconds = time.monotonic() - item.started + float(read_task_record(item.task).get("seconds") or 0.0)
    write_task_record(item.task, seconds=seconds)
    return seconds


def _finish(item: Running, say, elapsed, total: int) -> bool:
    task, status = item.task, item.process.returncode
    seconds = _add_seconds(item)
    ok = status == 0 and (is_done(task) if task.entry.command != "wkd-ir" else True)
    if ok and task.entry.command == "wkd-ir":
        write_task_record(task, complete=True)
    if ok:
        say(
            f"[study] ({item.number}/{total}) {task.title}: done in {format_seconds(seconds)}, {result_text(task)} "
            f"(elapsed {elapsed()})"
        )
        return True
    why = (
        f"exit status {status}" if status != 0 else f"exit status 0 but {task.result_dir}/summary.json is not complete"
    )
    say(
        f"[study] ({item.number}/{total}) {task.title}: FAILED ({why}) after {format_seconds(seconds)}; "
        f"last lines of {task.log}:\n{log_tail(task.log)}"
    )
    return False


def result_text(task: Task) -> str:
    if task.entry.command == "wkd-ir":
        return f"{len(list(task.dir.glob('*.pt')))} cost file(s) in {task.dir}"
    try:
        summary = read_summary(task.result_dir)
    except (OSError, ValueError):
        return "no summary"
    best, last = summary.get("best_val_top1"), summary.get("last_val_top1")
    if best is None:
        return "no top-1 recorded"
    return f"best top-1 {100 * best:.2f} %, last {100 * last:.2f} %"


def _link(link: Path, target: Path) -> None:
    """``link`` becomes a relative symbolic link to ``target`` (kept when it is one already)."""
    relative = os.path.relpath(target, link.parent)
    if link.is_symlink():
        if os.readlink(link) == relative:
            return
        link.unlink()
    elif link.exists():
        raise FileExistsError(f"{link} exists and is not the link to {target} that the study makes; remove it.")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(relative, target_is_directory=True)
