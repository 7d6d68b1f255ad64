"""COCO-format object detection (Lin et al., 2014): images on disk plus an ``instances_*.json`` annotation file.

Expected layout (the default paths, all relative to ``root`` and configurable)::

    root/train2017/*.jpg
    root/val2017/*.jpg
    root/annotations/instances_train2017.json
    root/annotations/instances_val2017.json

An annotation file is one JSON object with ``images`` (``id``, ``file_name``, ``height``, ``width``),
``annotations`` (``image_id``, ``category_id``, ``bbox`` as ``[x, y, width, height]`` in pixels, ``area``,
``iscrowd``) and ``categories`` (``id``, ``name``). It is read with the standard ``json`` module into flat NumPy
arrays (no per-annotation Python objects), so worker processes share it cheaply and no pycocotools is needed here.

Samples are ``(image, target)``: the RGB image as a float 3×H×W tensor in [0, 1] at its own size (torchvision
detection models resize and normalise inside), and the target dict torchvision's detection models and the COCO
evaluator expect (``boxes`` xyxy in absolute pixels, ``labels``, ``image_id``, ``iscrowd``, ``area``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from wkd_lightning.data.base import ClassificationDataModule
from wkd_lightning.data.sampling import SeededDataset

URL = "https://cocodataset.org/#download"
REQUIRED_KEYS = ("images", "annotations", "categories")
LABEL_MAPPINGS = ("contiguous", "category_id")
BACKGROUND, UNUSED = "__background__", "N/A"

Target = dict[str, Any]


@dataclass(frozen=True)
class CocoAnnotations:
    """One annotation file as flat arrays: ``n`` images sorted by id, ``m`` annotations grouped by image.

    Attributes:
        path: the JSON file read (named in error messages).
        categories: ``(id, name)`` pairs sorted by id.
        image_ids: (n,) int64, ascending.
        file_names: (n,) str, the image file names relative to the image folder.
        sizes: (n, 2) int64, ``(height, width)`` as the file states them.
        owner: (m,) int64, position in ``image_ids`` of each annotation's image, ascending (file order within an
            image).
        boxes: (m, 4) float32, xyxy in pixels, clipped to the image.
        category_ids: (m,) int64, the raw COCO category ids.
        iscrowd: (m,) int64, 1 for crowd regions.
        area: (m,) float32, the annotation's ``area`` field (the segmentation's area in COCO).
        supercategories: category id → its ``supercategory`` (``""`` where the file gives none).
    """

    path: Path
    categories: tuple[tuple[int, str], ...]
    image_ids: np.ndarray
    file_names: np.ndarray
    sizes: np.ndarray
    owner: np.ndarray
    boxes: np.ndarray
    category_ids: np.ndarray
    iscrowd: np.ndarray
    area: np.ndarray
    supercategories: dict[int, str]

    def __len__(self) -> int:
        return len(self.image_ids)

    def offsets(self) -> np.ndarray:
        """(n + 1,) int64: image ``i``'s annotations are rows ``offsets[i]:offsets[i + 1]``."""
        counts = np.bincount(self.owner, minlength=len(self))
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def subset(self, images: np.ndarray, annotations: np.ndarray) -> CocoAnnotations:
        """The images where the boolean mask ``images`` holds and, of theirs, the annotations where ``annotations``
        holds (masks of length n and m)."""
        kept = annotations & images[self.owner]
        position = np.cumsum(images) - 1  # new position of each kept image
        return replace(
            self,
            image_ids=self.image_ids[images],
            file_names=self.file_names[images],
            sizes=self.sizes[images],
            owner=position[self.owner[kept]].astype(np.int64),
            boxes=self.boxes[kept],
            category_ids=self.category_ids[kept],
            iscrowd=self.iscrowd[kept],
            area=self.area[kept],
        )


def _load_json(path: Path) -> dict[str, Any]:
    """The JSON object of an annotation file, with the three required keys present."""
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"COCO annotation file {os.fspath(path)!r} is not valid JSON ({error}); it is truncated or corrupt."
        ) from error
    if not isinstance(content, dict):
        raise ValueError(
            f"COCO annotation file {os.fspath(path)!r} holds a JSON {type(content).__name__}, not an object."
        )
    missing = [key for key in REQUIRED_KEYS if key not in content]
    if missing:
        raise ValueError(
            f"COCO annotation file {os.fspath(path)!r} lacks the key(s) {missing} (found {sorted(content)}); "
            "expected an instances_*.json file with 'images', 'annotations' and 'categories'."
        )
    return content


