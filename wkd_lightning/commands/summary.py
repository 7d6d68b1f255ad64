"""``wkd summary RUN_DIR [RUN_DIR ...]``: one Markdown table of the best and last validation metrics of finished or
running fits (their ``summary.json``, written by :class:`~wkd_lightning.run.summary.RunSummary`)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from wkd_lightning.run.summary import METRIC_NAMES, read_summary


def format_table(run_dirs: Sequence[str | os.PathLike]) -> str:
    """A Markdown table of the best/last monitored metric (%, e.g. validation top-1) of the given runs, one row each;
    classifiers get their best/last top-5 too ("–" for a summary written before top-5 was recorded)."""
    summaries = [read_summary(run_dir) for run_dir in run_dirs]
    metric = summaries[0].get("metric", "val/top1") if summaries else "val/top1"
    keys = [metric.replace("/", "_")] + (["val_top5"] if metric == "val/top1" else [])
    names = [METRIC_NAMES.get(metric, metric)] + (["top-5"] if metric == "val/top1" else [])
    columns = [f"{when} {name} (%)" for name in names for when in ("best", "last")]
    lines = ["| " + " | ".join(["run", "losses", "epochs", *columns]) + " |", "|---" * (3 + len(columns)) + "|"]
    for run_dir, s in zip(run_dirs, summaries):
        if s.get("metric", "val/top1") != metric:
            raise ValueError(f"{run_dir} records {s.get('metric')} but {run_dirs[0]} records {metric}: one table each.")
        losses = ", ".join(s["losses"]) or "CE only"
        values = [s.get(f"{when}_{key}") for key in keys for when in ("best", "last")]
        cells = ["–" if value is None else f"{100 * value:.2f}" for value in values]
        lines.append("| " + " | ".join([Path(run_dir).name, losses, str(s["epochs"]), *cells]) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dirs", nargs="+", help="run directories written by `wkd fit` (trainer.default_root_dir)")
    print(format_table(parser.parse_args(argv).run_dirs))


if __name__ == "__main__":
    main()
