"""Time of one full training step with WKD-L against the same step with KD (target: WKD-L ≤ 1.05× KD).

A step is what Lightning runs per batch: ``DistillationModule.training_step`` (student forward with hooks, frozen
teacher forward, CE + the plug-in's terms, metric update), ``backward`` and the optimizer step (``PaperSGD`` from
``configure_optimizers``), with ``zero_grad`` before. The module's real ``training_step`` is timed; only
``log``/``log_dict`` are replaced by no-ops (no trainer is attached) and the metrics are made with
``_make_metrics(C)`` as ``setup`` would.

Settings:

* ``fashion_mnist``: ``mini_resnet8`` student from ``mini_resnet14`` teacher, batch 128 of 1×28×28, C = 10.
* ``cifar_like`` (synthetic, not CIFAR's models): the same two layouts built with 3 input channels and 100 classes
  (``SmallResNet`` widths 8/16/32 × 1 block from 16/32/64 × 2 blocks), batch 64 of random 3×32×32 inputs, C = 100.

Losses: WKD-L with γ = 50, τ = 4, κ = 1, ε = 0.05, 10 Sinkhorn iterations, over a fixed "semantic-ish" cost (classes
in groups: cheap within a group, dear across; Fashion-MNIST's tops / trousers / footwear / bags, 20 groups of 5 for
C = 100); KD with T = 4, weight 0.9. Teachers are randomly initialised (the speed does not depend on their weights).

The modules run interleaved: after warm-up steps, each repeat times one KD step, one WKD-L step and one step of a
second, identical KD module (an A/A control: its ratio to KD shows the noise floor), rotating which goes first, so
drifts of a shared, noisy CPU hit all alike. Reported: medians, their ratio, and the median of the per-repeat ratios
(paired, the more robust figure). A second, loss-only block times the plug-in's forward and backward on fixed logits,
to show where any difference comes from.

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
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from wkd_lightning.losses import KD, DistillationContext, DistillationLoss, WKDLogit
from wkd_lightning.models import SmallResNet, mini_resnet8, mini_resnet14
from wkd_lightning.module import DistillationModule

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGET_RATIO = 1.05
LOSSES = ("kd", "wkd_l")
#: An A/A control: a second, identical KD module timed in the same rotation; its ratio to ``kd`` is the noise floor.
CONTROL = "kd_again"
#: Fashion-MNIST classes in groups: tops (T-shirt, pullover, dress, coat, shirt), trouser, footwear, bag.
FASHION_GROUPS = [[0, 2, 3, 4, 6], [1], [5, 7, 9], [8]]


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


def make_loss(kind: str, cost: Tensor) -> DistillationLoss:
    if kind in ("kd", CONTROL):
        return KD(temperature=4.0, weight=0.9)
    return WKDLogit(cost=cost, weight=50.0, temperature=4.0, kappa=1.0, sinkhorn_eps=0.05, sinkhorn_iters=10)


def make_step(setting: dict, kind: str, seed: int = 0) -> Callable[[], float]:
    """A closure running one real training step of a fresh module with loss ``kind``; returns the loss value."""
    torch.manual_seed(seed)
    module = DistillationModule(
        student=setting["student"](),
        teacher=setting["teacher"](),
        losses=[make_loss(kind, setting["cost"]())],
        input_size=setting["input_size"],
    )
    module.num_classes = setting["num_classes"]
    module._make_metrics(setting["num_classes"])
    module._probe()
    module.log = lambda *args, **kwargs: None
    module.log_dict = lambda *args, **kwargs: None
    module.train()
    optimizer = module.configure_optimizers()
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(setting["batch"], *setting["input_size"], generator=generator)
    y = torch.randint(0, setting["num_classes"], (setting["batch"],), generator=generator)
    batch_idx = [0]

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = module.training_step((x, y), batch_idx[0])
        loss.backward()
        optimizer.step()
        batch_idx[0] += 1
        return float(loss.detach())

    return step


def make_loss_only(setting: dict, kind: str, seed: int = 0) -> Callable[[], float]:
    """Forward + backward of the plug-in alone on fixed B×C logits (teacher-like scale)."""
    generator = torch.Generator().manual_seed(seed)
    batch, num_classes = setting["batch"], setting["num_classes"]
    z_s = (torch.randn(batch, num_classes, generator=generator) * 3).requires_grad_()
    z_t = torch.randn(batch, num_classes, generator=generator) * 3
    y = torch.randint(0, num_classes, (batch,), generator=generator)
    loss_module = make_loss(kind, setting["cost"]())
    ctx = DistillationContext(student_logits=z_s, teacher_logits=z_t, target=y)

    def step() -> float:
        z_s.grad = None
        loss = torch.stack(list(loss_module(ctx).values())).sum()
        loss.backward()
        return float(loss.detach())

    return step


def interleaved(steps: dict[str, Callable[[], float]], warmup: int, repeats: int) -> dict[str, list[float]]:
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


def summarise(times: dict[str, list[float]]) -> dict:
    """Medians and quartiles (ms) per loss, ratio of medians and median/quartiles of the paired ratios."""

    def quartiles(values: list[float]) -> tuple[float, float]:
        q = statistics.quantiles(values, n=4)
        return q[0], q[2]

    out = {}
    for name, values in times.items():
        q1, q3 = quartiles(values)
        out[name] = {
            "median_ms": statistics.median(values) * 1e3,
            "q1_ms": q1 * 1e3,
            "q3_ms": q3 * 1e3,
            "min_ms": min(values) * 1e3,
            "times_ms": [round(v * 1e3, 3) for v in values],
        }
    for other, key in (("wkd_l", ""), (CONTROL, "control_")):
        if other not in times:
            continue
        paired = [w / k for w, k in zip(times[other], times["kd"])]
        q1, q3 = quartiles(paired)
        out[f"{key}ratio_of_medians"] = out[other]["median_ms"] / out["kd"]["median_ms"]
        out[f"{key}paired_ratio"] = {"median": statistics.median(paired), "q1": q1, "q3": q3}
        out[f"{key}ratio_of_minima"] = out[other]["min_ms"] / out["kd"]["min_ms"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed steps per loss, interleaved (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per loss first (default 5)")
    parser.add_argument("--loss-repeats", type=int, default=200, help="timed loss-only calls per loss (default 200)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: see the notes)")
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--quick", action="store_true", help="8 repeats, 2 warm-up steps, 40 loss-only calls")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for train_step.json and train_step.md")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.warmup, args.loss_repeats = 8, 2, 40
    if args.repeats < 2 or args.loss_repeats < 2:
        parser.error("--repeats and --loss-repeats must be >= 2")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    results = {}
    for name in args.settings:
        setting = SETTINGS[name]
        print(f"{setting['label']} ...", flush=True)
        steps = {kind: make_step(setting, kind) for kind in (*LOSSES, CONTROL)}
        step_summary = summarise(interleaved(steps, args.warmup, args.repeats))
        loss_steps = {kind: make_loss_only(setting, kind) for kind in LOSSES}
        loss_summary = summarise(interleaved(loss_steps, 10, args.loss_repeats))
        # A low-noise estimate of the step ratio: the KD step plus the measured extra cost of the WKD-L loss alone.
        extra_ms = loss_summary["wkd_l"]["median_ms"] - loss_summary["kd"]["median_ms"]
        estimate = 1 + extra_ms / step_summary["kd"]["median_ms"]
        results[name] = {
            "label": setting["label"],
            "train_step": step_summary,
            "loss_only": loss_summary,
            "loss_extra_ms": extra_ms,
            "ratio_estimate_from_loss_only": estimate,
        }

    meta = {
        "what": "one DistillationModule.training_step (student + frozen teacher forward, CE + loss, metrics) + "
        "backward + PaperSGD step, log/log_dict as no-ops; WKD-L gamma=50 tau=4 kappa=1 eps=0.05 10 iterations "
        "over a fixed grouped cost vs KD T=4 weight 0.9",
        "method": f"{args.warmup} warm-up steps per module, then {args.repeats} timed steps per module interleaved "
        "in rotation (KD, WKD-L and an identical second KD module as an A/A control of the noise); loss-only: "
        f"forward+backward of the plug-in on fixed logits, {args.loss_repeats} interleaved calls per loss",
        "target": f"WKD-L step <= {TARGET_RATIO}x KD step",
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

    lines = [
        "# Training step: WKD-L vs KD (CPU)",
        "",
        f"{meta['what']}.",
        f"{meta['method']}. torch {meta['torch']}, {meta['threads']} thread(s), {meta['cpu_count']} CPUs shared "
        f"with other jobs (load average {meta['load_average_before'][0]:.1f} before, "
        f"{meta['load_average_after'][0]:.1f} after), so absolute times are noisy; compare the ratios.",
        "",
        "| setting | measured | KD median ms | WKD-L median ms | WKD-L/KD ratio of medians | "
        "WKD-L/KD paired ratio median [IQR] | A/A control KD/KD paired ratio median [IQR] |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        for part, title in (("train_step", "full step"), ("loss_only", "loss fwd+bwd only")):
            r = res[part]
            pr = r["paired_ratio"]
            cr = r.get("control_paired_ratio")
            control = f"{cr['median']:.3f}× [{cr['q1']:.3f}, {cr['q3']:.3f}]" if cr else "–"
            lines.append(
                f"| {name} | {title} | {r['kd']['median_ms']:.2f} | {r['wkd_l']['median_ms']:.2f} | "
                f"{r['ratio_of_medians']:.3f}× | {pr['median']:.3f}× [{pr['q1']:.3f}, {pr['q3']:.3f}] | {control} |"
            )
    lines += ["", f"Target: WKD-L step ≤ {TARGET_RATIO}× the KD step (full step, paired ratio median)."]
    for res in results.values():
        ratio = res["train_step"]["paired_ratio"]["median"]
        lines.append(
            f"- {res['label']}: {ratio:.3f}× → {'met' if ratio <= TARGET_RATIO else 'NOT met'} "
            f"(ratio of medians {res['train_step']['ratio_of_medians']:.3f}×; KD step + the WKD-L loss's extra "
            f"{res['loss_extra_ms']:.2f} ms measured alone: {res['ratio_estimate_from_loss_only']:.4f}×)"
        )
    (args.out / "train_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[5:]))
    print(f"\nwrote {args.out / 'train_step.json'} and {args.out / 'train_step.md'}")


if __name__ == "__main__":
    main()
