"""Run the shipped commands as a user does (a subprocess, in its own process group) and fail instead of hanging.

Every process a command starts (Lightning's DDP ranks, torchrun's workers) stays in the command's process group, so
the runner can tell when *all* of them have ended, and kill the whole group when the time limit passes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


class CommandTimeout(AssertionError):
    """A command (or one of its processes) outlived its time limit; the whole process group was killed."""


@dataclass
class Finished:
    returncode: int
    output: str
    seconds: float


def command_env() -> dict[str, str]:
    """The test's environment, with the repository on PYTHONPATH (test callbacks are imported by class path) and one
    thread per process (several ranks share the CPU)."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    env.pop("LOCAL_RANK", None)
    return env


def start(args: list[str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
    """Start ``args`` (``wkd ...``; the command is looked up beside this Python) in a new session, output to ``log``."""
    executable = BIN / args[0] if (BIN / args[0]).exists() else args[0]
    with open(log, "w") as out:
        return subprocess.Popen(
            [str(executable), *args[1:]],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd or ROOT,
            env=command_env(),
            start_new_session=True,
        )


def group_alive(process: subprocess.Popen) -> bool:
    """Whether any process of ``process``'s group still runs (the leader is reaped first, so it is not a zombie)."""
    process.poll()
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_all(process: subprocess.Popen, log: Path, timeout: float) -> Finished:
    """Wait until every process of the group has ended; past ``timeout`` s kill the group and raise."""
    start_time = time.monotonic()
    while group_alive(process):
        if time.monotonic() - start_time > timeout:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise CommandTimeout(f"still running after {timeout:.0f} s (killed); output:\n{log.read_text()[-6000:]}")
        time.sleep(0.1)
    return Finished(process.wait(), log.read_text(), time.monotonic() - start_time)


def run(args: list[str], log: Path, timeout: float = 240, cwd: Path | None = None) -> Finished:
    """Run a command to the end of all its processes (see :func:`wait_all`)."""
    return wait_all(start(args, log, cwd), log, timeout)


def run_ok(args: list[str], log: Path, timeout: float = 240, cwd: Path | None = None) -> Finished:
    """:func:`run`, asserting exit status 0."""
    finished = run(args, log, timeout, cwd)
    assert finished.returncode == 0, f"{' '.join(args)} exited {finished.returncode}:\n{finished.output[-6000:]}"
    return finished


def wait_for(path: Path, process: subprocess.Popen, timeout: float) -> None:
    """Wait until ``path`` exists while ``process`` runs."""
    start_time = time.monotonic()
    while not path.exists():
        if process.poll() is not None or time.monotonic() - start_time > timeout:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError(f"{path} did not appear within {timeout} s (exit status {process.poll()}).")
        time.sleep(0.1)


def ranks(process: subprocess.Popen) -> list[int]:
    """The pids of the group other than the launcher (Lightning's ranks 1..N-1)."""
    out = subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in out if int(pid) != process.pid]
