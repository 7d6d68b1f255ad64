"""Speed and peak memory of the fast shared-kernel WKD-L against the straightforward per-sample form (SPEC §1.5).

Both compute ``L_t + W`` (released Sinkhorn: ε = 0.05, 10 iterations, both ``+1e-8`` terms) and its gradient with
respect to the student logits, on the CPU, for (B, C) = (64, 100) and (256, 1000):

* ``per-sample``: ``reference_wkd_logit_loss`` of ``tests/losses/reference_wkd_logit.py`` (a Python loop over the
  batch building each sample's ``(C−1)×(C−1)`` kernel and plan; the test oracle, and the baseline of the targets);
* ``per-sample-batched``: ``reference_wkd_logit_loss_batched`` of the same file (the same per-sample problems stacked
  into ``B×(C−1)×(C−1)`` tensors, the layout of the released code);
* ``fast``: :func:`wkd_lightning.losses.wkd_logit_loss` (builds the shared ``C×C`` kernel on every call);
* ``plugin``: :class:`wkd_lightning.losses.WKDLogit`, which keeps the kernel as a buffer (what training uses).

One ablation of the plugin's Sinkhorn backward (the plugin's ``sinkhorn_cost`` swapped in the worker process):
``plugin-autograd``, plain autograd through the unrolled iterations written out here, against the plug-in's
hand-written backward. The committed results also show that backward's ``recompute`` option, removed after
``benchmarks/bench_sinkhorn_paths.py`` (it saved little memory for its extra matmuls).

Their times against ``plugin`` are also measured in one process, alternating the variants step by step
(``3 × --repeats`` rounds), so that the ratios are not skewed by load that changes between subprocesses.

Each (method, case) runs in a fresh subprocess so that memory figures do not mix. Peak memory is the increase of the
process's peak resident set size (``ru_maxrss``) during the first forward+backward, above the peak reached after
imports and input creation. PyTorch's CPU allocator has no statistics of its own and ``tracemalloc`` cannot see it,
so RSS is the honest measure: it counts everything the step touched (tensors, autograd buffers, allocator slack),
with page granularity, so differences of a few MiB are noise. As a second, exact figure the script also reports the
bytes of the distinct tensors autograd saves for the backward pass (``saved_tensors_hooks``), which dominate the peak
of the per-sample forms. Times are the median over ``--repeats`` runs after that first (warm-up) run.

Run::

    .venv/bin/python benchmarks/bench_wkd_logit.py            # full run, writes benchmarks/results/wkd_logit.{json,md}
    .venv/bin/python benchmarks/bench_wkd_logit.py --quick    # one timed repeat per case, same cases
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CASES = [(64, 100), (256, 1000)]
METHODS = ["per-sample", "per-sample-batched", "fast", "plugin", "plugin-autograd"]
BASELINES = ["per-sample", "per-sample-batched"]
FAST = ["fast", "plugin"]
#: Sinkhorn backward variants of the plugin, compared against the first (plain autograd).
VARIANTS = ["plugin-autograd", "plugin"]
TEMPERATURE = 2.0
TARGETS = {(64, 100): {"speedup": 10.0}, (256, 1000): {"speedup": 100.0, "memory_ratio": 100.0}}


def _peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _use_sinkhorn_backward(variant: str) -> None:
    """Make :class:`WKDLogit` use the Sinkhorn backward of ``variant`` (one of :data:`VARIANTS`) in this process."""
    import wkd_lightning.losses.wkd_logit as wkd_logit_module
    from wkd_lightning.losses.sinkhorn import sinkhorn_cost, sinkhorn_scalings

    def autograd_cost(a, b, u0, kernel, kernel_cost, iters, **kwargs):
        u, v = sinkhorn_scalings(a, b, u0, kernel, iters, **kwargs)
        return (u * (v @ kernel_cost.t())).sum(dim=1)

    wkd_logit_module.sinkhorn_cost = {"plugin-autograd": autograd_cost, "plugin": sinkhorn_cost}[variant]


def _inputs(batch: int, num_classes: int):
    """The benchmark's cost matrix, logits and labels (seeded)."""
    import torch

    from wkd_lightning.losses import sharpen_cost

    g = torch.Generator().manual_seed(0)
    d = torch.rand(num_classes, num_classes, generator=g)
    cost = sharpen_cost(((d + d.t()) / 2).fill_diagonal_(0.0), 1.0)
    z_s = (torch.randn(batch, num_classes, generator=g) * 3).requires_grad_()
    z_t = torch.randn(batch, num_classes, generator=g) * 3
    y = torch.randint(0, num_classes, (batch,), generator=g)
    return cost, z_s, z_t, y


