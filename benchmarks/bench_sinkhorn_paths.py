"""Time and peak memory of the WKD-L Sinkhorn paths, to decide which ones earn their lines (issue part 4).

Each variant runs forward+backward of the WKD-L non-target term ``W`` (SPEC §1.4-1.5: masked softmax of the logits at
τ = 2, the released iteration with ε = 0.05, 10 iterations and both ``+1e-8`` terms, ``W`` the batch mean) with
respect to the student logits, fp32, on a realistic cost: a random ``D`` sharpened with κ = 1 (``1 − exp(−κ·4U)``,
``U`` uniform, so entries in ``[0, 1)``), zero diagonal. The shared kernel ``K`` and ``K∘M`` are built before the
measurement, as the plug-in keeps them as buffers. Variants:

* ``handwritten``: :func:`~wkd_lightning.losses.sinkhorn.sinkhorn_cost` with its hand-written backward;
* ``autograd``: plain autograd through the unrolled iterations (:func:`~wkd_lightning.losses.sinkhorn.sinkhorn_scalings`
  and the final sum);
* ``fp64-logscaled``: :func:`~wkd_lightning.losses.sinkhorn.sinkhorn_cost_stable`, the path the automatic switch
  takes when ``exp(−M/ε)`` underflows in fp32 (forced here on the same cost: its time and memory do not depend on
  the cost's values);
* the switch's host read (:func:`~wkd_lightning.losses.sinkhorn.kernel_underflows`, which ``wkd_logit_loss`` runs on
  every call and the plug-in once when its cost is set), timed on its own (median of 5).

Peak memory: each variant runs in a fresh subprocess; after the set-up the process's peak RSS (``VmHWM``) is reset
(``/proc/self/clear_refs``, Linux), and the figure is the peak during the first forward+backward minus the RSS just
before it. PyTorch's CPU allocator keeps no statistics and ``tracemalloc`` cannot see it, so RSS is the measure: it
counts every tensor and temporary the step touched, with page granularity. Times: at C = 1,000 the median of
``--repeats`` steps after the first, and the variants are also timed alternating step by step in one process (the
ratios come from that run); at C = 21,841 one step per variant (each takes minutes on two cores), in subprocesses run
one after the other. The fp64 path at C = 21,841 needs three fp64 ``C×C`` matrices (11.4 GB) and runs only with
``--fp64-large``.

The measurement decided the issue: the hand-written backward stayed (about half the step's peak memory, the same
time) and the fp64 path and its switch were removed (the reasons are in :mod:`wkd_lightning.losses.sinkhorn`), so the
script runs at commit :data:`MEASURED_AT`, where all three paths exist, and stops with that hint at later ones. The
committed results are from that commit.

Run (at that commit, e.g. ``git worktree add /tmp/sinkhorn-paths 3dffa12``)::

    .venv/bin/python benchmarks/bench_sinkhorn_paths.py            # writes benchmarks/results/sinkhorn_paths.{json,md}
    .venv/bin/python benchmarks/bench_sinkhorn_paths.py --small    # C = 1,000 only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BATCH = 256
SMALL, LARGE = 1000, 21841
VARIANTS = ["handwritten", "autograd", "fp64-logscaled"]
EPS, ITERS, TEMPERATURE, KAPPA = 0.05, 10, 2.0, 1.0
#: The last commit with all three Sinkhorn paths, on which the committed results were measured.
MEASURED_AT = "3dffa12"


#: What the figures decided (recorded in :mod:`wkd_lightning.losses.sinkhorn`), written under the tables.
DECISION = (
    "Decision (recorded in `wkd_lightning/losses/sinkhorn.py`): the hand-written backward is kept, for about half the "
    "step's peak memory at the same time (and gradients bit for bit those of earlier versions); the fp64 log-scaled "
    "path and its automatic switch are removed: slower, 8× the memory, and not needed with the released `+1e-8` terms."
)


def _rss_mib(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` (peak) of this process, in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**10
    raise RuntimeError(f"no {field} in /proc/self/status (this benchmark needs Linux)")


def _setup(batch: int, num_classes: int):
    """Logits, labels, ``M``, ``K`` and ``K∘M`` (seeded); the ``C×C`` matrices are built in place to keep the set-up
    peak low at C = 21,841."""
    import torch

    g = torch.Generator().manual_seed(0)
    cost = torch.rand(num_classes, num_classes, generator=g).mul_(-4 * KAPPA).exp_().neg_().add_(1.0)
    cost_m = cost.fill_diagonal_(0.0).relu_().add_(1e-8)  # M = relu(D) + 1e-8, D sharpened into [0, 1)
    kernel = torch.div(cost_m, -EPS).exp_()
    kernel_cost = kernel * cost_m
    z_s = (torch.randn(batch, num_classes, generator=g) * 3).requires_grad_()
    z_t = torch.randn(batch, num_classes, generator=g) * 3
    y = torch.randint(0, num_classes, (batch,), generator=g)
    return z_s, z_t, y, cost_m, kernel, kernel_cost


def _step_fn(variant: str, z_s, z_t, y, cost_m, kernel, kernel_cost):
    """A function running one forward+backward of ``W`` by ``variant``; returns ``(W, ∂W/∂z_s)``."""
    import math

    import torch
    import torch.nn.functional as F

    from wkd_lightning.losses.sinkhorn import initial_scaling, sinkhorn_cost, sinkhorn_cost_stable, sinkhorn_scalings

    mask = torch.zeros_like(z_s, dtype=torch.bool).scatter_(1, y.unsqueeze(1), True)
    u0 = initial_scaling(mask)

    def step():
        masked_s = (z_s / TEMPERATURE).masked_fill(mask, -math.inf)
        masked_t = (z_t / TEMPERATURE).masked_fill(mask, -math.inf)
        if variant == "fp64-logscaled":
            log_a, log_b = F.log_softmax(masked_s, dim=1), F.log_softmax(masked_t, dim=1)
            w = sinkhorn_cost_stable(log_a, log_b, u0, cost_m, EPS, ITERS)
        else:
            a, b = F.softmax(masked_s, dim=1), F.softmax(masked_t, dim=1)
            if variant == "handwritten":
                w = sinkhorn_cost(a, b, u0, kernel, kernel_cost, ITERS)
            else:
                u, v = sinkhorn_scalings(a, b, u0, kernel, ITERS)
                w = (u * (v @ kernel_cost.t())).sum(dim=1)
        w = w.mean()
        (grad,) = torch.autograd.grad(w, z_s)
        return w.detach(), grad

    return step


def worker(variant: str, batch: int, num_classes: int, repeats: int) -> dict:
    """Peak memory and times of one variant in this (fresh) process."""
    import torch

    from wkd_lightning.losses.sinkhorn import kernel_underflows

    inputs = _setup(batch, num_classes)
    step = _step_fn(variant, *inputs)
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM to the current RSS
    before = _rss_mib("VmRSS")
    start = time.perf_counter()
    w, _ = step()
    first = time.perf_counter() - start
    peak = _rss_mib("VmHWM") - before
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    reads = []
    for _ in range(5):
        start = time.perf_counter()
        kernel_underflows(inputs[3], EPS)
        reads.append(time.perf_counter() - start)
    return {
        "variant": variant,
        "w": float(w),
        "first_s": first,
        "median_s": statistics.median(times) if times else first,
        "peak_mib": peak,
        "host_read_s": statistics.median(reads),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def interleaved(batch: int, num_classes: int, rounds: int) -> dict:
    """Times of every variant alternating step by step in one process, and their values against ``handwritten``."""
    inputs = _setup(batch, num_classes)
    steps = {variant: _step_fn(variant, *inputs) for variant in VARIANTS}
    results = {variant: step() for variant, step in steps.items()}  # warm-up; values compared below
    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for _ in range(rounds):
        for variant, step in steps.items():
            start = time.perf_counter()
            step()
            times[variant].append(time.perf_counter() - start)
    w_ref, grad_ref = results[VARIANTS[0]]
    return {
        "median_s": {v: statistics.median(t) for v, t in times.items()},
        "w_rel_diff": {v: abs(float(w - w_ref)) / abs(float(w_ref)) for v, (w, _) in results.items()},
        "grad_rel_diff": {
            v: float((g.double() - grad_ref.double()).abs().max() / grad_ref.abs().max())
            for v, (_, g) in results.items()
        },
    }


def _run(args: list[str]) -> dict:
    """Run this script's worker with ``args`` in a fresh interpreter and parse its JSON line."""
    cmd = [sys.executable, __file__, "--worker", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {cmd} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _markdown(meta: dict, cases: list[dict]) -> str:
    lines = [
        "# WKD-L Sinkhorn paths: hand-written backward, autograd, fp64 log-scaled (CPU only)",
        "",
        f"{meta['what']} No GPU was lent to this task: every figure is a CPU figure ({meta['machine']}, "
        f"{meta['threads']} threads, torch {meta['torch']}); load average (1, 5, 15 min) at start "
        + ", ".join(f"{x:.2f}" for x in meta["loadavg_start"])
        + ", at end "
        + ", ".join(f"{x:.2f}" for x in meta["loadavg_end"])
        + f". Peak memory: {meta['memory']} Time: {meta['time']}",
        "",
        "| B | C | variant | time ms | time ratio | step peak RSS MiB | peak ratio | W rel. diff | grad rel. diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        base = case["results"][VARIANTS[0]]
        for variant, r in case["results"].items():
            ms = case.get("interleaved", {}).get("median_s", {}).get(variant, r["median_s"])
            base_ms = case.get("interleaved", {}).get("median_s", {}).get(VARIANTS[0], base["median_s"])
            diffs = case.get("interleaved", {})
            w_diff = f"{diffs['w_rel_diff'][variant]:.1e}" if diffs else "–"
            g_diff = f"{diffs['grad_rel_diff'][variant]:.1e}" if diffs else "–"
            lines.append(
                f"| {BATCH} | {case['num_classes']} | {variant} | {ms * 1e3:.0f} | {ms / base_ms:.2f} | "
                f"{r['peak_mib']:.0f} | {r['peak_mib'] / base['peak_mib']:.2f} | {w_diff} | {g_diff} |"
            )
    lines += ["", "The automatic switch's host read (max M/ε, one host synchronisation), against a step:", ""]
    lines += ["| B | C | host read ms | share of a hand-written step |", "|---|---|---|---|"]
    for case in cases:
        r = case["results"][VARIANTS[0]]
        lines.append(
            f"| {BATCH} | {case['num_classes']} | {r['host_read_s'] * 1e3:.2f} | "
            f"{r['host_read_s'] / r['median_s'] * 100:.2f} % |"
        )
    lines += ["", "Ratios are against `handwritten` (above 1: slower or more memory); diffs are the largest "]
    lines[-1] += "differences of W and of its gradient from `handwritten`'s, relative to their largest entry."
    lines += ["", DECISION]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant at C = 1,000")
    parser.add_argument("--small", action="store_true", help="C = 1,000 only")
    parser.add_argument("--fp64-large", action="store_true", help="also run the fp64 path at C = 21,841")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for sinkhorn_paths.json and .md")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from wkd_lightning.losses import sinkhorn

    if not hasattr(sinkhorn, "sinkhorn_cost_stable"):
        parser.exit(
            2,
            f"{parser.prog}: the fp64 path this benchmark compares was removed after it decided between the paths; "
            f"run it at commit {MEASURED_AT} (git worktree add /tmp/sinkhorn-paths {MEASURED_AT}).\n",
        )
    if args.worker:
        kind, variant, num_classes, repeats = args.worker[0], args.worker[1], int(args.worker[2]), int(args.worker[3])
        result = interleaved(BATCH, num_classes, repeats) if kind == "interleaved" else None
        print(json.dumps(result or worker(variant, BATCH, num_classes, repeats)))
        return
    load_start = os.getloadavg()
    cases = []
    for num_classes in [SMALL] if args.small else [SMALL, LARGE]:
        large = num_classes == LARGE
        variants = VARIANTS if not large or args.fp64_large else VARIANTS[:2]
        case = {"num_classes": num_classes, "results": {}}
        for variant in variants:
            print(f"B={BATCH} C={num_classes} {variant} ...", end=" ", flush=True)
            r = _run(["single", variant, str(num_classes), str(0 if large else args.repeats)])
            case["results"][variant] = r
            print(f"{r['median_s'] * 1e3:.0f} ms, step peak RSS +{r['peak_mib']:.0f} MiB, W {r['w']:.6f}", flush=True)
        if not large:
            case["interleaved"] = _run(["interleaved", "-", str(num_classes), str(3 * args.repeats)])
            print("interleaved:", case["interleaved"], flush=True)
        cases.append(case)
    first = cases[0]["results"][VARIANTS[0]]
    meta = {
        "what": f"Forward+backward of W at B = {BATCH} (fp32, eps = {EPS}, {ITERS} iterations, tau = {TEMPERATURE}, "
        f"cost sharpened into [0, 1) with kappa = {KAPPA}).",
        "memory": "increase of RSS over the first forward+backward in a fresh subprocess (VmHWM reset after set-up, "
        "minus VmRSS before the step); K and K∘M exist before it (C = 21,841: 1.8 GiB each in fp32).",
        "time": f"C = 1,000: median of {3 * args.repeats} steps per variant, the variants alternating step by step in "
        "one process; C = 21,841: one step per variant, each in its own subprocess, one after the other.",
        "threads": first["threads"],
        "torch": first["torch"],
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "device": "cpu",
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sinkhorn_paths.json").write_text(json.dumps({"meta": meta, "cases": cases}, indent=2) + "\n")
    markdown = _markdown(meta, cases)
    (args.out / "sinkhorn_paths.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
