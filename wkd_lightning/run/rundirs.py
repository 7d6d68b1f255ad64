"""Where a ``wkd``/``wkd-det`` command writes: a fit never clobbers an earlier run, an evaluation never touches it.

* A **fresh fit** (no ``--ckpt_path``) into a run directory that already holds the work of an earlier fit (a
  checkpoint under ``checkpoints/`` or a ``summary.json``) would overwrite ``best.ckpt``, ``last.ckpt`` and
  ``summary.json``. It is refused with the two ways on: resume (``--ckpt_path last``) or ``--new_version true``,
  which starts over in the first free ``<run dir>/version_<N>`` (as Lightning's loggers number versions).
* ``validate``/``test``/``predict`` write their ``config.yaml`` and ``metrics.csv`` into
  ``<run dir>/<subcommand>/<time stamp>``, so the run's own config and metrics stay those of its training.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from wkd_lightning.run.summary import SUMMARY_FILE

#: The subcommands that evaluate a run and write beside it.
EVALUATION_COMMANDS = ("validate", "test", "predict")


def earlier_fit_files(run_dir: str | os.PathLike) -> list[str]:
    """The files of an earlier fit in ``run_dir`` that a fresh fit would overwrite (checkpoints, summary.json)."""
    run_dir = Path(run_dir)
    found = sorted(str(p) for p in (run_dir / "checkpoints").glob("*.ckpt"))
    if (run_dir / SUMMARY_FILE).is_file():
        found.append(str(run_dir / SUMMARY_FILE))
    return found


def next_version_dir(run_dir: str | os.PathLike) -> str:
    """``<run_dir>/version_<N>`` with the smallest N whose folder holds no earlier fit (0, 1, ...)."""
    n = 0
    while earlier_fit_files(os.path.join(run_dir, f"version_{n}")):
        n += 1
    return os.path.join(os.fspath(run_dir), f"version_{n}")


def refuse_used_run_dir(run_dir: str | os.PathLike, command: str = "wkd fit") -> None:
    """Raise when ``run_dir`` holds an earlier fit, naming what is there and both ways on.

    Raises:
        FileExistsError: ``run_dir`` has checkpoints or a summary.json.
    """
    files = earlier_fit_files(run_dir)
    if files:
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        raise FileExistsError(
            f"the run directory {os.fspath(run_dir)!r} already holds an earlier fit ({shown}); a new fit there would "
            f"overwrite them. Resume it with `{command} ... --ckpt_path last`, start over in "
            f"{next_version_dir(run_dir)!r} with `--new_version true`, or pass another --trainer.default_root_dir."
        )


def evaluation_dir(run_dir: str | os.PathLike, subcommand: str) -> str:
    """``<run_dir>/<subcommand>/<YYYYmmdd-HHMMSS>`` (a suffix ``-1``, ``-2``... when that exists already)."""
    base = os.path.join(os.fspath(run_dir), subcommand, time.strftime("%Y%m%d-%H%M%S"))
    path, n = base, 0
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


def shared_across_ranks(variable: str, choose) -> str:
    """``choose()`` on the launching process, remembered in the environment variable ``variable`` for the ranks it
    starts (Lightning's launcher copies the environment; they parse the command again a few seconds later, and must
    not pick another time stamp or version)."""
    if os.environ.get("LOCAL_RANK", "0") != "0" and os.environ.get(variable):
        return os.environ[variable]
    os.environ[variable] = path = choose()
    return path