def worker(method: str, batch: int, num_classes: int, repeats: int, threads: int | None) -> dict:
    """Measure one (method, case) in this process and return the figures."""
    import torch

    sys.path.insert(0, str(ROOT / "tests" / "losses"))
    from reference_wkd_logit import reference_wkd_logit_loss, reference_wkd_logit_loss_batched

    from wkd_lightning.losses import WKDLogit, wkd_logit_loss
    from wkd_lightning.losses.base import DistillationContext

    if threads:
        torch.set_num_threads(threads)
    cost, z_s, z_t, y = _inputs(batch, num_classes)
    plugin = None
    if method in VARIANTS:
        _use_sinkhorn_backward(method)
        plugin = WKDLogit(cost=cost, weight=1.0, temperature=TEMPERATURE, kappa=0.0)

    def forward() -> torch.Tensor:
        if method == "per-sample":
            return sum(reference_wkd_logit_loss(z_s, z_t, y, cost, TEMPERATURE))
        if method == "per-sample-batched":
            return sum(reference_wkd_logit_loss_batched(z_s, z_t, y, cost, TEMPERATURE))
        if method == "fast":
            return sum(wkd_logit_loss(z_s, z_t, y, cost, TEMPERATURE))
        out = plugin(DistillationContext(student_logits=z_s, teacher_logits=z_t, target=y))
        return out["target"] + out["wd"]

    def step() -> float:
        loss = forward()
        loss.backward()
        z_s.grad = None
        return float(loss.detach())

    base = _peak_rss_mib()
    start = time.perf_counter()
    value = step()
    first = time.perf_counter() - start
    peak = _peak_rss_mib() - base
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward().backward()
    return {
        "method": method,
        "batch": batch,
        "num_classes": num_classes,
        "loss": value,
        "first_run_s": first,
        "times_s": times,
        "median_s": statistics.median(times) if times else first,
        "peak_mib": peak,
        "autograd_saved_mib": sum(saved.values()) / 2**20,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "loadavg_end": os.getloadavg(),
    }


def interleaved_worker(batch: int, num_classes: int, rounds: int, threads: int | None) -> dict:
    """Times of the :data:`VARIANTS` in this process, alternating them step by step for ``rounds`` rounds."""
    import torch

    from wkd_lightning.losses import WKDLogit
    from wkd_lightning.losses.base import DistillationContext

    if threads:
        torch.set_num_threads(threads)
    cost, z_s, z_t, y = _inputs(batch, num_classes)
    plugin = WKDLogit(cost=cost, weight=1.0, temperature=TEMPERATURE, kappa=0.0)

    def step() -> float:
        out = plugin(DistillationContext(student_logits=z_s, teacher_logits=z_t, target=y))
        loss = out["target"] + out["wd"]
        loss.backward()
        z_s.grad = None
        return float(loss.detach())

    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    losses = {}
    for variant in VARIANTS:  # warm-up
        _use_sinkhorn_backward(variant)
        losses[variant] = step()
    for _ in range(rounds):
        for variant in VARIANTS:
            _use_sinkhorn_backward(variant)
            start = time.perf_counter()
            step()
            times[variant].append(time.perf_counter() - start)
    return {
        "times_s": times,
        "median_s": {v: statistics.median(t) for v, t in times.items()},
        "loss": losses,
        "loadavg_end": os.getloadavg(),
    }