def _entries(content: dict[str, Any]) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """Categories ``(id, name)``, images ``(id, file_name, height, width)`` and annotations
    ``(image_id, category_id, x, y, w, h, iscrowd, area)`` as plain tuples (KeyError/TypeError/ValueError when
    malformed). Missing ``iscrowd`` reads as 0 and missing ``area`` as the box area."""
    categories = sorted((int(c["id"]), str(c["name"])) for c in content["categories"])
    images = sorted((int(i["id"]), str(i["file_name"]), int(i["height"]), int(i["width"])) for i in content["images"])
    annotations = []
    for a in content["annotations"]:
        x, y, w, h = (float(v) for v in a["bbox"])
        area = float(a["area"]) if "area" in a else w * h
        annotations.append((int(a["image_id"]), int(a["category_id"]), x, y, w, h, int(a.get("iscrowd", 0)), area))
    return categories, images, annotations


def _check_ids(path: Path, categories: list[tuple], image_ids: np.ndarray) -> None:
    """Category ids unique and >= 1 (0 is the background label), image ids unique."""
    category_ids = [c[0] for c in categories]
    if len(set(category_ids)) != len(category_ids) or (category_ids and category_ids[0] < 1):
        raise ValueError(f"{os.fspath(path)}: category ids must be unique integers >= 1, got {category_ids}.")
    if len(np.unique(image_ids)) != len(image_ids):
        raise ValueError(f"{os.fspath(path)}: image ids are not unique.")


def _owners(path: Path, image_ids: np.ndarray, annotation_image_ids: np.ndarray) -> np.ndarray:
    """Position in the sorted ``image_ids`` of each annotation's image; ValueError for an unknown image id."""
    owner = np.searchsorted(image_ids, annotation_image_ids)
    known = owner < len(image_ids)
    known[known] = image_ids[owner[known]] == annotation_image_ids[known]
    if not known.all():
        bad = int(annotation_image_ids[~known][0])
        raise ValueError(f"{os.fspath(path)}: an annotation refers to image id {bad}, which is not in 'images'.")
    return owner.astype(np.int64)


def _xyxy_clipped(xywh: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """COCO ``[x, y, w, h]`` boxes as ``[x1, y1, x2, y2]``, clipped to their image (``sizes`` rows are (h, w))."""
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    limits = np.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], axis=1)
    return np.clip(boxes, 0, limits).astype(np.float32)


def read_annotations(path: Path) -> CocoAnnotations:
    """Parse and check a COCO ``instances_*.json`` file.

    Raises:
        ValueError: invalid JSON, missing keys or fields, duplicate ids, or an annotation whose image or category
            the file does not list; the message names the file.
    """
    content = _load_json(path)
    try:
        categories, images, annotations = _entries(content)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"COCO annotation file {os.fspath(path)!r} has a malformed entry ({type(error).__name__}: {error})."
        ) from error
    image_ids = np.array([i[0] for i in images], dtype=np.int64)
    _check_ids(path, categories, image_ids)
    table = np.array([a[:2] for a in annotations], dtype=np.int64).reshape(-1, 2)
    values = np.array([a[2:] for a in annotations], dtype=np.float64).reshape(-1, 6)
    unknown = np.setdiff1d(table[:, 1], [c[0] for c in categories])
    if len(unknown):
        raise ValueError(f"{os.fspath(path)}: annotations use category id(s) {unknown.tolist()} not in 'categories'.")
    owner = _owners(path, image_ids, table[:, 0])
    order = np.argsort(owner, kind="stable")
    sizes = np.array([i[2:] for i in images], dtype=np.int64).reshape(-1, 2)
    return CocoAnnotations(
        path=path,
        categories=tuple(categories),
        image_ids=image_ids,
        file_names=np.array([i[1] for i in images], dtype=str),
        sizes=sizes,
        owner=owner[order],
        boxes=_xyxy_clipped(values[order, :4], sizes[owner[order]]),
        category_ids=table[order, 1],
        iscrowd=values[order, 4].astype(np.int64),
        area=values[order, 5].astype(np.float32),
        supercategories={int(c["id"]): str(c.get("supercategory") or "") for c in content["categories"]},
    )


def non_degenerate(coco: CocoAnnotations) -> np.ndarray:
    """Annotation mask: boxes at least 1 pixel wide and high (after clipping to the image)."""
    return ((coco.boxes[:, 2] - coco.boxes[:, 0]) >= 1) & ((coco.boxes[:, 3] - coco.boxes[:, 1]) >= 1)


