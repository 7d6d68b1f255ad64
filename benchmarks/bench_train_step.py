"""One full training step, eager and compiled: WKD-L and WKD-LF against KD, and the host reads per step (CPU).

A step is what Lightning runs per batch: ``DistillationModule.training_step`` (student forward with hooks, frozen
teacher forward, CE + the plug-ins' terms, metric update), ``backward`` and the optimizer step (``PaperSGD`` from
``configure_optimizers``), with ``zero_grad`` before. The module's real ``training_step`` is timed; only
``log``/``log_dict`` are replaced by no-ops (no trainer is attached) and the metrics are made with
``_make_metrics(C)`` as ``setup`` would. "Compiled" is the module's ``compile=True`` (``torch.compile`` with the
default inductor backend on student, teacher and plug-ins, through ``nn.Module.compile``), set up as ``setup`` does.

Settings:

* ``fashion_mnist``: ``mini_resnet8`` student from ``mini_resnet14`` teacher, batch 128 of 1×28×28, C = 10.
* ``cifar_like`` (synthetic, not CIFAR's models): the same two layouts built with 3 input channels and 100 classes
  (``SmallResNet`` widths 8/16/32 × 1 block from 16/32/64 × 2 blocks), batch 64 of random 3×32×32 inputs, C = 100.

Losses: KD with T = 4, weight 0.9; WKD-L with γ = 50, τ = 4, κ = 1, ε = 0.05, 10 Sinkhorn iterations, over a fixed
"semantic-ish" cost (classes in groups: cheap within a group, dear across; Fashion-MNIST's tops / trousers / footwear /
bags, 20 groups of 5 for C = 100); WKD-LF = that WKD-L + WKD-F on ``layer3`` → ``layer3`` (conv1x1 projector, grid 1,
ρ = 8, w_f = 0.08, the paper's CIFAR resnet8x4 recipe). Teachers are randomly initialised (the speed does not depend
on their weights).

The modules run interleaved: after warm-up steps (which include compiling), each repeat times one step of every
module, rotating which goes first, so drifts of a shared, noisy CPU hit all alike; a second, identical eager KD module
is timed too (an A/A control: its ratio to KD shows the noise floor). Reported: medians and the median of the
per-repeat (paired) ratios: WKD-L/KD and WKD-LF/KD in each mode, and eager/compiled per loss (the compiled speed-up).
A loss-only block times the eager plug-ins' forward and backward on fixed logits.

**Host reads.** On a GPU a read of a device value (``.item()``, ``bool(t)``, ``int(t)``, ``float(t)``,
``.tolist()``) blocks the CPU until the GPU catches up. The CPU has no device, so they are counted instead: those five
``torch.Tensor`` methods are wrapped with a counter (recording the calling line) during ``--count-steps`` steady-state
steps of each module after the timing, and for the first, checked, step of an epoch. Compiled graphs do not call them
through Python, so they count what the eager Python code asks for; Lightning's own logging is not part of these steps.

One thread by default: on a shared 2-core machine the OpenMP barriers of 2 threads made small steps many times
slower and far noisier (``--threads 2`` to compare).

Run::

    .venv/bin/python benchmarks/bench_train_step.py             # writes benchmarks/results/train_step.{json,md}
    .venv/bin/python benchmarks/bench_train_step.py --quick     # 8 repeats, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from wkd_lightning.losses import KD, DistillationContext, DistillationLoss, WKDFeature, WKDLogit
from wkd_lightning.models import SmallResNet, mini_resnet8, mini_resnet14
from wkd_lightning.module import DistillationModule

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGET_RATIO = 1.02  # WKD-L step / KD step
TARGET_SPEEDUP = 1.2  # eager / compiled, CIFAR-shape WKD-LF step
LOSSES = ("kd", "wkd_l", "wkd_lf")
MODES = ("eager", "compiled")
#: An A/A control: a second, identical eager KD module timed in the same rotation; its ratio to KD is the noise floor.
CONTROL = "kd_again"
#: Fashion-MNIST classes in groups: tops (T-shirt, pullover, dress, coat, shirt), trouser, footwear, bag.
FASHION_GROUPS = [[0, 2, 3, 4, 6], [1], [5, 7, 9], [8]]
#: The Tensor methods that read a device value on the host (a blocking synchronisation on a GPU).
HOST_READS = ("item", "__bool__", "__int__", "__float__", "tolist")


def grouped_cost(groups: list[list[int]], num_classes: int, seed: int = 0) -> Tensor:
    """A fixed, unsharpened, symmetric C×C cost: ≈0.3 within a group, ≈0.9 across, 0 on the diagonal (± 0.05)."""
    group_of = torch.empty(num_classes, dtype=torch.long)
    for index, members in enumerate(groups):
        group_of[members] = index
    same = group_of[:, None] == group_of[None, :]
    jitter = torch.rand(num_classes, num_classes, generator=torch.Generator().manual_seed(seed)) * 0.1 - 0.05
    cost = torch.where(same, 0.3, 0.9) + (jitter + jitter.t()) / 2
    return cost.fill_diagonal_(0.0)


SETTINGS = {
    "fashion_mnist": {
        "label": "Fashion-MNIST: mini_resnet8 from mini_resnet14, batch 128, 1×28×28, C=10",
        "student": lambda: mini_resnet8(),
        "teacher": lambda: mini_resnet14(),
        "batch": 128,
        "input_size": (1, 28, 28),
        "num_classes": 10,
        "cost": lambda: grouped_cost(FASHION_GROUPS, 10),
    },
    "cifar_like": {
        "label": "CIFAR-like (synthetic): SmallResNet 8/16/32×1 from 16/32/64×2, 3 channels, batch 64, 3×32×32, C=100",
        "student": lambda: SmallResNet((8, 16, 32), 1, num_classes=100, in_channels=3),
        "teacher": lambda: SmallResNet((16, 32, 64), 2, num_classes=100, in_channels=3),
        "batch": 64,
        "input_size": (3, 32, 32),
        "num_classes": 100,
        "cost": lambda: grouped_cost([list(range(i, i + 5)) for i in range(0, 100, 5)], 100),
    },
}


def make_losses(kind: str, cost: Tensor) -> list[DistillationLoss]:
    if kind in ("kd", CONTROL):
        return [KD(temperature=4.0, weight=0.9)]
    wkd_l = WKDLogit(cost=cost, weight=50.0, temperature=4.0, kappa=1.0, sinkhorn_eps=0.05, sinkhorn_iters=10)
    if kind == "wkd_l":
        return [wkd_l]
    return [wkd_l, WKDFeature("layer3", "layer3", projector="conv1x1", grid=1, mean_weight=8.0, weight=0.08)]


def make_step(setting: dict, kind: str, mode: str = "eager", seed: int = 0) -> Callable[[], float]:
    """A closure running one real training step of a fresh module with loss ``kind``; returns the loss tensor."""
    torch.manual_seed(seed)
    module = DistillationModule(
        student=setting["student"](),
        teacher=setting["teacher"](),
        losses=make_losses(kind, setting["cost"]()),
        input_size=setting["input_size"],
        compile=mode == "compiled",
    )
    module.num_classes = setting["num_classes"]
    module._make_metrics(setting["num_classes"])
    module._probe()
    module._prepare_models(channels_last=False)
    module.log = lambda *args, **kwargs: None
    module.log_dict = lambda *args, **kwargs: None
    module.train()
    optimizer = module.configure_optimizers()
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(setting["batch"], *setting["input_size"], generator=generator)
    y = torch.randint(0, setting["num_classes"], (setting["batch"],), generator=generator)
    batch_idx = [0]

    def step() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = module.training_step((x, y), batch_idx[0])
        loss.backward()
        optimizer.step()
        batch_idx[0] += 1
        return loss.detach()

    step.module = module
    return step


def make_loss_only(setting: dict, kind: str, seed: int = 0) -> Callable[[], Tensor]:
    """Forward + backward of the plug-in alone on fixed B×C logits (teacher-like scale)."""
    generator = torch.Generator().manual_seed(seed)
    batch, num_classes = setting["batch"], setting["num_classes"]
    z_s = (torch.randn(batch, num_classes, generator=generator) * 3).requires_grad_()
    z_t = torch.randn(batch, num_classes, generator=generator) * 3
    y = torch.randint(0, num_classes, (batch,), generator=generator)
    (loss_module,) = make_losses(kind, setting["cost"]())
    ctx = DistillationContext(student_logits=z_s, teacher_logits=z_t, target=y)

    def step() -> Tensor:
        z_s.grad = None
        loss = torch.stack(list(loss_module(ctx).values())).sum()
        loss.backward()
        return loss.detach()

    return step


def interleaved(steps: dict[str, Callable[[], Tensor]], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Warm each step up, then time them in rotation (repeat ``r`` starts with step ``r mod n``); seconds per call."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return times


@contextmanager
def counting_host_reads() -> Iterator[Counter]:
    """Count calls of :data:`HOST_READS` on tensors, keyed by ``method file:line`` of the caller."""
    counts: Counter = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def wrap(name: str, original: Callable) -> Callable:
        def counted(self, *args, **kwargs):
            caller = sys._getframe(1)
            where = f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno}"
            counts[f"{name} {where}"] += 1
            return original(self, *args, **kwargs)

        return counted

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(name, original))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def host_reads(step: Callable[[], Tensor], steps: int) -> dict:
    """Host reads of ``steps`` steady-state steps, and of the next epoch's first (checked) step."""
    with counting_host_reads() as steady:
        for _ in range(steps):
            step()
    step.module.on_train_epoch_start()  # the next step is the first of an epoch: every input check runs
    with counting_host_reads() as checked:
        step()
    return {
        "steady_steps": steps,
        "steady_reads": sum(steady.values()),
        "steady_reads_per_step": sum(steady.values()) / steps,
        "steady_sites": dict(steady),
        "checked_step_reads": sum(checked.values()),
        "checked_step_sites": dict(checked),
    }


