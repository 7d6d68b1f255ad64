"""A stand-in for ``wkd fit``/``wkd-ban``/``wkd-ir`` in the execution tests of ``wkd-study`` (test_study.py beside it):
started as ``python -m study_fake_command ...`` it leaves what the real command would (``summary.json``, a checkpoint,
``metrics.csv``; for ``wkd-ir`` a ``.pt`` file) in a fraction of a second.

Its derived config (``-c``) may hold ``fake: {best: 0.8, fail: true, sleep: 0.5}``. Every call is appended to
``<dir>/calls.jsonl`` (arguments, OMP_NUM_THREADS, start and end time).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import yaml


def option(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    return None


def main(args: list[str]) -> int:
    started = time.time()
    config = yaml.safe_load(Path(option(args, "-c")).read_text()) if option(args, "-c") else {}
    fake = (config or {}).get("fake") or ((config or {}).get("fit") or {}).get("fake") or {}
    time.sleep(float(fake.get("sleep", 0.3)))
    folder = Path(
        option(args, "--trainer.default_root_dir") or option(args, "--run_dir") or option(args, "--output_dir")
    )
    folder.mkdir(parents=True, exist_ok=True)
    call = {"args": args, "threads": os.environ.get("OMP_NUM_THREADS"), "start": started}
    if fake.get("fail"):
        print("Traceback (most recent call last):\nValueError: the fake run broke on purpose", flush=True)
        call["end"] = time.time()
        with open(folder / "calls.jsonl", "a") as f:
            f.write(json.dumps(call) + "\n")
        return 3
    best = float(fake.get("best", 0.5))
    if option(args, "--output_dir"):
        (folder / "cost.pt").write_bytes(b"")
    else:
        result = folder / "gen1" if option(args, "--run_dir") else folder
        result.mkdir(parents=True, exist_ok=True)
        (result / "checkpoints").mkdir(exist_ok=True)
        (result / "checkpoints" / "last.ckpt").write_bytes(b"")
        summary = {"best_val_top1": best, "last_val_top1": best - 0.01, "best_val_top5": 0.9, "last_val_top5": 0.89,
                   "epochs": 2, "complete": True}  # fmt: skip
        (result / "summary.json").write_text(json.dumps(summary))
        (result / "metrics.csv").write_text(f"epoch,step,val/top1\n0,1,{best - 0.1}\n1,2,{best}\n")
    call["end"] = time.time()
    with open(folder / "calls.jsonl", "a") as f:
        f.write(json.dumps(call) + "\n")
    print("fake run done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