def for_training(coco: CocoAnnotations) -> CocoAnnotations:
    """Drop crowd and degenerate annotations, then the images left without any (torchvision's detection models
    cannot train on an image without boxes, and crowd regions are not objects to regress)."""
    annotations = non_degenerate(coco) & (coco.iscrowd == 0)
    counts = np.bincount(coco.owner[annotations], minlength=len(coco))
    return coco.subset(counts > 0, annotations)


def for_evaluation(coco: CocoAnnotations) -> CocoAnnotations:
    """Keep every image and every non-degenerate annotation, crowd regions included (``iscrowd`` tells the COCO
    evaluator to ignore detections there)."""
    return coco.subset(np.ones(len(coco), dtype=bool), non_degenerate(coco))


def first_images(coco: CocoAnnotations, count: int) -> CocoAnnotations:
    """The first ``count`` images (by id) and their annotations."""
    return coco.subset(np.arange(len(coco)) < count, np.ones(len(coco.owner), dtype=bool))


def map_labels(category_ids: np.ndarray, categories: tuple[tuple[int, str], ...], mapping: str) -> np.ndarray:
    """Model labels of raw category ids: ``"contiguous"`` numbers the sorted ids 1..K, ``"category_id"`` keeps them."""
    if mapping == "category_id":
        return category_ids.astype(np.int64)
    return np.searchsorted(np.array([c[0] for c in categories], dtype=np.int64), category_ids).astype(np.int64) + 1


def class_names_of(categories: tuple[tuple[int, str], ...], mapping: str) -> list[str]:
    """Name of each model label: ``"__background__"`` at 0 and, under ``"category_id"``, ``"N/A"`` for unused ids."""
    if mapping == "contiguous":
        return [BACKGROUND, *(name for _, name in categories)]
    names = [UNUSED] * (max((i for i, _ in categories), default=0) + 1)
    names[0] = BACKGROUND
    for category_id, name in categories:
        names[category_id] = name
    return names