def _quartiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def paired(numerator: list[float], denominator: list[float]) -> dict:
    ratios = [a / b for a, b in zip(numerator, denominator)]
    q1, q3 = _quartiles(ratios)
    return {"median": statistics.median(ratios), "q1": q1, "q3": q3}


def summarise(times: dict[str, list[float]]) -> dict:
    """Medians and quartiles (ms) per step, and the paired ratios of interest."""
    out: dict = {"steps": {}, "ratios": {}}
    for name, values in times.items():
        q1, q3 = _quartiles(values)
        out["steps"][name] = {
            "median_ms": statistics.median(values) * 1e3,
            "q1_ms": q1 * 1e3,
            "q3_ms": q3 * 1e3,
            "times_ms": [round(v * 1e3, 3) for v in values],
        }
    for mode in MODES:
        kd = times.get(f"kd/{mode}")
        for kind in LOSSES[1:]:
            if kd and f"{kind}/{mode}" in times:
                out["ratios"][f"{kind}/kd {mode}"] = paired(times[f"{kind}/{mode}"], kd)
    if f"{CONTROL}/eager" in times:
        out["ratios"]["A/A control kd/kd eager"] = paired(times[f"{CONTROL}/eager"], times["kd/eager"])
    for kind in LOSSES:
        if f"{kind}/compiled" in times:
            out["ratios"][f"speed-up {kind} eager/compiled"] = paired(times[f"{kind}/eager"], times[f"{kind}/compiled"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed steps per module, interleaved (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per module first (default 5)")
    parser.add_argument("--loss-repeats", type=int, default=200, help="timed loss-only calls per loss (default 200)")
    parser.add_argument(
        "--count-steps",
        type=int,
        default=100,
        help="steady steps whose host reads are counted (default 100: two "
        "periods of the loss watch, which reads its flag every 50 steps)",
    )
    parser.add_argument("--report", type=Path, help="only rewrite train_step.md from this train_step.json")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: see the notes)")
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--quick", action="store_true", help="8 repeats, 2 warm-up steps, 40 loss-only calls")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for train_step.json and train_step.md")
    args = parser.parse_args()
    if args.report:
        saved = json.loads(args.report.read_text())
        (args.out / "train_step.md").write_text("\n".join(report(saved["meta"], saved["settings"])) + "\n")
        return
    if args.quick:
        args.repeats, args.warmup, args.loss_repeats, args.count_steps = 8, 2, 40, 50
    if args.repeats < 2 or args.loss_repeats < 2:
        parser.error("--repeats and --loss-repeats must be >= 2")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    results = {}
    for name in args.settings:
        setting = SETTINGS[name]
        print(f"{setting['label']} ...", flush=True)
        steps = {f"{kind}/{mode}": make_step(setting, kind, mode) for mode in args.modes for kind in LOSSES}
        steps[f"{CONTROL}/eager"] = make_step(setting, CONTROL)
        start = time.perf_counter()
        for key, step in steps.items():  # the first steps compile; timed here so the table can say how long
            step()
            step()
            print(f"  {key}: first two steps {time.perf_counter() - start:.1f} s", flush=True)
            start = time.perf_counter()
        step_summary = summarise(interleaved(steps, args.warmup, args.repeats))
        reads = {key: host_reads(step, args.count_steps) for key, step in steps.items() if key != f"{CONTROL}/eager"}
        loss_steps = {f"{kind}/eager": make_loss_only(setting, kind) for kind in LOSSES[:2]}
        loss_summary = summarise(interleaved(loss_steps, 10, args.loss_repeats))
        results[name] = {
            "label": setting["label"],
            "train_step": step_summary,
            "loss_only": loss_summary,
            "host_reads": reads,
        }

    meta = {
        "what": "one DistillationModule.training_step (student + frozen teacher forward, CE + losses, metrics) + "
        "backward + PaperSGD step, log/log_dict as no-ops; KD T=4 weight 0.9; WKD-L gamma=50 tau=4 kappa=1 "
        "eps=0.05 10 iterations over a fixed grouped cost; WKD-LF = WKD-L + WKD-F layer3->layer3 conv1x1 grid 1 "
        "rho=8 w_f=0.08; eager, and compiled with compile=True (inductor)",
        "method": f"{args.warmup} warm-up steps per module after the first (compiling) ones, then {args.repeats} "
        "timed steps per module interleaved in rotation, with an identical second eager KD module as an A/A control; "
        f"loss-only: forward+backward of the eager plug-in on fixed logits, {args.loss_repeats} interleaved calls; "
        f"host reads counted over {args.count_steps} steady steps and one checked (first-of-epoch) step per module",
        "targets": f"WKD-L step <= {TARGET_RATIO}x KD step; compiled CIFAR-shape WKD-LF step >= {TARGET_SPEEDUP}x "
        "faster than eager",
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "device": "cpu",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_step.json").write_text(json.dumps({"meta": meta, "settings": results}, indent=2) + "\n")
    lines = report(meta, results)
    (args.out / "train_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[5:]))
    print(f"\nwrote {args.out / 'train_step.json'} and {args.out / 'train_step.md'}")


def _ratio(r: dict) -> str:
    return f"{r['median']:.3f}× [{r['q1']:.3f}, {r['q3']:.3f}]"


def report(meta: dict, results: dict) -> list[str]:
    lines = [
        "# Training step: eager vs compiled, WKD-L and WKD-LF vs KD, host reads (CPU)",
        "",
        f"{meta['what']}.",
        f"{meta['method']}. torch {meta['torch']}, {meta['threads']} thread(s), {meta['cpu_count']} CPUs shared "
        f"with other jobs (load average {meta['load_average_before'][0]:.1f} before, "
        f"{meta['load_average_after'][0]:.1f} after), so absolute times are noisy; compare the ratios.",
        "",
        "| setting | step | median ms [IQR] | steady host reads / step | host reads, first step of an epoch |",
        "|---|---|---|---|---|",
    ]
    for name, res in results.items():
        for key, step in res["train_step"]["steps"].items():
            reads = res["host_reads"].get(key)
            steady = f"{reads['steady_reads_per_step']:.2f}" if reads else "–"
            checked = str(reads["checked_step_reads"]) if reads else "–"
            lines.append(
                f"| {name} | {key} | {step['median_ms']:.2f} [{step['q1_ms']:.2f}, {step['q3_ms']:.2f}] | "
                f"{steady} | {checked} |"
            )
    lines += ["", "| setting | paired ratio | median [IQR] |", "|---|---|---|"]
    for name, res in results.items():
        for key, ratio in res["train_step"]["ratios"].items():
            lines.append(f"| {name} | {key} | {_ratio(ratio)} |")
        for key, ratio in res["loss_only"]["ratios"].items():
            lines.append(f"| {name} | loss fwd+bwd only: {key} | {_ratio(ratio)} |")
    lines += ["", "Targets (paired ratio medians):"]
    for name, res in results.items():
        ratios = res["train_step"]["ratios"]
        if "wkd_l/kd eager" in ratios:
            value = ratios["wkd_l/kd eager"]["median"]
            verdict = "met" if value <= TARGET_RATIO else "NOT met"
            loss_only, steps = res["loss_only"]["steps"], res["train_step"]["steps"]
            extra = loss_only["wkd_l/eager"]["median_ms"] - loss_only["kd/eager"]["median_ms"]
            estimate = 1 + extra / steps["kd/eager"]["median_ms"]
            lines.append(
                f"- {name}: WKD-L/KD eager {value:.3f}× (target ≤ {TARGET_RATIO}×: {verdict}; the A/A control shows "
                f"the noise; the KD step plus the WKD-L loss's extra {extra:.2f} ms measured alone: {estimate:.4f}×)"
            )
        if "speed-up wkd_lf eager/compiled" in ratios:
            value = ratios["speed-up wkd_lf eager/compiled"]["median"]
            target = f" (target ≥ {TARGET_SPEEDUP}×: {'met' if value >= TARGET_SPEEDUP else 'NOT met'})"
            lines.append(f"- {name}: WKD-LF compiled speed-up {value:.3f}×{target if name == 'cifar_like' else ''}")
    sites = sorted(
        {site for res in results.values() for reads in res["host_reads"].values() for site in reads["steady_sites"]}
    )
    lines += [
        "",
        f"Host reads in steady steps, by call site: {', '.join(sites) if sites else 'none'} (the loss watch reads its "
        "flag every 50 steps: on a GPU a pinned copy whose arrival an event reports, so it does not block).",
    ]
    return lines


if __name__ == "__main__":
    main()
