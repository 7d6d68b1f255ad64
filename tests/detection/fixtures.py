"""A tiny COCO 2017-style detection dataset written in the real on-disk format, for data and detection tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = ({"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"})
SUPERCATEGORIES = {1: "person", 3: "vehicle", 18: "animal"}
COLOURS = {1: (255, 30, 30), 3: (30, 255, 30), 18: (30, 30, 255)}  # one saturated colour per category
BACKGROUND_MAX = 70  # background noise in [0, 70): far from every class colour
TRAIN_ID_BASE, VAL_ID_BASE = 10, 1000


def _box_in_cell(rng: np.random.Generator, row: int, col: int, cell_h: int, cell_w: int) -> list[int]:
    """A random integer box ``[x, y, w, h]`` inside grid cell (row, col) with a 2-pixel margin."""
    w = int(rng.integers(max(6, cell_w // 4), cell_w - 4 + 1))
    h = int(rng.integers(max(6, cell_h // 4), cell_h - 4 + 1))
    x = col * cell_w + int(rng.integers(2, cell_w - 2 - w + 1))
    y = row * cell_h + int(rng.integers(2, cell_h - 2 - h + 1))
    return [x, y, w, h]


def _rle(box: list[int], height: int, width: int) -> dict:
    """Uncompressed RLE of a box mask, as COCO stores crowd regions: run lengths over the column-major pixels,
    starting with a (possibly empty) run of zeros."""
    mask = np.zeros((height, width), dtype=np.uint8)
    x, y, w, h = box
    mask[y : y + h, x : x + w] = 1
    flat = mask.flatten(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"counts": [0, *counts] if flat[0] else counts, "size": [height, width]}


def _annotation(annotation_id: int, image_id: int, category_id: int, box: list[int], segmentation: list | dict) -> dict:
    """One COCO annotation; a dict (RLE) segmentation marks a crowd region."""
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [float(v) for v in box],
        "area": float(box[2] * box[3]),
        "iscrowd": int(isinstance(segmentation, dict)),
        "segmentation": segmentation,
    }


def _polygon(box: list[int]) -> list[list[float]]:
    """The box outline as a COCO polygon segmentation."""
    x, y, w, h = (float(v) for v in box)
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _write_split(
    root: Path,
    split: str,
    count: int,
    id_base: int,
    first_annotation_id: int,
    size: tuple[int, int],
    rng: np.random.Generator,
    crowd: bool,
) -> tuple[dict, int]:
    """Images of one split under ``root/<split>2017`` and its annotation dict; returns the next annotation id."""
    height, width = size
    cell_h, cell_w = height // 2, width // 2
    folder = root / f"{split}2017"
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations, annotation_id = [], [], first_annotation_id
    for i in range(count):
        image_id = id_base + 10 * i
        pixels = rng.integers(0, BACKGROUND_MAX, size=(height, width, 3), dtype=np.uint8)
        cells = rng.permutation(4)
        for cell in cells[: int(rng.integers(1, 4))]:  # 1-3 boxes in distinct cells: no overlap
            category_id = int(rng.choice([c["id"] for c in CATEGORIES]))
            box = _box_in_cell(rng, int(cell) // 2, int(cell) % 2, cell_h, cell_w)
            pixels[box[1] : box[1] + box[3], box[0] : box[0] + box[2]] = COLOURS[category_id]
            annotations.append(_annotation(annotation_id, image_id, category_id, box, _polygon(box)))
            annotation_id += 1
        if crowd and i == 0:  # a crowd of people in the last, always free, cell
            box = _box_in_cell(rng, int(cells[3]) // 2, int(cells[3]) % 2, cell_h, cell_w)
            pixels[box[1] : box[1] + box[3], box[0] : box[0] + box[2]] = COLOURS[1]
            annotations.append(_annotation(annotation_id, image_id, 1, box, _rle(box, height, width)))
            annotation_id += 1
        file_name = f"{image_id:012d}.jpg"
        Image.fromarray(pixels).save(folder / file_name, quality=95)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width, "license": 1})
    content = {
        "info": {"description": f"wkd_lightning test fixture ({split})", "version": "1.0", "year": 2017},
        "licenses": [{"id": 1, "name": "Attribution License", "url": "http://creativecommons.org/licenses/by/2.0/"}],
        "images": images,
        "annotations": annotations,
        "categories": [{**c, "supercategory": SUPERCATEGORIES[c["id"]]} for c in CATEGORIES],
    }
    return content, annotation_id


def write_coco_fixture(
    root: Path, *, num_train: int = 4, num_val: int = 2, size: tuple[int, int] = (64, 80), seed: int = 0
) -> Path:
    """Write a tiny COCO 2017-format detection dataset under ``root`` and return ``root``.

    Layout: ``root/train2017/*.jpg``, ``root/val2017/*.jpg``, ``root/annotations/instances_{train,val}2017.json``
    with "info", "licenses", "images", "annotations" (bbox ``[x, y, w, h]`` in pixels, area, iscrowd, segmentation)
    and "categories". Three categories with non-contiguous ids: 1 "person", 3 "car", 18 "dog".

    Each image (``size`` = (height, width), at least 24×24) has dark noise as background and 1-3 boxes in distinct
    quadrants, each drawn as a filled rectangle of its category's colour (:data:`COLOURS`), so boxes never overlap
    and a detector could learn them. The first validation image also has a crowd annotation (category 1,
    ``iscrowd=1``, RLE segmentation, drawn in person colour). Image ids: train 10, 20, ...; val 1000, 1010, ....
    """
    if min(size) < 24:
        raise ValueError(f"write_coco_fixture: size must be at least (24, 24), got {size}.")
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    next_id = 1
    for split, count, id_base in (("train", num_train, TRAIN_ID_BASE), ("val", num_val, VAL_ID_BASE)):
        content, next_id = _write_split(root, split, count, id_base, next_id, size, rng, crowd=split == "val")
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(content))
    return root