def run_case(method: str, batch: int, num_classes: int, repeats: int, threads: int | None) -> dict:
    """Run :func:`worker` (or, for method ``"interleaved"``, :func:`interleaved_worker` with ``repeats`` rounds)
    in a fresh interpreter and parse its JSON line."""
    cmd = [sys.executable, __file__, "--worker", method, str(batch), str(num_classes), "--repeats", str(repeats)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {cmd} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one timed repeat per case (default: --repeats)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case after the warm-up run")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for wkd_logit.json and wkd_logit.md")
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "B", "C"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        method, batch, num_classes = args.worker[0], int(args.worker[1]), int(args.worker[2])
        if method == "interleaved":
            print(json.dumps(interleaved_worker(batch, num_classes, args.repeats, args.threads)))
        else:
            print(json.dumps(worker(method, batch, num_classes, args.repeats, args.threads)))
        return
    repeats = 1 if args.quick else args.repeats
    if repeats < 1:
        parser.error(f"--repeats must be >= 1, got {repeats}")

    load_start = os.getloadavg()
    rows = []
    for batch, num_classes in CASES:
        results = {}
        for method in METHODS:
            print(f"B={batch:4d} C={num_classes:5d} {method:10s} ...", end=" ", flush=True)
            res = run_case(method, batch, num_classes, repeats, args.threads)
            results[method] = res
            print(
                f"median {res['median_s'] * 1e3:10.2f} ms   peak RSS +{res['peak_mib']:9.1f} MiB   "
                f"autograd saved {res['autograd_saved_mib']:9.1f} MiB   loss {res['loss']:.6f}"
            )
        row = {"batch": batch, "num_classes": num_classes, "results": results, "ratios": {}}
        for base in BASELINES:
            ref = results[base]
            for method in FAST:
                row["ratios"][f"{method}_vs_{base}"] = {
                    "speedup": ref["median_s"] / results[method]["median_s"],
                    # A floor of 1 MiB: RSS deltas below that are page-granularity noise, not a measurement.
                    "memory_ratio": ref["peak_mib"] / max(results[method]["peak_mib"], 1.0),
                    "autograd_saved_ratio": ref["autograd_saved_mib"] / results[method]["autograd_saved_mib"],
                }
        print(f"B={batch:4d} C={num_classes:5d} {', '.join(VARIANTS)} interleaved ...", end=" ", flush=True)
        inter = run_case("interleaved", batch, num_classes, 3 * repeats, args.threads)
        base = results[VARIANTS[0]]
        row["backward_variants"] = {
            variant: {
                "median_s_interleaved": inter["median_s"][variant],
                "times_s_interleaved": inter["times_s"][variant],
                "time_ratio": inter["median_s"][variant] / inter["median_s"][VARIANTS[0]],
                "peak_mib": results[variant]["peak_mib"],
                "memory_ratio": base["peak_mib"] / max(results[variant]["peak_mib"], 1.0),
                "autograd_saved_mib": results[variant]["autograd_saved_mib"],
                "autograd_saved_ratio": base["autograd_saved_mib"] / results[variant]["autograd_saved_mib"],
            }
            for variant in VARIANTS
        }
        print(", ".join(f"{v} {inter['median_s'][v] * 1e3:.2f} ms" for v in VARIANTS))
        ref = results["per-sample"]
        row["max_rel_loss_diff"] = max(abs(results[m]["loss"] - ref["loss"]) / abs(ref["loss"]) for m in METHODS)
        row["targets"] = TARGETS[(batch, num_classes)]
        rows.append(row)

    meta = {
        "what": "forward+backward of L_t + W w.r.t. the student logits, eps=0.05, 10 iterations, tau=2, "
        "sharpened random symmetric cost",
        "memory": "increase of peak RSS (ru_maxrss) of a fresh subprocess during the first forward+backward, above "
        "its peak after imports and input creation; ratios floor the fast form's figure at 1 MiB",
        "time": f"median of {repeats} run(s) after one warm-up run",
        "repeats": repeats,
        "threads": rows[0]["results"]["fast"]["threads"],
        "torch": rows[0]["results"]["fast"]["torch"],
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "device": "cpu",
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "wkd_logit.json").write_text(json.dumps({"meta": meta, "cases": rows}, indent=2) + "\n")

    lines = [
        "# WKD-L: fast shared-kernel form vs per-sample form (CPU)",
        "",
        f"{meta['what']}; {meta['time']}; torch {meta['torch']}, {meta['threads']} threads, {meta['machine']}.",
        "System load average (1, 5, 15 min) at start "
        + ", ".join(f"{x:.2f}" for x in meta["loadavg_start"])
        + ", at end "
        + ", ".join(f"{x:.2f}" for x in meta["loadavg_end"])
        + " (load from other processes slows the timings, multi-threaded steps most).",
        f"Peak memory: {meta['memory']}. Autograd: bytes of the distinct tensors saved for the backward pass.",
        "",
        "| B | C | method | median ms | peak RSS MiB | autograd saved MiB |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        for method in METHODS:
            r = row["results"][method]
            lines.append(
                f"| {row['batch']} | {row['num_classes']} | {method} | {r['median_s'] * 1e3:.2f} | "
                f"{r['peak_mib']:.1f} | {r['autograd_saved_mib']:.1f} |"
            )
    lines += [
        "",
        "| B | C | comparison | speed-up | peak-RSS ratio | autograd-saved ratio |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        for key, ratio in row["ratios"].items():
            lines.append(
                f"| {row['batch']} | {row['num_classes']} | {key.replace('_vs_', ' vs ')} | {ratio['speedup']:.1f}× | "
                f"{ratio['memory_ratio']:.1f}× | {ratio['autograd_saved_ratio']:.1f}× |"
            )
    lines += [
        "",
        f"Sinkhorn backward of the plugin against plain autograd through the unrolled loop (`{VARIANTS[0]}`): time "
        f"is the median of {3 * repeats} steps per variant in one process, the variants alternating step by step "
        "(time ratio below 1 is faster); peak RSS and autograd-saved figures are those of the table above "
        "(ratios: autograd / variant, above 1 is less memory).",
        "",
        "| B | C | variant | median ms (interleaved) | time ratio | peak RSS MiB | peak-RSS ratio | "
        "autograd saved MiB | autograd-saved ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for variant, r in row["backward_variants"].items():
            lines.append(
                f"| {row['batch']} | {row['num_classes']} | {variant} | {r['median_s_interleaved'] * 1e3:.2f} | "
                f"{r['time_ratio']:.2f} | {r['peak_mib']:.1f} | {r['memory_ratio']:.2f}× | "
                f"{r['autograd_saved_mib']:.1f} | {r['autograd_saved_ratio']:.2f}× |"
            )
    lines += [
        "",
        "Largest relative difference of the loss value between methods: "
        + ", ".join(f"({row['batch']}, {row['num_classes']}): {row['max_rel_loss_diff']:.1e}" for row in rows)
        + ".",
        "",
        "Targets (task): ≥10× faster at (64, 100); ≥100× faster and ≥100× less peak memory at (256, 1000), against "
        "`per-sample`.",
    ]
    (args.out / "wkd_logit.md").write_text("\n".join(lines) + "\n")

    print()
    print("\n".join(lines[6:]))
    print()
    for row in rows:
        targets = row["targets"]
        for method in FAST:
            ratio = row["ratios"][f"{method}_vs_per-sample"]
            verdicts = [f"speed-up {ratio['speedup']:.1f}× (target ≥{targets['speedup']:g}×)"]
            if "memory_ratio" in targets:
                verdicts.append(f"peak-RSS ratio {ratio['memory_ratio']:.1f}× (target ≥{targets['memory_ratio']:g}×)")
            met = ratio["speedup"] >= targets["speedup"] and ratio["memory_ratio"] >= targets.get("memory_ratio", 0)
            print(
                f"(B={row['batch']}, C={row['num_classes']}) {method} vs per-sample: "
                + "; ".join(verdicts)
                + (" -> met" if met else " -> NOT met")
            )
    print(f"\nwrote {args.out / 'wkd_logit.json'} and {args.out / 'wkd_logit.md'}")


if __name__ == "__main__":
    main()
