"""COCO detection data module on a tiny dataset in the COCO 2017 on-disk layout (``tests/detection/fixtures.py``)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from detection.fixtures import COLOURS, write_coco_fixture
from jsonargparse import ArgumentParser

from wkd_lightning.data import COCODetectionDataModule
from wkd_lightning.data.coco import collate_detection

CONTIGUOUS = {1: 1, 3: 2, 18: 3}  # fixture category id -> contiguous label
HEIGHT, WIDTH = 64, 80  # the fixture's default image size


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    return write_coco_fixture(tmp_path / "coco")


def annotation_path(root: Path, split: str) -> Path:
    return root / "annotations" / f"instances_{split}2017.json"


def edit_json(root: Path, split: str, change: Callable[[dict], None]) -> None:
    """Apply ``change`` to a split's annotation JSON in place."""
    path = annotation_path(root, split)
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


def module(root: Path, **kwargs) -> COCODetectionDataModule:
    return COCODetectionDataModule(root=str(root), num_workers=0, **kwargs)


def annotations_of(content: dict, image_id: int) -> list[dict]:
    return [a for a in content["annotations"] if a["image_id"] == image_id]


def xyxy(annotations: list[dict]) -> torch.Tensor:
    return torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in annotations)]).reshape(-1, 4)


def add_image(root: Path, split: str, content: dict, image_id: int, annotations: list[list[float | int]]) -> None:
    """Add image ``image_id`` (a copy of the split's first JPEG) with annotations ``[x, y, w, h, category, crowd]``."""
    first = content["images"][0]
    file_name = f"{image_id:012d}.jpg"
    shutil.copy(root / f"{split}2017" / first["file_name"], root / f"{split}2017" / file_name)
    content["images"].append({**first, "id": image_id, "file_name": file_name})
    for x, y, w, h, category_id, crowd in annotations:
        add_annotation(content, image_id, [x, y, w, h], category_id, crowd)


def add_annotation(content: dict, image_id: int, bbox: list, category_id: int, crowd: int) -> None:
    new_id = max(a["id"] for a in content["annotations"]) + 1
    content["annotations"].append(
        {"id": new_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "area": 1.0, "iscrowd": crowd}
    )


