"""Training throughput on a GPU (img/s): KD, WKD-L, WKD-F, WKD-LF; eager and compiled; Lightning and a bare loop.

Settings (random weights and inputs: the speed does not depend on them; bf16-mixed, SGD):

* ``cifar``: resnet32x4 → resnet8x4, batch 64 of 3×32×32, C = 100; WKD-F on ``layer3`` → ``layer3`` (conv1x1, grid 1);
* ``imagenet``: resnet34 → resnet18, batch 256 of 3×224×224 (the paper's batch), C = 1000, channels-last; WKD-F on
  ``layer4`` → ``layer4`` (bottleneck projector, grid 4).

Two ways to run the same step:

* ``lightning``: ``DistillationModule`` (its real ``training_step``: hooks, checks off the hot path, metrics, logging)
  under ``L.Trainer(precision="bf16-mixed")``, the batch already on the GPU (a loader that hands the same device batch
  every step), ``compile`` off or on (``--model.compile true``);
* ``bare``: the anchor, a plain PyTorch loop doing the same work with nothing else: ``autocast(bf16)`` student forward
  (features by forward hooks), teacher forward under ``inference_mode``, CE + the same loss plug-ins, backward, SGD
  step; compiled or not (``torch.compile`` of student, teacher and plug-ins).

Each run: warm-up steps (compiling included), then ``--steps`` timed steps between two ``cuda.synchronize()``;
img/s = steps · batch / seconds. Reported with each Lightning run: its ratio to the bare loop of the same loss and mode
(goal ≥ 0.9×), and KD as the reference of each loss. Runs as is on a CUDA machine; writes
``benchmarks/results/gpu.{json,md}``.

Run::

    python benchmarks/bench_gpu.py                     # everything: 32 runs, 16 of them compiling (not timed yet)
    python benchmarks/bench_gpu.py --quick             # fewer steps, the two settings, KD and WKD-LF only
    python benchmarks/bench_gpu.py --settings cifar --losses kd wkd_l --modes eager
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wkd_lightning.losses import KD, DistillationContext, DistillationLoss, WKDFeature, WKDLogit, sharpen_cost
from wkd_lightning.models.registry import create_model
from wkd_lightning.module import DistillationModule

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
#: Where the runs happen: "cuda", or "cpu" for ``--smoke`` (a check that the script runs, on tiny batches).
DEVICE = "cuda"
LOSSES = ("kd", "wkd_l", "wkd_f", "wkd_lf")
MODES = ("eager", "compiled")

SETTINGS = {
    "cifar": {
        "label": "resnet32x4 → resnet8x4, batch 64, 3×32×32, C=100",
        "student": "resnet8x4",
        "teacher": "resnet32x4",
        "batch": 64,
        "size": 32,
        "classes": 100,
        "feature": {"student_path": "layer3", "teacher_path": "layer3", "projector": "conv1x1", "grid": 1},
        "channels_last": False,
    },
    "imagenet": {
        "label": "resnet34 → resnet18, batch 256, 3×224×224, C=1000, channels-last",
        "student": "resnet18",
        "teacher": "resnet34",
        "batch": 256,
        "size": 224,
        "classes": 1000,
        "feature": {"student_path": "layer4", "teacher_path": "layer4", "projector": "bottleneck", "grid": 4},
        "channels_last": True,
    },
}


def make_losses(kind: str, setting: dict) -> list[DistillationLoss]:
    c = setting["classes"]
    g = torch.Generator().manual_seed(0)
    d = torch.rand(c, c, generator=g)
    cost = sharpen_cost((d + d.t()).fill_diagonal_(0.0) / 2, 1.0)
    losses: list[DistillationLoss] = []
    if kind == "kd":
        losses.append(KD(temperature=4.0, weight=1.0))
    if kind in ("wkd_l", "wkd_lf"):
        losses.append(WKDLogit(cost=cost, weight=30.0, temperature=2.0, kappa=0.0, sinkhorn_iters=10))
    if kind in ("wkd_f", "wkd_lf"):
        losses.append(WKDFeature(**setting["feature"], mean_weight=2.0, weight=0.02))
    return losses


def _models(setting: dict) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    return (
        create_model(setting["student"], num_classes=setting["classes"]),
        create_model(setting["teacher"], num_classes=setting["classes"]),
    )


def _batch(setting: dict) -> tuple[Tensor, Tensor]:
    x = torch.randn(setting["batch"], 3, setting["size"], setting["size"], device=DEVICE)
    if setting["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, setting["classes"], (setting["batch"],), device=DEVICE)
    return x, y


class SameBatch(torch.utils.data.IterableDataset):
    """Hands the same device batch ``steps`` times (no loader cost in the measurement)."""

    def __init__(self, batch: tuple[Tensor, Tensor], steps: int) -> None:
        self.batch, self.steps = batch, steps

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for _ in range(self.steps):
            yield self.batch


class Data(L.LightningDataModule):
    def __init__(self, setting: dict, steps: int) -> None:
        super().__init__()
        self.num_classes = setting["classes"]
        self.input_size = (3, setting["size"], setting["size"])
        self.channels_last = setting["channels_last"]
        self.batch, self.steps = _batch(setting), steps

    def train_dataloader(self):
        return torch.utils.data.DataLoader(SameBatch(self.batch, self.steps), batch_size=None)


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


class StepTimer(L.Callback):
    """Seconds between the start of step ``warmup`` and the end of the last step, synchronised."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.stop, self.steps = warmup, None, None, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            synchronize()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.steps += 1

    def on_train_end(self, trainer, module) -> None:
        synchronize()
        self.stop = time.perf_counter()


