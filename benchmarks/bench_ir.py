"""Speed of the batched IR cost matrices (SPEC §3) against a direct per-pair loop, at the paper's shapes, on the CPU.

Cases (features are synthetic, non-negative "ReLU" features with class-specific means; only shapes matter for speed):

* ``cifar100``: 100 classes × 32,000 rows × 256 (resnet32x4's last-stage 8×8 map of 500 images per class, every
  spatial position a row, as in the release); ``cka_paired`` uses the ``d×d`` block form here;
* ``imagenet``: 1,000 classes × 730 rows × 1,000 (teacher logits, each class truncated to the smallest class
  count); ``cka_paired`` uses the ``n×n`` Gram form here.

For each case:

* ``cka_paired`` batched: :func:`wkd_lightning.ir.cost_matrix` on all classes, timed once (it is the long part);
* the direct per-pair loop: ``cka_paired_pair`` of ``tests/ir/reference_ir.py`` (centre both classes, three
  GEMMs ``YᵀX``, ``XᵀX``, ``YᵀY`` per pair, as the formula reads) timed on a fixed random subset of pairs after one
  warm-up pair, then extrapolated to all ``C(C−1)/2`` pairs; the values on that subset are compared with the
  batched matrix (max absolute difference, target ≤ 1e-5);
* ``cov_align`` and ``class_mean_cosine`` batched, timed once (target for ``cov_align``: < 10 s at CIFAR shape).

Targets (issue 5): speed-up ≥ 3× at CIFAR shape and ≥ 100× at ImageNet shape, reported in wall-clock and in process
CPU time (the loop's pairs are timed half before and half after the batched run). Each case runs in a fresh subprocess;
its peak resident memory (``ru_maxrss``) is reported. The machine's load average is recorded before and after,
because timings on a shared machine are only as good as its quietness.

Run::

    .venv/bin/python benchmarks/bench_ir.py            # both cases, writes benchmarks/results/ir.{json,md}
    .venv/bin/python benchmarks/bench_ir.py --pairs 4  # fewer loop pairs (quicker, noisier extrapolation)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CASES = {
    "cifar100": {"classes": 100, "rows": 32_000, "dim": 256, "target_speedup": 3.0},
    "imagenet": {"classes": 1_000, "rows": 730, "dim": 1_000, "target_speedup": 100.0},
}
COV_ALIGN_TARGET_S = {"cifar100": 10.0}
VALUE_TARGET = 1e-5


def _peak_rss_gib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


def _timed(fn):
    """Run ``fn`` once; return its result, wall-clock seconds and this process's CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def _synthetic_features(classes: int, rows: int, dim: int, seed: int = 0):
    """Non-negative features with a class-specific mean pattern, generated class by class (one copy in memory)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(dim, generator=generator)
    features = []
    for _ in range(classes):
        pattern = base + 0.5 * torch.randn(dim, generator=generator)
        x = torch.randn(rows, dim, generator=generator)
        x.add_(pattern).clamp_(min=0)
        features.append(x)
    return features


def worker(case: str, pairs: int, seed: int) -> dict:
    """Measure one case in this process."""
    import torch

    sys.path.insert(0, str(ROOT / "tests" / "ir"))
    from reference_ir import cka_paired_pair

    from wkd_lightning.ir import cost_matrix

    shape = CASES[case]
    classes, rows, dim = shape["classes"], shape["rows"], shape["dim"]
    start = time.perf_counter()
    features = _synthetic_features(classes, rows, dim, seed)
    result: dict = {
        "case": case,
        "shape": {"classes": classes, "rows": rows, "dim": dim},
        "feature_gib": classes * rows * dim * 4 / 2**30,
        "generate_s": time.perf_counter() - start,
        "rss_after_features_gib": _peak_rss_gib(),
    }

    generator = torch.Generator().manual_seed(seed + 1)
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < pairs + 1:
        i, j = sorted(torch.randperm(classes, generator=generator)[:2].tolist())
        chosen.add((i, j))
    warm, *timed = sorted(chosen)
    n = min(x.shape[0] for x in features)
    cka_paired_pair(features[warm[0]], features[warm[1]], n)

    def loop(pair_list):
        return _timed(lambda: [float(cka_paired_pair(features[i], features[j], n)) for i, j in pair_list])

    # The loop's pairs are timed half before and half after the batched run, so that a change of load on the shared
    # machine during the (long) batched run affects both sides alike.
    half = len(timed) // 2
    values_before, wall_before, cpu_before = loop(timed[:half])
    batched, wall, cpu = _timed(lambda: cost_matrix(features, "cka_paired"))
    values_after, wall_after, cpu_after = loop(timed[half:])
    loop_values = values_before + values_after
    result.update(
        cka_paired_batched_s=wall,
        cka_paired_batched_cpu_s=cpu,
        cka_paired_form="gram (n×n)" if rows < dim else "d×d blocks",
        rss_after_cka_paired_gib=_peak_rss_gib(),
    )
    total_pairs = classes * (classes - 1) // 2
    per_pair, per_pair_cpu = (wall_before + wall_after) / len(timed), (cpu_before + cpu_after) / len(timed)
    exact = [float(cka_paired_pair(features[i].double(), features[j].double(), n)) for i, j in timed]  # untimed
    result.update(
        loop_pairs_timed=len(timed),
        loop_per_pair_s=per_pair,
        loop_per_pair_cpu_s=per_pair_cpu,
        loop_extrapolated_s=per_pair * total_pairs,
        total_pairs=total_pairs,
        speedup=per_pair * total_pairs / wall,
        speedup_cpu_time=per_pair_cpu * total_pairs / cpu,
        max_abs_difference=max(abs(v - float(batched[i, j])) for v, (i, j) in zip(loop_values, timed)),
        batched_vs_fp64_max_abs=max(abs(e - float(batched[i, j])) for e, (i, j) in zip(exact, timed)),
        loop_vs_fp64_max_abs=max(abs(e - v) for e, v in zip(exact, loop_values)),
        off_diagonal_range=[float(batched[~torch.eye(classes, dtype=torch.bool)].min()), float(batched.max())],
    )
    del batched

    for method in ("cov_align", "class_mean_cosine"):
        _, wall, cpu = _timed(lambda method=method: cost_matrix(features, method))
        result[f"{method}_s"], result[f"{method}_cpu_s"] = wall, cpu
    result["load_average_end"] = os.getloadavg()[0]
    result["peak_rss_gib"] = _peak_rss_gib()
    return result


def _table(results: list[dict]) -> str:
    lines = [
        "| case | C × n × d | cka_paired batched | direct loop (extrapolated) | speed-up wall / CPU time (target) "
        "| max abs diff batched vs loop | cov_align | class_mean_cosine | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r["shape"]
        target = CASES[r["case"]]["target_speedup"]
        lines.append(
            f"| {r['case']} | {s['classes']} × {s['rows']:,} × {s['dim']:,} | {r['cka_paired_batched_s']:.1f} s "
            f"(CPU {r['cka_paired_batched_cpu_s']:.0f} s; {r['cka_paired_form']}) | {r['loop_extrapolated_s']:,.0f} s "
            f"({r['loop_per_pair_s'] * 1e3:.1f} ms/pair × {r['total_pairs']:,}; {r['loop_pairs_timed']} pairs timed) "
            f"| **{r['speedup']:,.1f}× / {r['speedup_cpu_time']:,.1f}×** (≥ {target:g}×) "
            f"| {r['max_abs_difference']:.1e} (batched/loop vs fp64: {r['batched_vs_fp64_max_abs']:.0e} / "
            f"{r['loop_vs_fp64_max_abs']:.0e}) | {r['cov_align_s']:.1f} s (CPU {r['cov_align_cpu_s']:.1f} s) "
            f"| {r['class_mean_cosine_s']:.2f} s | {r['peak_rss_gib']:.1f} GiB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=12, help="pairs timed in the direct loop (after 1 warm-up)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.pairs, args.seed)))
        return

    import torch

    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_before": list(os.getloadavg()),
    }
    results = []
    for case in args.cases:
        print(f"running {case} ...", flush=True)
        out = subprocess.run(
            [sys.executable, __file__, "--worker", case, "--pairs", str(args.pairs), "--seed", str(args.seed)],
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(result, indent=2), flush=True)
        results.append(result)
    machine["load_average_after"] = list(os.getloadavg())
    checks = {f"{r['case']}_speedup_ok": r["speedup"] >= CASES[r["case"]]["target_speedup"] for r in results} | {
        f"{r['case']}_values_ok": r["max_abs_difference"] <= VALUE_TARGET for r in results
    }
    checks |= {
        f"{r['case']}_speedup_cpu_time_ok": r["speedup_cpu_time"] >= CASES[r["case"]]["target_speedup"] for r in results
    }
    checks |= {
        f"{r['case']}_cov_align_ok": r["cov_align_s"] < COV_ALIGN_TARGET_S[r["case"]]
        for r in results
        if r["case"] in COV_ALIGN_TARGET_S
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ir.json").write_text(json.dumps({"machine": machine, "results": results, "checks": checks}, indent=2))
    markdown = [
        "# IR cost matrices: batched vs. direct per-pair loop (`benchmarks/bench_ir.py`)",
        "",
        f"Machine: {machine['processor']}, {machine['cpu_count']} CPU cores, torch {machine['torch']} with "
        f"{machine['torch_threads']} threads; load average before/after "
        f"{machine['load_average_before'][0]:.1f} / {machine['load_average_after'][0]:.1f} (a shared machine: "
        "other jobs slow both columns).",
        "",
        _table(results),
        "",
        "Checks: " + ", ".join(f"{k} = {v}" for k, v in checks.items()),
        "",
        "The loop time is the mean over the timed pairs (half timed before, half after the batched run) times the "
        "number of pairs; the max abs diff compares the batched matrix with the loop on those pairs, and both with "
        "an fp64 evaluation of the same pairs. Speed-ups are given in wall-clock time and in this process's CPU "
        "time: on a shared machine the second is less disturbed by other jobs (both sides use the same 2 threads). "
        "`cov_align` and `class_mean_cosine` are timed on the same features (no loop baseline: they are "
        "pairing-free and have no released counterpart).",
    ]
    (RESULTS / "ir.md").write_text("\n".join(markdown) + "\n")
    print("\n".join(markdown))


if __name__ == "__main__":
    main()