def colour_extent(image: torch.Tensor, box: torch.Tensor, colour: tuple[int, int, int]) -> torch.Tensor:
    """Pixel extent ``[x1, y1, x2, y2]`` of the ``colour`` pixels within ``box`` grown by 2 pixels (the fixture
    leaves at least that margin between boxes)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    x0, y0 = max(x1 - 2, 0), max(y1 - 2, 0)
    window = image[:, y0 : y2 + 2, x0 : x2 + 2] * 255
    target = torch.tensor(colour, dtype=torch.float32)[:, None, None]
    match = (window - target).abs().amax(dim=0) < 60
    rows, cols = match.nonzero(as_tuple=True)
    extent = [x0 + int(cols.min()), y0 + int(rows.min()), x0 + int(cols.max()) + 1, y0 + int(rows.max()) + 1]
    return torch.tensor(extent, dtype=torch.float32)


def test_boxes_are_xyxy_pixels_with_contiguous_labels(coco_root: Path):
    content = json.loads(annotation_path(coco_root, "train").read_text())
    dm = module(coco_root, horizontal_flip=False)
    dm.setup("fit")
    assert len(dm.train_set) == 4
    for index in range(4):
        image, target = dm.train_set[index]
        assert image.shape == (3, HEIGHT, WIDTH) and image.dtype == torch.float32
        assert float(image.min()) >= 0 and float(image.max()) <= 1
        assert target["image_id"] == 10 * (index + 1) and isinstance(target["image_id"], int)
        expected = annotations_of(content, target["image_id"])
        torch.testing.assert_close(target["boxes"], xyxy(expected))
        assert target["labels"].tolist() == [CONTIGUOUS[a["category_id"]] for a in expected]
        assert target["area"].tolist() == [a["area"] for a in expected] and target["area"].dtype == torch.float32
        assert target["iscrowd"].tolist() == [0] * len(expected) and target["iscrowd"].dtype == torch.int64
        for box, a in zip(target["boxes"], expected):  # each box frames its colour (1 pixel of JPEG blur allowed)
            torch.testing.assert_close(colour_extent(image, box, COLOURS[a["category_id"]]), box, atol=1, rtol=0)


def test_label_mappings_num_classes_and_class_names(coco_root: Path):
    contiguous = module(coco_root)  # all readable before setup
    assert contiguous.num_classes == 4 and contiguous.class_names == ["__background__", "person", "car", "dog"]
    assert contiguous.category_ids == [1, 3, 18]
    raw = module(coco_root, label_mapping="category_id", horizontal_flip=False)
    names = raw.class_names
    assert raw.num_classes == 19 and len(names) == 19
    assert (names[0], names[1], names[3], names[18]) == ("__background__", "person", "car", "dog")
    assert all(names[i] == "N/A" for i in range(19) if i not in (0, 1, 3, 18))
    raw.setup("fit")
    for dataset, split in ((raw.train_set, "train"), (raw.val_set, "val")):
        content = json.loads(annotation_path(coco_root, split).read_text())
        _, target = dataset[1]
        assert target["labels"].tolist() == [a["category_id"] for a in annotations_of(content, target["image_id"])]


def test_training_drops_crowd_degenerate_and_empty_but_evaluation_keeps_them(coco_root: Path):
    original = json.loads(annotation_path(coco_root, "train").read_text())
    original_val = json.loads(annotation_path(coco_root, "val").read_text())

    def train_change(content: dict) -> None:
        add_annotation(content, 10, [1, 1, 20, 20], 3, crowd=1)
        add_annotation(content, 20, [5, 5, 0.5, 10], 3, crowd=0)  # under 1 pixel wide
        add_annotation(content, 30, [70, 50, 20, 30], 18, crowd=0)  # runs off the image: clipped
        add_annotation(content, 40, [90, 10, 5, 5], 18, crowd=0)  # outside the image: degenerate once clipped
        add_image(coco_root, "train", content, 50, [[1, 1, 9, 9, 1, 1]])  # crowd only
        add_image(coco_root, "train", content, 60, [[1, 1, 9, 0.9, 1, 0]])  # degenerate only
        add_image(coco_root, "train", content, 70, [])  # no annotation

    def val_change(content: dict) -> None:
        add_annotation(content, 1010, [3, 3, 0.2, 0.2], 3, crowd=0)
        add_image(coco_root, "val", content, 1020, [])

    edit_json(coco_root, "train", train_change)
    edit_json(coco_root, "val", val_change)
    dm = module(coco_root, horizontal_flip=False)
    dm.setup("fit")
    targets = {t["image_id"]: t for t in (dm.train_set[i][1] for i in range(len(dm.train_set)))}
    assert sorted(targets) == [10, 20, 30, 40]
    for image_id in (10, 20, 40):
        assert targets[image_id]["iscrowd"].sum() == 0
        torch.testing.assert_close(targets[image_id]["boxes"], xyxy(annotations_of(original, image_id)))
    assert targets[30]["boxes"][-1].tolist() == [70, 50, WIDTH, HEIGHT]
    val = {t["image_id"]: t for t in (dm.val_set[i][1] for i in range(len(dm.val_set)))}
    assert sorted(val) == [1000, 1010, 1020]
    assert val[1000]["iscrowd"].tolist() == [0, 0, 0, 1]  # the fixture's crowd region, kept for the evaluator
    torch.testing.assert_close(val[1010]["boxes"], xyxy(annotations_of(original_val, 1010)))  # degenerate box dropped
    assert val[1020]["boxes"].shape == (0, 4) and val[1020]["labels"].shape == (0,)
    assert val[1020]["boxes"].dtype == torch.float32 and val[1020]["labels"].dtype == torch.int64


def flip_states(dm: COCODetectionDataModule, seeds: range) -> dict[int, bool]:
    """Whether sample 0 comes out mirrored, per sample seed; asserts it is one of the two states exactly."""
    reference = module(dm.root, horizontal_flip=False)
    reference.setup("fit")
    plain, _ = reference.train_set[0]
    states = {}
    for seed in seeds:
        image, _ = dm.train_set[(0, seed)]
        assert torch.equal(image, plain) or torch.equal(image, plain.flip(-1))
        states[seed] = not torch.equal(image, plain)
    return states


def test_flip_moves_boxes_with_the_image(coco_root: Path):
    dm = module(coco_root)
    dm.setup("fit")
    states = flip_states(dm, range(16))
    assert set(states.values()) == {False, True}
    _, plain = dm.train_set[(0, next(seed for seed, flipped in states.items() if not flipped))]
    image, target = dm.train_set[(0, next(seed for seed, flipped in states.items() if flipped))]
    x1, y1, x2, y2 = plain["boxes"].unbind(dim=1)
    torch.testing.assert_close(target["boxes"], torch.stack([WIDTH - x2, y1, WIDTH - x1, y2], dim=1))
    assert torch.equal(target["labels"], plain["labels"])
    colours = {label: COLOURS[category] for category, label in CONTIGUOUS.items()}
    for box, label in zip(target["boxes"], target["labels"].tolist()):
        torch.testing.assert_close(colour_extent(image, box, colours[label]), box, atol=1, rtol=0)


def test_flip_is_a_function_of_the_sample_seed(coco_root: Path):
    dm = module(coco_root)
    dm.setup("fit")
    (a, ta), (b, tb) = dm.train_set[(1, 1234)], dm.train_set[(1, 1234)]
    assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])
    reference = module(coco_root, horizontal_flip=False)
    reference.setup("fit")
    plain = {t["image_id"]: t["boxes"] for t in (reference.train_set[i][1] for i in range(4))}
    loader = dm.train_dataloader()
    seen: dict[int, set[bool]] = {}
    for epoch in range(8):
        loader.sampler.set_epoch(epoch)
        for _, targets in loader:
            for target in targets:
                flipped = not torch.equal(target["boxes"], plain[target["image_id"]])
                seen.setdefault(target["image_id"], set()).add(flipped)
    assert all(states == {False, True} for states in seen.values()) and len(seen) == 4
    loader.sampler.set_epoch(3)
    first = [torch.cat([t["boxes"] for t in targets]) for _, targets in loader]
    loader.sampler.set_epoch(3)
    assert all(torch.equal(x, torch.cat([t["boxes"] for t in y])) for x, (_, y) in zip(first, loader))


def test_loaders_yield_lists_of_images_and_target_dicts(coco_root: Path):
    dm = module(coco_root)
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 2
    assert all(isinstance(x, torch.Tensor) and x.shape == (3, HEIGHT, WIDTH) for x in images)
    for target in targets:
        assert set(target) == {"boxes", "labels", "image_id", "iscrowd", "area"}
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1] == 4
        assert target["labels"].dtype == target["iscrowd"].dtype == torch.int64
    val_ids = [t["image_id"] for _, batch in dm.val_dataloader() for t in batch]
    assert val_ids == [1000, 1010]
    dm.setup("test")
    assert dm.test_set is dm.val_set and len(list(dm.test_dataloader())) == 1
    assert collate_detection([dm.val_set[0], dm.val_set[1]])[1][1]["image_id"] == 1010


def test_separate_test_split_and_train_size(coco_root: Path):
    dm = module(coco_root, test_images="val2017", test_annotations=str(annotation_path(coco_root, "val")))
    dm.setup("test")
    assert dm.val_set is None and [dm.test_set[i][1]["image_id"] for i in range(2)] == [1000, 1010]
    small = module(coco_root, train_size=2)
    small.setup("fit")
    assert [small.train_set[i][1]["image_id"] for i in range(2)] == [10, 20] and len(small.train_set) == 2
    with pytest.raises(ValueError, match="train_size=5 exceeds the 4 training images"):
        module(coco_root, train_size=5).setup("fit")


def test_module_builds_from_command_line_arguments(coco_root: Path):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(COCODetectionDataModule, "data")
    config = parser.parse_args(["--data.root", str(coco_root), "--data.label_mapping", "category_id"])
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    dm = instantiate(config).data
    assert isinstance(dm, COCODetectionDataModule) and dm.num_classes == 19 and dm.batch_size == 2


def test_missing_paths_name_the_path_layout_and_download(coco_root: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"root folder '.*nowhere' not found.*root/train2017/\*\.jpg") as info:
        module(tmp_path / "nowhere").num_classes  # noqa: B018
    assert "root/annotations/instances_val2017.json" in str(info.value)
    assert "https://cocodataset.org/#download" in str(info.value)
    annotation_path(coco_root, "val").unlink()
    with pytest.raises(FileNotFoundError, match=r"val annotation file '.*instances_val2017\.json' not found"):
        module(coco_root).setup("fit")
    shutil.rmtree(coco_root / "train2017")
    with pytest.raises(FileNotFoundError, match=r"train image folder '.*train2017' not found.*cocodataset\.org"):
        module(coco_root).setup("fit")


def test_image_missing_on_disk_is_named_when_loaded(coco_root: Path):
    (coco_root / "train2017" / "000000000020.jpg").unlink()
    dm = module(coco_root)
    dm.setup("fit")
    with pytest.raises(FileNotFoundError, match=r"000000000020\.jpg.*instances_train2017\.json.*not found"):
        dm.train_set[1]


def test_malformed_annotation_files_are_named(coco_root: Path):
    path = annotation_path(coco_root, "train")
    path.write_text(path.read_text()[:100])
    with pytest.raises(ValueError, match=r"instances_train2017\.json' is not valid JSON"):
        module(coco_root).num_classes  # noqa: B018
    edit_json(coco_root, "val", lambda content: content.pop("categories"))
    with pytest.raises(ValueError, match=r"instances_val2017\.json' lacks the key\(s\) \['categories'\]"):
        module(coco_root, train_annotations="annotations/instances_val2017.json").num_classes  # noqa: B018


def test_bad_entries_and_mismatched_categories_are_refused(coco_root: Path):
    edit_json(coco_root, "val", lambda content: content["annotations"][0].pop("bbox"))
    with pytest.raises(ValueError, match=r"instances_val2017\.json' has a malformed entry \(KeyError: 'bbox'\)"):
        module(coco_root).setup("validate")
    edit_json(coco_root, "val", lambda content: content["annotations"].pop(0))
    edit_json(coco_root, "val", lambda content: content["categories"][2].update(name="wolf"))
    with pytest.raises(ValueError, match=r"categories of '.*instances_val2017\.json' differ.*'wolf'"):
        module(coco_root).setup("fit")
    edit_json(coco_root, "train", lambda content: content["annotations"][0].update(category_id=2))
    with pytest.raises(ValueError, match=r"category id\(s\) \[2\] not in 'categories'"):
        module(coco_root).num_classes  # noqa: B018


def test_bad_arguments_are_refused(coco_root: Path):
    with pytest.raises(ValueError, match="label_mapping must be one of"):
        module(coco_root, label_mapping="sorted")
    with pytest.raises(ValueError, match="both test_images and test_annotations"):
        module(coco_root, test_images="val2017")
    with pytest.raises(ValueError, match="batch_size >= 1"):
        module(coco_root, batch_size=0)