def run_lightning(setting: dict, kind: str, mode: str, warmup: int, steps: int) -> float:
    student, teacher = _models(setting)
    module = DistillationModule(
        student=student,
        teacher=teacher,
        losses=make_losses(kind, setting),
        optimizer=lambda params: torch.optim.SGD(params, lr=1e-3, momentum=0.9),
        compile=mode == "compiled",
    )
    timer = StepTimer(warmup)
    trainer = L.Trainer(
        accelerator="gpu" if DEVICE == "cuda" else "cpu",
        devices=1,
        precision="bf16-mixed",
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=Data(setting, warmup + steps))
    return timer.steps * setting["batch"] / (timer.stop - timer.start)


def run_bare(setting: dict, kind: str, mode: str, warmup: int, steps: int) -> float:
    student, teacher = _models(setting)
    memory = torch.channels_last if setting["channels_last"] else torch.contiguous_format
    student, teacher = (m.to(DEVICE, memory_format=memory) for m in (student, teacher))
    teacher.eval()
    teacher.requires_grad_(False)
    losses = nn.ModuleList(make_losses(kind, setting))
    feats: dict[str, dict[str, Tensor]] = {"s": {}, "t": {}}
    paths = {"s": {p for x in losses for p in x.student_paths}, "t": {p for x in losses for p in x.teacher_paths}}
    for side, model in (("s", student), ("t", teacher)):
        for name, sub in model.named_modules():
            if name in paths[side]:
                sub.register_forward_hook(lambda m, i, out, side=side, name=name: feats[side].__setitem__(name, out))
    x, y = _batch(setting)
    with torch.no_grad():  # build the projectors from one sample, as the module's probe does
        student.eval()
        student(x[:1])
        teacher(x[:1])
        student.train()
        for loss in losses:
            loss.build(dict(feats["s"]), dict(feats["t"]))
    losses = losses.to(DEVICE, memory_format=memory)
    if mode == "compiled":
        student.compile()
        teacher.compile()
        for loss in losses:
            loss.compile()
    params = [p for p in (*student.parameters(), *losses.parameters()) if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            logits = student(x)
            with torch.inference_mode():
                teacher_logits = teacher(x)
            teacher_feats = {k: v.clone() for k, v in feats["t"].items()}  # out of inference mode for autograd
            ctx = DistillationContext(
                student_logits=logits, teacher_logits=teacher_logits.clone(), target=y,
                student_features=dict(feats["s"]), teacher_features=teacher_feats,
            )  # fmt: skip
            total = F.cross_entropy(logits.float(), y) + sum(v for loss in losses for v in loss(ctx).values())
        total.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    return steps * setting["batch"] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--warmup", type=int, default=15, help="untimed steps first (compiling included)")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per run")
    parser.add_argument("--quick", action="store_true", help="KD and WKD-LF only, 8 warm-up and 20 timed steps")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--smoke", action="store_true", help="on the CPU, batches of 2, 1+1 steps: does it run?")
    args = parser.parse_args()
    global DEVICE
    if args.smoke:
        DEVICE, args.warmup, args.steps = "cpu", 1, 1
        for setting in SETTINGS.values():
            setting["batch"] = 2
    elif not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (this script measures GPU throughput); --smoke runs it on the CPU")
    if args.quick:
        args.losses, args.warmup, args.steps = ["kd", "wkd_lf"], 8, 20
    torch.backends.cudnn.benchmark = True  # as trainer.benchmark: true does in the GPU configs
    results: dict = {}
    for name in args.settings:
        setting = SETTINGS[name]
        for kind in args.losses:
            for mode in args.modes:
                for way, run in (("bare", run_bare), ("lightning", run_lightning)):
                    start = time.perf_counter()
                    rate = run(setting, kind, mode, args.warmup, args.steps)
                    results.setdefault(name, {}).setdefault(kind, {}).setdefault(mode, {})[way] = rate
                    print(f"{name} {kind} {mode} {way}: {rate:.0f} img/s ({time.perf_counter() - start:.0f} s)")
                    if DEVICE == "cuda":
                        torch.cuda.empty_cache()
    meta = {
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (smoke run)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "precision": "bf16-mixed",
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "cudnn_benchmark": True,
    }
    if args.smoke:
        args.out = args.out / "smoke"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps({"meta": meta, "img_per_s": results}, indent=2) + "\n")
    lines = [
        f"# Training throughput on {meta['device']} (bf16-mixed)",
        "",
        f"torch {meta['torch']}, CUDA {meta['cuda']}; {args.warmup} warm-up and {args.steps} timed steps per run, the "
        "batch already on the GPU; random weights. `lightning`: DistillationModule under L.Trainer; `bare`: the same "
        "step in a plain PyTorch loop (the anchor).",
        "",
        "| setting | loss | mode | bare img/s | Lightning img/s | Lightning / bare | Lightning / Lightning KD |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, by_loss in results.items():
        for kind, by_mode in by_loss.items():
            for mode, ways in by_mode.items():
                kd = results[name].get("kd", {}).get(mode, {}).get("lightning")
                versus_kd = f"{ways['lightning'] / kd:.3f}×" if kd else "–"
                lines.append(
                    f"| {name} | {kind} | {mode} | {ways['bare']:.0f} | {ways['lightning']:.0f} | "
                    f"{ways['lightning'] / ways['bare']:.3f}× | {versus_kd} |"
                )
    pipeline = RESULTS / "input_pipeline.json"
    imagenet = results.get("imagenet", {}).get("wkd_lf", {})
    if pipeline.is_file() and imagenet:
        per_worker = json.loads(pipeline.read_text())["img_per_s_per_worker"]
        best = max(way["lightning"] for way in imagenet.values())
        lines += ["", f"Loader workers for 8 such GPUs at {best:.0f} img/s each (WKD-LF), from input_pipeline.json:"]
        lines += [f"- {path}: {math.ceil(8 * best / rate)}" for path, rate in per_worker.items() if "only" not in path]
    (args.out / "gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
