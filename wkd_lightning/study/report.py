"""The report of a study, from what its runs left on disk: each run's ``summary.json`` (best and last top-1 and
top-5), ``metrics.csv`` (validation top-1 per epoch) and ``study_task.json`` (time), and each ``wkd-ir`` step's cost
files (semantic scores).

Writes ``<report dir>/<name>.json`` (everything, per seed), ``<name>.md`` (the tables) and the plots
``<name>_top1.png`` (bars with seed dots) and ``<name>_curves.png`` (validation top-1 per epoch). Values are in %;
statistics in :mod:`wkd_lightning.study.stats`.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path

from wkd_lightning.study import plots, stats
from wkd_lightning.study.execute import format_seconds
from wkd_lightning.study.plan import Task, plan, read_task_record
from wkd_lightning.study.spec import StudySpec

#: Per-run values of the report: summary.json key -> report key.
METRICS = {
    "best_val_top1": "best_top1",
    "last_val_top1": "last_top1",
    "best_val_top5": "best_top5",
    "last_val_top5": "last_top5",
}
#: Values compared with the baseline, seed by seed.
COMPARED = ("best_top1", "last_top1")
FORMAT = "wkd-study report 1"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def record(task: Task) -> dict:
    """What one (run, seed) left: its summary values (fractions), whether it is complete, its time and folder."""
    summary = _read_json(task.result_dir / "summary.json")
    return {
        "key": task.key,
        "run": task.entry.name,
        "seed": task.seed,
        "dir": str(task.result_dir),
        "complete": bool(summary.get("complete")),
        "epochs": summary.get("epochs"),
        "seconds": read_task_record(task).get("seconds"),
        **{ours: summary.get(theirs) for theirs, ours in METRICS.items()},
    }


def read_val_curve(metrics_csv: Path, column: str = "val/top1") -> list[float | None]:
    """Validation top-1 (%) per epoch from a run's ``metrics.csv`` (index = epoch; the last value of an epoch wins,
    so rows written again after a resume do not duplicate it); ``[]`` when the file is missing."""
    path = Path(metrics_csv)
    if not path.is_file():
        return []
    by_epoch: dict[int, float] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            value = row.get(column)
            if value not in (None, "") and row.get("epoch") not in (None, ""):
                by_epoch[int(float(row["epoch"]))] = 100 * float(value)
    if not by_epoch:
        return []
    return [by_epoch.get(e) for e in range(max(by_epoch) + 1)]


def aggregate(spec: StudySpec, records: Sequence[dict]) -> list[dict]:
    """One row per run (in the study's order) over its complete seeds: mean ± std of every value of
    :data:`METRICS` (in %), the paired difference to its baseline for :data:`COMPARED`, runs near chance, time."""
    done: dict[str, dict[int, dict]] = {}
    for r in records:
        if r["complete"] and r.get("best_top1") is not None:
            done.setdefault(r["run"], {})[int(r["seed"])] = r
    near = spec.near_chance_top1
    rows = []
    for run in spec.runs:
        runs = done.get(run.name, {})
        seeds = sorted(runs)
        seconds = [runs[s]["seconds"] for s in seeds if runs[s].get("seconds") is not None]
        row = {
            "run": run.name,
            "label": run.label,
            "command": run.command,
            "configs": [str(c) for c in run.configs],
            "baseline": spec.baseline_of(run),
            "seeds": seeds,
            "n": len(seeds),
            "near_chance": [s for s in seeds if near is not None and runs[s]["best_top1"] < near],
            "seconds_mean": stats.mean_std(seconds)[0],
            "seconds_total": sum(seconds) if seconds else None,
        }
        for key in METRICS.values():
            row[key] = stats.summarise({s: 100 * runs[s][key] for s in seeds if runs[s].get(key) is not None})
        row["vs_baseline"] = None
        baseline = done.get(row["baseline"]) if row["baseline"] else None
        if baseline is not None:
            row["vs_baseline"] = {
                key: stats.compare(
                    {s: 100 * runs[s][key] for s in seeds},
                    {s: 100 * baseline[s][key] for s in baseline},
                )
                for key in COMPARED
            }
        rows.append(row)
    return rows


def steps_summary(spec: StudySpec) -> list[dict]:
    """Each step's status, time, and what it made (a fit: its top-1; wkd-ir: the semantic score of each file)."""
    result = []
    for task in plan(spec):
        if task.seed is not None:
            continue
        summary = _read_json(task.result_dir / "summary.json")
        item = {
            "step": task.entry.name,
            "command": task.entry.command,
            "dir": str(task.dir),
            "seconds": read_task_record(task).get("seconds"),
            "complete": bool(summary.get("complete"))
            if task.entry.command != "wkd-ir"
            else bool(read_task_record(task).get("complete")),
            "best_top1": summary.get("best_val_top1"),
            "last_top1": summary.get("last_val_top1"),
        }
        if task.entry.command == "wkd-ir":
            item["costs"] = read_ir_scores(task.dir)
        result.append(item)
    return result


def read_ir_scores(ir_dir: Path) -> dict[str, dict]:
    """``{method: {"score", "chance", "file"}}`` from the metadata of the ``wkd-ir`` files in ``ir_dir``."""
    import torch

    scores = {}
    for path in sorted(Path(ir_dir).glob("*.pt")):
        try:
            content = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a half-written or foreign file: not a cost of this study
            continue
        score = (content.get("semantic_score") if isinstance(content, dict) else None) or {}
        scores[path.stem] = {"score": score.get("score"), "chance": score.get("chance"), "file": str(path)}
    return scores


def build_report(spec: StudySpec, command: str = "") -> dict:
    """The report's content (the JSON file): settings, rows, every record, curves, steps."""
    tasks = [t for t in plan(spec) if t.seed is not None]
    records = [record(t) for t in tasks]
    curves: dict[str, dict[str, list]] = {}
    for task, r in zip(tasks, records):
        if r["complete"]:
            curves.setdefault(task.entry.name, {})[str(task.seed)] = read_val_curve(task.result_dir / "metrics.csv")
    steps = steps_summary(spec)
    seconds = [r["seconds"] for r in records if r.get("seconds")] + [s["seconds"] for s in steps if s.get("seconds")]
    return {
        "format": FORMAT,
        "study": spec.name,
        "title": spec.title,
        "notes": spec.notes,
        "study_file": str(spec.file),
        "quick": spec.quick,
        "study_dir": str(spec.dir),
        "generated": dt.datetime.now().isoformat(timespec="seconds"),
        "command": command,
        "seeds": list(spec.seeds),
        "baseline": spec.baseline,
        "chance": spec.chance,
        "near_chance": spec.near_chance_top1,
        "statistics": {"interval": stats.INTERVAL, "level": stats.LEVEL, "std": "sample standard deviation (n − 1)"},
        "wall_seconds": sum(seconds) if seconds else None,
        "steps": steps,
        "runs": aggregate(spec, records),
        "records": records,
        "curves": curves,
    }


# --------------------------------------------------------------------------------------------------------------------
# Markdown


def format_pm(mean: float | None, std: float | None, *, signed: bool = False) -> str:
    """``"84.50 ± 0.31"``; ``"84.50"`` without a spread (one seed); ``"–"`` without a value."""
    if mean is None:
        return "–"
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return f"{text} ± {std:.2f}" if std is not None else text


def format_difference(value: dict | None) -> str:
    """``+1.50 ± 0.71 [−4.85, +7.85] (holds 0)``: mean ± std of the paired differences, the 95 % interval, and a
    flag where the interval holds 0."""
    if not value or value.get("mean") is None:
        return "–"
    text = format_pm(value["mean"], value["std"], signed=True)
    if value.get("ci_low") is not None:
        text += f" [{value['ci_low']:+.2f}, {value['ci_high']:+.2f}]"
        if value["crosses_zero"]:
            text += " (holds 0)"
    return text


def markdown_table(rows: Sequence[dict]) -> str:
    """The main table: one row per run, mean ± std over seeds and the paired difference to its baseline."""
    lines = [
        "| run | what | seeds | best top-1 (%) | last top-1 (%) | best top-5 (%) | last top-5 (%) "
        "| best top-1 − baseline (paired, 95 % CI) | last top-1 − baseline (paired, 95 % CI) | near chance "
        "| time per run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        versus = row.get("vs_baseline") or {}
        baseline = f"vs {row['baseline']}: " if row.get("baseline") and versus else ""
        near = ", ".join(f"seed {s}" for s in row["near_chance"]) or "–"
        cells = [format_pm(row[key]["mean"], row[key]["std"]) for key in METRICS.values()]
        lines.append(
            f"| {row['run']} | {row['label']} | {row['n']} | {' | '.join(cells)} "
            f"| {baseline}{format_difference(versus.get('best_top1'))} "
            f"| {baseline}{format_difference(versus.get('last_top1'))} | {near} "
            f"| {format_seconds(row.get('seconds_mean'))} |"
        )
    return "\n".join(lines)


def per_seed_table(rows: Sequence[dict]) -> str:
    """Best / last top-1 (%) of every run, one column per seed."""
    seeds = sorted({int(s) for row in rows for s in row["best_top1"]["per_seed"]})
    lines = [
        "| run | " + " | ".join(f"seed {s} best / last" for s in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    for row in rows:
        cells = []
        for s in seeds:
            best, last = row["best_top1"]["per_seed"].get(str(s)), row["last_top1"]["per_seed"].get(str(s))
            cells.append("–" if best is None else f"{best:.2f} / {last:.2f}")
        lines.append(f"| {row['run']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def steps_table(steps: Sequence[dict]) -> str:
    lines = ["| step | command | status | result | time |", "|---|---|---|---|---|"]
    for s in steps:
        if s.get("costs"):
            result = ", ".join(f"{m}" for m in s["costs"]) + " (see the cost table)"
        elif s.get("best_top1") is not None:
            result = f"best top-1 {100 * s['best_top1']:.2f} %, last {100 * s['last_top1']:.2f} %"
        else:
            result = "–"
        status = "complete" if s["complete"] else "not complete"
        lines.append(f"| {s['step']} | `{s['command']}` | {status} | {result} | {format_seconds(s.get('seconds'))} |")
    return "\n".join(lines)


def ir_table(steps: Sequence[dict]) -> str:
    """Semantic score of each cost file of the ``wkd-ir`` steps beside its chance level."""
    lines = ["| step | cost | semantic score | chance |", "|---|---|---|---|"]
    for s in steps:
        for method, value in (s.get("costs") or {}).items():
            score = "n/a" if value.get("score") is None else f"{value['score']:.3f}"
            chance = "n/a" if value.get("chance") is None else f"{value['chance']:.3f}"
            lines.append(f"| {s['step']} | {method} | {score} | {chance} |")
    return "\n".join(lines)


def markdown_report(report: dict, images: dict[str, str] | None = None) -> str:
    """The whole Markdown report."""
    rows = report["runs"]
    missing = [r["key"] for r in report["records"] if not r["complete"]]
    near = report.get("near_chance")
    parts = [
        f"# {report['title']}" + (" (--quick check, not a result)" if report.get("quick") else ""),
        "",
        f"Generated {report['generated']} from `{report['study_file']}` (study directory `{report['study_dir']}`)"
        + (f" by `{report['command']}`" if report.get("command") else "")
        + ".",
        "",
    ]
    if report.get("notes"):
        parts += [report["notes"].strip(), ""]
    parts += [
        f"- Seeds {report['seeds']}; mean ± {report['statistics']['std']} over the seeds each run finished.",
        f"- Paired difference: the run − its baseline at the same seed (default baseline `{report['baseline']}`), "
        f"mean ± std over the seeds both finished, and its {report['statistics']['interval']} in brackets; "
        "'(holds 0)' marks an interval that contains 0: those seeds do not tell the two apart.",
        "- Near chance: best top-1 below "
        + ("n/a (the study file sets no chance level)" if near is None else f"{100 * near:.1f} %")
        + f". Training time of all steps and runs: {format_seconds(report.get('wall_seconds'))}.",
        "- Not complete (left out of the table): " + (", ".join(missing) if missing else "none") + ".",
        "",
        markdown_table(rows),
        "",
        "## Per seed (best / last top-1, %)",
        "",
        per_seed_table(rows),
        "",
    ]
    if report.get("steps"):
        parts += ["## Steps", "", steps_table(report["steps"]), ""]
        if any(s.get("costs") for s in report["steps"]):
            parts += [
                "## Cost matrices (wkd-ir)",
                "",
                "Semantic score: share of classes whose nearest class under the cost is in the same group.",
                "",
                ir_table(report["steps"]),
                "",
            ]
    if images:
        parts += ["## Plots", ""] + [f"![{title}]({name})" for title, name in images.items()] + [""]
    return "\n".join(parts)


def report_paths(spec: StudySpec, out: Path | None = None) -> dict[str, Path]:
    folder = Path(out) if out is not None else spec.reports
    return {
        "json": folder / f"{spec.name}.json",
        "md": folder / f"{spec.name}.md",
        "bars": folder / f"{spec.name}_top1.png",
        "curves": folder / f"{spec.name}_curves.png",
    }


def write_report(report: dict, paths: dict[str, Path]) -> dict[str, Path]:
    """Write the JSON, the Markdown and the plots (those that have data); returns the paths written."""
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    images, written = {}, {}
    rows = [r for r in report["runs"] if r["n"]]
    title = report["title"] + (" (--quick)" if report.get("quick") and "quick" not in report["title"] else "")
    if rows:
        plots.plot_bars(rows, paths["bars"], title=title, baseline=report.get("baseline"))
        images["top-1 per run"], written["bars"] = paths["bars"].name, paths["bars"]
    if any(any(c for c in per_seed.values()) for per_seed in report["curves"].values()):
        plots.plot_curves(report["curves"], paths["curves"], title=title)
        images["validation top-1 per epoch"], written["curves"] = paths["curves"].name, paths["curves"]
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["md"].write_text(markdown_report(report, images))
    return {"json": paths["json"], "md": paths["md"], **written}