def horizontal_flip(image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Mirror a C×H×W image and its xyxy pixel boxes left-right (``x -> width - x``, so x1 and x2 swap roles)."""
    width = image.shape[-1]
    flipped = boxes.clone()
    flipped[:, 0], flipped[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return image.flip(-1), flipped


def read_rgb(path: Path, height: int, width: int, annotation_file: Path) -> Tensor:
    """An image file as a float 3×H×W tensor in [0, 1]; checks that it exists and has the size the JSON states."""
    if not path.is_file():
        raise FileNotFoundError(
            f"COCO image {os.fspath(path)!r}, listed in {os.fspath(annotation_file)!r}, not found; the image folder "
            f"is incomplete or does not belong to this annotation file (get COCO 2017 from {URL})."
        )
    with Image.open(path) as image:
        tensor = F.pil_to_tensor(image.convert("RGB"))
    if tensor.shape[1:] != (height, width):
        raise ValueError(
            f"COCO image {os.fspath(path)!r} is {tensor.shape[2]}×{tensor.shape[1]} pixels but "
            f"{os.fspath(annotation_file)!r} states {width}×{height}; the boxes would not match the image."
        )
    return F.to_dtype(tensor, torch.float32, scale=True)


class COCODetectionDataset(Dataset):
    """Samples ``(image, target)`` of one annotation file and image folder (see the module docstring).

    Args:
        coco: the (filtered) annotations.
        image_dir: folder holding the files named in ``coco.file_names``.
        labels: model label of each annotation (``map_labels``).
        horizontal_flip: mirror image and boxes with probability 0.5, drawn from torch's RNG (wrap the dataset in
            :class:`~wkd_lightning.data.sampling.SeededDataset` to make the draw a function of the sample seed).
    """

    def __init__(self, coco: CocoAnnotations, image_dir: Path, labels: np.ndarray, horizontal_flip: bool) -> None:
        self.coco, self.image_dir, self.labels, self.horizontal_flip = coco, image_dir, labels, horizontal_flip
        self.offsets = coco.offsets()

    def __len__(self) -> int:
        return len(self.coco)

    def without_augmentation(self) -> COCODetectionDataset:
        """The same samples, never flipped (``wkd-ir`` extracts teacher features from them)."""
        return COCODetectionDataset(self.coco, self.image_dir, self.labels, horizontal_flip=False)

    def target(self, index: int) -> Target:
        """The target dict of image ``index``, before any augmentation."""
        rows = slice(int(self.offsets[index]), int(self.offsets[index + 1]))
        return {
            "boxes": torch.from_numpy(self.coco.boxes[rows].copy()).reshape(-1, 4),
            "labels": torch.from_numpy(self.labels[rows].copy()),
            "image_id": int(self.coco.image_ids[index]),
            "iscrowd": torch.from_numpy(self.coco.iscrowd[rows].copy()),
            "area": torch.from_numpy(self.coco.area[rows].copy()),
        }

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        height, width = (int(v) for v in self.coco.sizes[index])
        image = read_rgb(self.image_dir / str(self.coco.file_names[index]), height, width, self.coco.path)
        target = self.target(index)
        if self.horizontal_flip and bool(torch.rand(()) < 0.5):
            image, target["boxes"] = horizontal_flip(image, target["boxes"])
        return image, target


def collate_detection(batch: list[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """Batch as ``(images, targets)`` lists: detection images differ in size, so they are not stacked."""
    return [image for image, _ in batch], [target for _, target in batch]


class COCODetectionDataModule(ClassificationDataModule):
    """Object detection on a COCO-format dataset (COCO 2017 by default), for torchvision detection models.

    Training drops crowd and degenerate (< 1 pixel wide or high) boxes and then the images left without boxes, and
    mirrors image and boxes left-right with probability 0.5, seeded per sample (exact resume, see
    :mod:`wkd_lightning.data.sampling`). Validation and test keep every image and every non-degenerate box, crowd
    regions marked by ``iscrowd``. Boxes are clipped to the image. Batches are ``(images, targets)`` lists
    (:func:`collate_detection`). ``predict`` reads the test set.

    Attributes (read from the training annotation file on first use, so available before ``setup``):
        num_classes: model outputs including background: K + 1 (``"contiguous"``) or max category id + 1
            (``"category_id"``, 91 for COCO, as torchvision's COCO-pretrained detectors).
        class_names: name of each label; ``"__background__"`` at 0, ``"N/A"`` for category ids COCO leaves unused.
        category_ids: the sorted category ids; under ``"contiguous"`` label ``i`` is category ``category_ids[i - 1]``
            (for writing detections back in COCO ids).

    Args:
        root: dataset folder; the paths below are relative to it (an absolute path is taken as is).
        train_images: training image folder.
        train_annotations: training annotation file.
        val_images: validation image folder.
        val_annotations: validation annotation file.
        test_images: test image folder; None (with ``test_annotations`` None): test on the validation split.
        test_annotations: test annotation file (give both test paths or neither).
        label_mapping: ``"contiguous"`` (sorted category ids -> 1..K) or ``"category_id"`` (raw ids as labels).
        batch_size: images per batch (per process).
        num_workers: data-loading worker processes.
        seed: data seed: per-epoch order and per-sample flip seeds.
        horizontal_flip: random left-right flip of training images (p = 0.5).
        train_size: use only the first N training images (by image id, after filtering); None: all.
        pin_memory: pin host memory for faster copies to a GPU (ignored without one).
    """

    def __init__(
        self,
        root: str,
        train_images: str = "train2017",
        train_annotations: str = "annotations/instances_train2017.json",
        val_images: str = "val2017",
        val_annotations: str = "annotations/instances_val2017.json",
        test_images: str | None = None,
        test_annotations: str | None = None,
        label_mapping: Literal["contiguous", "category_id"] = "contiguous",
        batch_size: int = 2,
        num_workers: int = 4,
        seed: int = 0,
        horizontal_flip: bool = True,
        train_size: int | None = None,
        pin_memory: bool = True,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory, return_index=False, train_size=train_size)
        if label_mapping not in LABEL_MAPPINGS:
            raise ValueError(
                f"COCODetectionDataModule: label_mapping must be one of {LABEL_MAPPINGS}, got {label_mapping!r}."
            )
        if (test_images is None) != (test_annotations is None):
            raise ValueError(
                "COCODetectionDataModule: give both test_images and test_annotations, or neither (test on val); got "
                f"test_images={test_images!r}, test_annotations={test_annotations!r}."
            )
        self.save_hyperparameters()
        self.root, self.label_mapping, self.horizontal_flip = root, label_mapping, horizontal_flip
        self.split_paths = {
            "train": (train_images, train_annotations),
            "val": (val_images, val_annotations),
            "test": (test_images or val_images, test_annotations or val_annotations),
        }
        self.collate_fn = collate_detection
        self._parsed: dict[Path, CocoAnnotations] = {}

    def _layout(self) -> str:
        (train_images, train_annotations), (val_images, val_annotations) = (
            self.split_paths["train"],
            self.split_paths["val"],
        )
        return (
            f"expected root/{train_images}/*.jpg, root/{val_images}/*.jpg, root/{train_annotations} and "
            f"root/{val_annotations} with root = {self.root!r}"
        )

    def _missing(self, what: str, path: Path) -> FileNotFoundError:
        return FileNotFoundError(
            f"COCO {what} {os.fspath(path)!r} not found; {self._layout()}. Get COCO 2017 (2017 Train and Val images, "
            f"2017 Train/Val annotations) from {URL}, unzip it into root and set --data.root to that folder."
        )

    def _path(self, relative: str) -> Path:
        """``root / relative``, after checking that root exists."""
        root = Path(self.root)
        if not root.is_dir():
            raise self._missing("dataset root folder", root)
        return root / relative

    def _annotations(self, split: str) -> CocoAnnotations:
        """The parsed annotation file of ``split`` (cached: the training file also gives the class list)."""
        path = self._path(self.split_paths[split][1])
        if path not in self._parsed:
            if not path.is_file():
                raise self._missing(f"{split} annotation file", path)
            self._parsed[path] = read_annotations(path)
        return self._parsed[path]

    @property
    def categories(self) -> tuple[tuple[int, str], ...]:
        """``(id, name)`` of the training annotation file's categories, sorted by id."""
        return self._annotations("train").categories

    @property
    def num_classes(self) -> int:
        """Model outputs, background included."""
        return len(self.class_names)

    @property
    def class_names(self) -> list[str]:
        """Name of each model label (index 0: background)."""
        return class_names_of(self.categories, self.label_mapping)

    @property
    def class_groups(self) -> list[str]:
        """Group of each model label, for the semantic score of ``wkd-ir``: its COCO ``supercategory``; the
        background, unused ids and categories without a supercategory are groups of their own."""
        supercategories = self._annotations("train").supercategories
        category_of_label = (
            [None, *self.category_ids] if self.label_mapping == "contiguous" else range(len(self.class_names))
        )
        return [
            supercategories.get(category_id) or f"{name} (label {label})"
            for label, (category_id, name) in enumerate(zip(category_of_label, self.class_names))
        ]

    @property
    def category_ids(self) -> list[int]:
        """The sorted category ids of the training annotation file."""
        return [category_id for category_id, _ in self.categories]

    def _check_categories(self, coco: CocoAnnotations) -> None:
        train = self._annotations("train")
        if coco.categories != train.categories:
            only_here = sorted(set(coco.categories) - set(train.categories))
            only_train = sorted(set(train.categories) - set(coco.categories))
            raise ValueError(
                f"COCO categories of {os.fspath(coco.path)!r} differ from those of {os.fspath(train.path)!r} "
                f"(only in the former: {only_here}; only in the latter: {only_train}); labels would not match."
            )

    def _dataset(self, split: str) -> COCODetectionDataset:
        """The dataset of ``split`` (``"train"``, ``"val"`` or ``"test"``), filtered as the split requires."""
        coco = self._annotations(split)
        if split != "train":
            self._check_categories(coco)
        image_dir = self._path(self.split_paths[split][0])
        if not image_dir.is_dir():
            raise self._missing(f"{split} image folder", image_dir)
        coco = for_training(coco) if split == "train" else for_evaluation(coco)
        if split == "train":
            coco = self._limit(coco)
        labels = map_labels(coco.category_ids, coco.categories, self.label_mapping)
        return COCODetectionDataset(coco, image_dir, labels, horizontal_flip=split == "train" and self.horizontal_flip)

    def _limit(self, coco: CocoAnnotations) -> CocoAnnotations:
        """The training images kept: all, or the first ``train_size``; ValueError when none or too few are left."""
        if not len(coco):
            raise ValueError(f"{os.fspath(coco.path)}: no training image has a non-crowd box of at least 1×1 pixel.")
        if self.train_size is None:
            return coco
        if self.train_size > len(coco):
            raise ValueError(f"train_size={self.train_size} exceeds the {len(coco)} training images with boxes.")
        return first_images(coco, self.train_size)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.train_set = SeededDataset(self._dataset("train"), return_index=False)
        if stage in (None, "fit", "validate"):
            self.val_set = self._dataset("val")
        if stage in (None, "test", "predict"):
            same = self.split_paths["test"] == self.split_paths["val"] and self.val_set is not None
            self.test_set = self.val_set if same else self._dataset("test")
