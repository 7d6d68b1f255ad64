"""Images per second of one ImageNet loader worker: decode + RandomResizedCrop(224) + flip (+ to float, normalise).

A fixture of real JPEG files at ImageNet's typical sizes (500×375 landscape and 375×500 portrait, quality 90, written
with PIL from smooth random fields plus fine noise, so that their file sizes, ~60–120 KB, and their decoding cost
resemble photographs') is laid out in ImageNet's class-folder layout, and ``ImageNetDataModule``'s training set is
read sample by sample in this process, exactly as one loader worker does (``SeededDataset[(index, seed)]``: file read,
decode, seeded RandomResizedCrop + flip, ``ToDtype`` + ``Normalize``). Paths, timed interleaved in rotation over the
same files (a repeat reads every file once per path):

* ``pil``: the default, ``decoder="pil"`` (PIL decode and resize, as torchvision's ``ImageFolder`` does);
* ``torchvision``: ``decoder="torchvision"`` (``torchvision.io.decode_image``, then the v2 transforms on uint8
  tensors);
* decode only, for each library, to show where the time goes;
* on a CUDA machine, also ``torchvision.io.decode_jpeg(..., device="cuda")`` on batches of 256 files (nvJPEG), the
  throughput of decoding on the GPU instead of in workers.

From the per-worker rate ``r`` the workers an 8-GPU node needs follow: ``8 · R / r`` for a training speed of ``R``
img/s per GPU. ``R`` for resnet34→resnet18 at the paper's batch 256 comes from ``benchmarks/bench_gpu.py``; a range is
tabulated.

Run::

    .venv/bin/python benchmarks/bench_input_pipeline.py            # writes benchmarks/results/input_pipeline.{json,md}
    .venv/bin/python benchmarks/bench_input_pipeline.py --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.io import decode_jpeg, read_file

from wkd_lightning.data import ImageNetDataModule

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
SIZES = ((500, 375), (375, 500))  # width × height, ImageNet's most common shapes
GPU_RATES = (1000, 2000, 3000, 4000)  # img/s per GPU, for the workers table


def write_fixture(root: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` JPEGs in ``root/train/<wnid>/`` (two classes), one per class in ``root/val``; photograph-like content."""
    rng = np.random.default_rng(seed)
    paths = []
    for split, count in (("train", n), ("val", 2)):
        for i in range(count):
            wnid = f"n0000000{i % 2}"
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            width, height = SIZES[i % len(SIZES)]
            coarse = rng.integers(0, 256, size=(height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)
            smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
            noise = rng.normal(0, 12, size=(height, width, 3))
            pixels = np.clip(smooth + noise, 0, 255).astype(np.uint8)
            path = folder / f"{wnid}_{i}.JPEG"
            Image.fromarray(pixels).save(path, format="JPEG", quality=90)
            if split == "train":
                paths.append(path)
    return paths


def loader_worker(root: Path, decoder: str) -> Callable[[int], object]:
    dm = ImageNetDataModule(data_dir=str(root), num_classes=2, num_workers=0, decoder=decoder)
    dm.setup("fit")
    return lambda i: dm.train_set[(i, 1000 + i)]


def decode_only(paths: list[Path], library: str) -> Callable[[int], object]:
    if library == "pil":
        return lambda i: Image.open(paths[i]).convert("RGB").load()
    return lambda i: decode_jpeg(read_file(str(paths[i])))


def rates(paths: dict[str, Callable[[int], object]], n: int, repeats: int) -> dict[str, list[float]]:
    """img/s of each path per repeat (every file once), the paths in rotation."""
    names = list(paths)
    for name in names:  # warm-up: file cache, first-call costs
        for i in range(min(n, 8)):
            paths[name](i)
    out: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            for i in range(n):
                paths[name](i)
            out[name].append(n / (time.perf_counter() - start))
    return out


def gpu_decode_rate(files: list[Path], repeats: int, batch: int = 256) -> float | None:
    """img/s of batched nvJPEG decoding on the GPU (``None`` without CUDA)."""
    if not torch.cuda.is_available():
        return None
    data = [read_file(str(files[i % len(files)])) for i in range(batch)]
    decode_jpeg(data, device="cuda")
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        decode_jpeg(data, device="cuda")
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="JPEG files in the fixture (default 64)")
    parser.add_argument("--repeats", type=int, default=7, help="passes over the files per path (default 7)")
    parser.add_argument("--quick", action="store_true", help="16 files, 3 repeats")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeats = 16, 3
    torch.set_num_threads(1)  # one worker = one process with one thread (DataLoader workers run 1 thread each)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "imagenet"
        files = write_fixture(root, args.images)
        sizes_kb = [f.stat().st_size / 1024 for f in files]
        paths = {
            "pil: decode + RandomResizedCrop + flip + normalise": loader_worker(root, "pil"),
            "torchvision: decode + RandomResizedCrop + flip + normalise": loader_worker(root, "torchvision"),
            "pil: decode only": decode_only(files, "pil"),
            "torchvision: decode only": decode_only(files, "torchvision"),
        }
        measured = rates(paths, args.images, args.repeats)
        gpu = gpu_decode_rate(files, args.repeats)
    summary = {name: statistics.median(values) for name, values in measured.items()}
    keys = list(paths)
    paired = [a / b for a, b in zip(measured[keys[1]], measured[keys[0]])]
    per_worker = summary[keys[0]]
    workers = {rate: math.ceil(8 * rate / per_worker) for rate in GPU_RATES}
    workers_fast = {rate: math.ceil(8 * rate / summary[keys[1]]) for rate in GPU_RATES}
    meta = {
        "fixture": f"{args.images} JPEG files, {SIZES[0][0]}×{SIZES[0][1]} and {SIZES[1][0]}×{SIZES[1][1]}, "
        f"quality 90, {min(sizes_kb):.0f}–{max(sizes_kb):.0f} KB (median {statistics.median(sizes_kb):.0f} KB)",
        "method": f"one process, one thread (a loader worker), {args.repeats} passes over every file per path, paths "
        "interleaved in rotation; medians of the per-pass img/s",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": Image.__version__,
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "machine": platform.machine(),
    }
    result = {
        "meta": meta,
        "img_per_s_per_worker": summary,
        "per_pass": measured,
        "torchvision_over_pil_paired_median": statistics.median(paired),
        "gpu_nvjpeg_img_per_s": gpu,
        "workers_for_8_gpus": {"pil": workers, "torchvision": workers_fast},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "input_pipeline.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# ImageNet input pipeline: images/s per loader worker (CPU)",
        "",
        f"{meta['fixture']}. {meta['method']}. torch {meta['torch']}, torchvision {meta['torchvision']}, Pillow "
        f"{meta['pillow']}; {meta['cpu_count']} CPUs shared with other jobs (load average "
        f"{load_before[0]:.1f} before, {meta['load_average_after'][0]:.1f} after).",
        "",
        "| path (one worker) | img/s |",
        "|---|---|",
        *[f"| {name} | {value:.1f} |" for name, value in summary.items()],
        "",
        f"torchvision / PIL, full training transform, paired median: {statistics.median(paired):.2f}×.",
        "GPU decode (nvJPEG, batches of 256): "
        + (f"{gpu:.0f} img/s." if gpu else "not measured (no CUDA on this machine)."),
        "",
        "Workers an 8-GPU node needs to keep up (8 · R / r, r = img/s per worker above), by the training speed R per "
        "GPU:",
        "",
        "| R (img/s per GPU) | workers, PIL | workers, torchvision |",
        "|---|---|---|",
        *[f"| {rate} | {workers[rate]} | {workers_fast[rate]} |" for rate in GPU_RATES],
    ]
    (args.out / "input_pipeline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
