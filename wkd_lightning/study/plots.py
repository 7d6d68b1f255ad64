"""The plots of a study report (matplotlib, drawn off-screen): bars of best and last top-1 per run with every seed
as a dot, and the validation top-1 per epoch (mean over seeds)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def draw_bars(axes, rows: Sequence[dict], *, baseline: str | None = None) -> None:
    """Bars of mean best and last top-1 per run with ± std error bars, the seeds as dots, the baseline's mean line."""
    import numpy as np

    x = np.arange(len(rows))
    width = 0.38
    values = []
    for offset, key, colour in ((-width / 2, "best", "tab:blue"), (width / 2, "last", "tab:orange")):
        summaries = [row[f"{key}_top1"] for row in rows]
        means = [s["mean"] for s in summaries]
        errors = [s["std"] or 0.0 for s in summaries]
        axes.bar(x + offset, means, width, yerr=errors, capsize=3, color=colour, alpha=0.8, label=f"{key} top-1")
        for i, s in enumerate(summaries):
            seeds = list(s["per_seed"].values())
            axes.plot([x[i] + offset] * len(seeds), seeds, "k.", markersize=4)
            values += seeds
    reference = next((row for row in rows if row["run"] == baseline), None)
    if reference is not None:
        axes.axhline(
            reference["best_top1"]["mean"], color="grey", linestyle="--", linewidth=1, label=f"{baseline} mean best"
        )
    low, high = min(values), max(values)
    axes.set_ylim(max(0.0, low - 0.15 * (high - low) - 0.5), min(100.0, high + 0.15 * (high - low) + 0.5))
    axes.set_xticks(x, [row["run"] for row in rows], rotation=35, ha="right")
    axes.set_ylabel("validation top-1 (%)")
    axes.legend(fontsize=8, loc="best")
    axes.grid(axis="y", alpha=0.3)


def plot_bars(rows: Sequence[dict], path: Path, *, title: str = "", baseline: str | None = None) -> None:
    """:func:`draw_bars` into a PNG file."""
    figure = _figure(max(8.0, 0.8 * len(rows) + 3), 5.5)
    axes = figure.add_subplot()
    draw_bars(axes, rows, baseline=baseline)
    axes.set_title(title + "\nmean ± std over seeds (dots: seeds)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def mean_curve(per_seed: dict[str, list]):
    """``(epochs 1..E, mean over seeds, number of seeds)`` of per-seed curves (missing epochs ignored), or None."""
    import numpy as np

    series = [c for c in per_seed.values() if c]
    if not series:
        return None
    length = max(len(c) for c in series)
    table = np.full((len(series), length), np.nan)
    for row, curve in enumerate(series):
        table[row, : len(curve)] = [np.nan if v is None else v for v in curve]
    return np.arange(1, length + 1), np.nanmean(table, axis=0), len(series)


def draw_curves(full, zoom, curves: dict[str, dict[str, list]]) -> list:
    """Validation top-1 per epoch, mean over seeds, one line per run; ``zoom`` (optional) shows the second half of
    training, where the methods separate. Returns the lines (for a legend)."""
    import numpy as np
    from matplotlib import colormaps

    colours = colormaps["tab10"]
    styles = (("-", "o"), ("--", "s"), (":", "^"))
    zoom_values, lines = [], []
    for i, (name, per_seed) in enumerate(curves.items()):
        curve = mean_curve(per_seed)
        if curve is None:
            continue
        epochs, mean, count = curve
        linestyle, marker = styles[(i // 10) % len(styles)]
        style = dict(color=colours(i % 10), linestyle=linestyle, marker=marker, markersize=3, linewidth=1.3)
        lines += full.plot(epochs, mean, label=f"{name} ({count})", **style)
        if zoom is not None:
            start = max(0, (len(epochs) - 1) // 2)
            zoom.plot(epochs[start:], mean[start:], **style)
            zoom_values += [v for v in mean[start:] if np.isfinite(v)]
    for axes in (full, zoom):
        if axes is None:
            continue
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    full.set_ylabel("validation top-1 (%), mean over seeds")
    if zoom is not None and zoom_values:
        high = max(zoom_values)
        zoom.set_ylim(max(min(zoom_values), high - 8) - 0.3, high + 0.3)
    return lines


def plot_curves(curves: dict[str, dict[str, list]], path: Path, *, title: str = "") -> None:
    """:func:`draw_curves` (full run and zoom side by side) into a PNG file."""
    figure = _figure(15, 5.8)
    full, zoom = figure.subplots(1, 2)
    lines = draw_curves(full, zoom, curves)
    full.set_title(title, fontsize=9)
    zoom.set_title("second half of training (zoom)", fontsize=9)
    figure.legend(handles=lines, fontsize=7, loc="center right", title="run (seeds)", title_fontsize=7)
    figure.tight_layout(rect=(0, 0, 0.84, 1))
    figure.savefig(path, dpi=110)
