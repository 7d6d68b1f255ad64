"""Cost of detection distillation: one Faster R-CNN training step with each loss, against the student alone.

A step is ``DetectionDistillationModule.training_step`` (the student's training pass, the frozen teacher on the
student's RoIs, the loss terms), ``backward`` and the SGD step, after ``zero_grad``; only ``log``/``log_dict`` are
no-ops (no trainer is attached), and the learning rate is 0: the SGD step does its usual work, but the random
networks (which would diverge under WKD-F's large initial terms) stay put, so every repeat times the same
computation. Student ResNet-18 FPN, teacher ResNet-50 FPN (random weights: speed does not depend
on them), 81 classes, 512 RoIs per image, a batch of random images with 3 boxes each.

Methods: ``vanilla`` (no teacher), ``kd`` (T = 1), ``wkd_l`` (a fixed 81×81 cost, 10 Sinkhorn iterations),
``wkd_f`` (RoI-Align features, conv1x1 projector) and ``wkd_lf``. They run interleaved, one step each per repeat in
a rotating order, so drifts of a shared machine hit all alike; reported are medians, images per second and the
ratios to ``vanilla`` and to ``kd``.

Run::

    .venv/bin/python benchmarks/bench_detection_step.py                       # CPU, 320-px images, batch 2
    .venv/bin/python benchmarks/bench_detection_step.py --device cuda --size 800 --batch 8 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from functools import partial
from pathlib import Path

import torch

from wkd_lightning.detection import DetectionDistillationModule, DetectionSGD, faster_rcnn
from wkd_lightning.losses import KD, WKDFeature, WKDLogit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NUM_CLASSES = 81
METHODS = ("vanilla", "kd", "wkd_l", "wkd_f", "wkd_lf")


def make_losses(method: str) -> list:
    """The plug-ins of ``method``, with a fixed cost (classes on a circle) for WKD-L."""
    index = torch.arange(NUM_CLASSES, dtype=torch.float64)
    cost = ((1 - torch.cos(2 * torch.pi * (index[:, None] - index[None, :]) / NUM_CLASSES)) / 2).float()
    logit = WKDLogit(cost=cost.fill_diagonal_(0.0), weight=1.0, temperature=1.0)
    feature = WKDFeature(student_path="roi_align", teacher_path="roi_align", weight=1.0)
    return {"vanilla": [], "kd": [KD(temperature=1.0)], "wkd_l": [logit], "wkd_f": [feature]}.get(
        method, [logit, feature]
    )


def make_module(method: str, size: int, teacher_file: Path, device: torch.device) -> DetectionDistillationModule:
    options = {"num_classes": NUM_CLASSES, "min_size": size, "max_size": size, "trainable_backbone_layers": 5}
    torch.manual_seed(0)
    module = DetectionDistillationModule(
        student=faster_rcnn("resnet18", **options),
        teacher=faster_rcnn("resnet50", **options) if method != "vanilla" else None,
        teacher_weights=str(teacher_file) if method != "vanilla" else None,
        losses=make_losses(method),
        optimizer=partial(DetectionSGD, lr=0.0),  # weights stay put: every repeat times the same computation
        warmup_steps=0,
    ).to(device)
    module.log = module.log_dict = lambda *args, **kwargs: None  # no trainer attached
    return module.train()


def make_batch(batch: int, size: int, device: torch.device):
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=generator).to(device) for _ in range(batch)]
    corners = torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.5, 0.2, 0.9, 0.6], [0.3, 0.6, 0.7, 0.95]]) * size
    targets = [{"boxes": corners.to(device), "labels": torch.tensor([1, 7, 42], device=device)} for _ in range(batch)]
    return images, targets


def step(module, optimizer, batch, device: torch.device, precision: str) -> float:
    """Seconds of one zero_grad + training_step + backward + optimizer step (synchronised on a GPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = module.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=320, help="image side (min_size = max_size)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", choices=("32", "bf16"), default="32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS / "detection_step")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    teacher_file = args.out.with_suffix(".teacher.pt")
    teacher_file.parent.mkdir(parents=True, exist_ok=True)
    options = {"num_classes": NUM_CLASSES, "min_size": args.size, "max_size": args.size}
    torch.save(faster_rcnn("resnet50", **options).state_dict(), teacher_file)
    modules = {m: make_module(m, args.size, teacher_file, device) for m in METHODS}
    teacher_file.unlink()
    optimizers = {m: module.configure_optimizers()[0][0] for m, module in modules.items()}
    batch = make_batch(args.batch, args.size, device)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for repeat in range(args.warmup + args.repeats):
        order = METHODS[repeat % len(METHODS) :] + METHODS[: repeat % len(METHODS)]
        for method in order:
            seconds = step(modules[method], optimizers[method], batch, device, args.precision)
            if repeat >= args.warmup:
                times[method].append(seconds)
        print(f"[bench] repeat {repeat + 1}/{args.warmup + args.repeats}", flush=True)
    median = {m: statistics.median(t) for m, t in times.items()}
    rows = {
        m: {
            "median_s": median[m],
            "images_per_s": args.batch / median[m],
            "vs_vanilla": median[m] / median["vanilla"],
            "vs_kd": median[m] / median["kd"],
            "times_s": times[m],
        }
        for m in METHODS
    }
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    setting = (
        f"ResNet-50 FPN → ResNet-18 FPN, {NUM_CLASSES} classes, {args.batch} images of {args.size}×{args.size}, "
        f"precision {args.precision}, {where} ({torch.get_num_threads()} CPU threads), medians of {args.repeats}"
    )
    lines = [
        "# Detection distillation: training-step cost",
        "",
        f"`python benchmarks/bench_detection_step.py` — {setting}.",
        "",
        "| method | median step (s) | images/s | × vanilla | × KD |",
        "|---|---|---|---|---|",
        *(
            f"| {m} | {r['median_s']:.3f} | {r['images_per_s']:.2f} | {r['vs_vanilla']:.3f} | {r['vs_kd']:.3f} |"
            for m, r in rows.items()
        ),
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"setting": setting, "methods": rows}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
