"""Detection distillation: RoI correspondence, the frozen teacher, COCO mAP wiring, IR over RoIs, the CLI and configs.

Every detector here is a small torchvision Faster R-CNN (ResNet-18 / MobileNetV3 FPN) working on 64-96 px images of
the tiny COCO-format fixture that :func:`write_coco_fixture` writes in the real on-disk layout.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from torch import nn

from detection.fixtures import write_coco_fixture
from wkd_lightning.commands.ir import _groups
from wkd_lightning.commands.ir import main as ir_main
from wkd_lightning.commands.wkd import make_cli
from wkd_lightning.data import COCODetectionDataModule
from wkd_lightning.detection import DetectionDistillationModule, extract_roi_class_features, faster_rcnn
from wkd_lightning.detection.roi import check_same_transform, student_rois, teacher_rois
from wkd_lightning.losses import KD, WKDFeature, WKDLogit
from wkd_lightning.teacher import FrozenTeacher

ROOT = Path(__file__).resolve().parents[2]
COCO_CONFIGS = sorted((ROOT / "configs" / "coco").rglob("*.yaml"))
SMALL = {"min_size": 64, "max_size": 96, "box_batch_size_per_image": 32, "trainable_backbone_layers": 5}
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def small_detector(backbone: str = "resnet18", num_classes: int = 4, seed: int = 0, **options) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return faster_rcnn(backbone, num_classes, **{**SMALL, **options})


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    return write_coco_fixture(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def train_batch(coco_root):
    data = COCODetectionDataModule(root=str(coco_root), batch_size=3, num_workers=0, horizontal_flip=False)
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def teacher_file(tmp_path: Path, model: nn.Module) -> str:
    path = tmp_path / "teacher.pth"
    torch.save(model.state_dict(), path)
    return str(path)


# --------------------------------------------------------------------------- RoI correspondence
def test_teacher_sees_the_students_rois(train_batch):
    """A teacher with the student's weights reproduces the student's RoI logits and features row for row; feeding
    it the RoIs in another order does not (the check can fail)."""
    images, targets = train_batch
    student = small_detector()
    teacher = copy.deepcopy(student).eval()
    student.train()
    step = student_rois(student, images, targets)
    rois = teacher_rois(teacher, step.images, step.proposals)
    assert rois.class_logits.shape == step.rois.class_logits.shape == (len(step.labels), 4)
    torch.testing.assert_close(rois.class_logits, step.rois.class_logits)
    torch.testing.assert_close(rois.features["roi_align"], step.rois.features["roi_align"])
    torch.testing.assert_close(rois.features["box_head"], step.rois.features["box_head"])
    shuffled = teacher_rois(teacher, step.images, [p.flip(0) for p in step.proposals])
    assert not torch.allclose(shuffled.class_logits, step.rois.class_logits)
    # RoI labels: the sampler adds the ground-truth boxes to the proposals, so every GT class appears as a target.
    assert set(torch.cat([t["labels"] for t in targets]).tolist()) <= set(step.labels.tolist())
    assert set(step.losses) == {"rpn_objectness", "rpn_box", "roi_classifier", "roi_box"}


def test_teacher_and_student_must_share_the_input_transform():
    with pytest.raises(ValueError, match=r"share one input transform.*min_size"):
        check_same_transform(small_detector(min_size=64), small_detector(min_size=80))


# --------------------------------------------------------------------------- the module
def test_training_step_distils_rois_and_keeps_the_teacher_frozen(tmp_path, train_batch):
    teacher = small_detector(seed=1)
    weights = teacher_file(tmp_path, teacher)
    module = DetectionDistillationModule(
        student=small_detector("mobilenet_v3_large"),
        teacher=small_detector(seed=2),
        teacher_weights=weights,
        losses=[WKDLogit(weight=1.0), WKDFeature(student_path="roi_align", teacher_path="roi_align"), KD()],
        warmup_steps=0,
    )
    before = {k: v.clone() for k, v in module.teacher.model.state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # weights come from the file
    module.train()
    loss = module.training_step(train_batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert not module.teacher.training and not any(p.requires_grad for p in module.teacher.parameters())
    assert all(p.grad is None for p in module.teacher.parameters())
    projector = module.losses[1].projector
    assert any(p.grad is not None for p in projector.parameters())  # WKD-F reaches the projector
    optimizer = module.configure_optimizers()[0][0]
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in module.teacher.parameters()}
    assert optimised >= {id(p) for p in projector.parameters()}
    assert all(torch.equal(before[k], v) for k, v in module.teacher.model.state_dict().items())
    assert not [k for k in module.state_dict() if k.startswith("teacher.")]


def test_ce_weight_scales_the_box_classifier_term_only(train_batch):
    """The detection ``ce_weight`` weights Faster R-CNN's RoI cross-entropy and leaves the other three terms alone."""
    logged = []
    for ce_weight in (1.0, 0.25):
        module = DetectionDistillationModule(student=small_detector(), warmup_steps=0, ce_weight=ce_weight)
        logged.append({})
        module.log = lambda *a, **k: None
        module.log_dict = lambda values, **k: logged[-1].update({k2: float(v) for k2, v in values.items()})
        module.train()
        torch.manual_seed(0)  # torchvision's RPN and RoI samplers draw from the global RNG
        module.training_step(train_batch, 0)
    plain, weighted = logged
    assert weighted["train/loss/roi_classifier"] == pytest.approx(0.25 * plain["train/loss/roi_classifier"], rel=1e-6)
    for key in ("rpn_objectness", "rpn_box", "roi_box"):
        assert weighted[f"train/loss/{key}"] == pytest.approx(plain[f"train/loss/{key}"], rel=1e-6)
    with pytest.raises(ValueError, match=r"DetectionDistillationModule: ce_weight must be a finite number >= 0"):
        DetectionDistillationModule(student=small_detector(), ce_weight=-1.0)


def test_training_step_logs_every_term_raw_and_weighted(train_batch):
    """Faster R-CNN's terms and each plug-in's are logged weighted, raw and with their weight; they sum to the loss."""
    logged = {}
    module = DetectionDistillationModule(
        student=small_detector(), teacher=small_detector(seed=1), losses={"kd": KD(weight=0.5)}, ce_weight=0.25,
        warmup_steps=0,
    )  # fmt: skip
    module.log = lambda name, value, **k: logged.__setitem__(name, torch.as_tensor(value).detach())
    module.log_dict = lambda values, **k: [module.log(name, value) for name, value in values.items()]
    module.train()
    total = module.training_step(train_batch, 0)
    weights = {"rpn_objectness": 1.0, "rpn_box": 1.0, "roi_box": 1.0, "roi_classifier": 0.25, "kd": 0.5}
    assert {k: float(logged[f"train/weight/{k}"]) for k in weights} == weights
    terms = ("rpn_objectness", "rpn_box", "roi_box", "roi_classifier", "kd/kl")
    for term in terms:
        weight = weights[term.split("/")[0]]
        assert torch.equal(logged[f"train/loss/{term}"], weight * logged[f"train/loss/{term}_raw"]), term
    assert torch.equal(logged["train/loss"], total.detach())
    torch.testing.assert_close(sum(logged[f"train/loss/{term}"] for term in terms), total.detach())


def test_module_rejects_what_cannot_work(tmp_path):
    weights = teacher_file(tmp_path, small_detector())
    with pytest.raises(TypeError, match="must be a torchvision FasterRCNN"):
        DetectionDistillationModule(student=nn.Linear(2, 2))
    with pytest.raises(ValueError, match="offers only the RoI features"):
        DetectionDistillationModule(
            student=small_detector(),
            teacher=small_detector(),
            teacher_weights=weights,
            losses=[WKDFeature(student_path="layer4", teacher_path="roi_align")],
        )
    with pytest.raises(ValueError, match="teacher predicts 5 classes and the student 4"):
        five = small_detector(num_classes=5)
        DetectionDistillationModule(
            student=small_detector(), teacher=five, teacher_weights=teacher_file(tmp_path, five), losses=[KD()]
        )
    with pytest.raises(ValueError, match="need a teacher"):
        DetectionDistillationModule(student=small_detector(), losses=[KD()])
    with pytest.raises(ValueError, match="detection batches must be"):
        DetectionDistillationModule(student=small_detector()).training_step((torch.zeros(1, 3, 8, 8), [1]), 0)


# --------------------------------------------------------------------------- COCO mAP on a hand-made case
class FixedDetections(nn.Module):
    """A stand-in student that 'detects' the given boxes (the evaluation wiring is under test, not a model)."""

    def __init__(self, detections: list[dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.detections = detections

    def forward(self, images):
        return self.detections


def hand_made_map(detections, targets) -> dict[str, float]:
    module = DetectionDistillationModule(student=small_detector())
    module.student = FixedDetections(detections)
    module.validation_step(([torch.zeros(3, 100, 100)] * len(targets), targets), 0)
    return {k: float(v) for k, v in module.val_map.compute().items() if k.startswith("map")}


def box(*xyxy: float) -> torch.Tensor:
    return torch.tensor([xyxy], dtype=torch.float32)


def test_map_of_hand_made_detections():
    one = {"boxes": box(10, 10, 50, 50), "labels": torch.tensor([1]), "iscrowd": torch.tensor([0])}
    exact = {"boxes": box(10, 10, 50, 50), "labels": torch.tensor([1]), "scores": torch.tensor([0.9])}
    assert hand_made_map([exact], [one])["map"] == pytest.approx(1.0)
    # Two objects, one found: precision 1 up to recall 0.5 → 51 of COCO's 101 recall points.
    two = {"boxes": torch.cat([box(10, 10, 50, 50), box(60, 60, 90, 90)]), "labels": torch.tensor([1, 1])}
    assert hand_made_map([exact], [two])["map"] == pytest.approx(51 / 101, abs=1e-4)
    # Half-overlapping box (IoU 1/3): a false positive at every IoU threshold of COCO (0.5 .. 0.95).
    shifted = {"boxes": box(30, 10, 70, 50), "labels": torch.tensor([1]), "scores": torch.tensor([0.9])}
    assert hand_made_map([shifted], [one])["map_50"] == pytest.approx(0.0)
    # Detections on a crowd region are ignored, not false positives: the target's iscrowd reaches the evaluator.
    crowd = {
        "boxes": torch.cat([box(10, 10, 50, 50), box(55, 55, 99, 99)]),
        "labels": torch.tensor([1, 1]),
        "iscrowd": torch.tensor([0, 1]),
    }
    twice_on_crowd = {
        "boxes": torch.cat([box(55, 55, 99, 99), box(55, 55, 99, 99), box(10, 10, 50, 50)]),
        "labels": torch.tensor([1, 1, 1]),
        "scores": torch.tensor([0.95, 0.94, 0.9]),
    }
    assert hand_made_map([twice_on_crowd], [crowd])["map"] == pytest.approx(1.0)
    # Without the flag the second box on that region is a false positive: precision 1 up to recall 0.5, then 2/3.
    without_flag = {k: v for k, v in crowd.items() if k != "iscrowd"}
    assert hand_made_map([twice_on_crowd], [without_flag])["map"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-4)


# --------------------------------------------------------------------------- category interrelations over RoIs
def test_roi_class_features_and_the_ir_command(tmp_path, coco_root):
    data = COCODetectionDataModule(root=str(coco_root), batch_size=2, num_workers=0, horizontal_flip=False)
    data.setup("fit")
    teacher = small_detector()
    loader = torch.utils.data.DataLoader(data.train_set.dataset, batch_size=2, collate_fn=data.collate_fn)
    features = extract_roi_class_features(teacher, loader, "box_head", background_per_image=2, progress=False)
    train_json = json.loads((coco_root / "annotations" / "instances_train2017.json").read_text())
    boxes_per_category = {c["id"]: 0 for c in train_json["categories"]}
    for annotation in train_json["annotations"]:
        if not annotation["iscrowd"]:
            boxes_per_category[annotation["category_id"]] += 1
    assert [len(f) for f in features[1:]] == [boxes_per_category[k] for k in sorted(boxes_per_category)]
    assert len(features[0]) == 2 * len(data.train_set) and features[0].shape[1] == 1024
    assert teacher.training  # the pass puts the teacher in eval mode only while it runs
    raw_ids = COCODetectionDataModule(root=str(coco_root), label_mapping="category_id", num_workers=0)
    raw_ids.setup("fit")
    raw_loader = torch.utils.data.DataLoader(raw_ids.train_set.dataset, batch_size=2, collate_fn=raw_ids.collate_fn)
    with pytest.raises(ValueError, match=r"no samples of classes \[2, 4, .*use classifier_cosine"):
        extract_roi_class_features(small_detector(num_classes=19), raw_loader, progress=False)

    weights = teacher_file(tmp_path, teacher)
    command = [
        "--teacher=wkd_lightning.detection.faster_rcnn",
        "--teacher.backbone=resnet18",
        "--teacher.num_classes=4",
        *[f"--teacher.{k}={v}" for k, v in SMALL.items()],
        f"--teacher_weights={weights}",
        "--data=wkd_lightning.data.COCODetectionDataModule",
        f"--data.root={coco_root}",
        "--data.num_workers=0",
        "--methods=[class_mean_cosine, classifier_cosine]",
        f"--output_dir={tmp_path / 'ir'}",
        "--progress=false",
    ]
    results = ir_main(command)
    with pytest.raises(ValueError, match="box classifier has 4 outputs but the data has 19 classes"):
        ir_main([*command, "--data.label_mapping=category_id", "--overwrite=true"])  # a rerun into the same folder
    for method, expected in (("class_mean_cosine", "box_head"), ("classifier_cosine", "cls_score")):
        record = torch.load(results[method]["pt"], weights_only=True)
        assert record["cost"].shape == (4, 4) and record["layer"].endswith(expected)
        assert record["class_names"][0] == "__background__"
    WKDLogit(cost=str(results["class_mean_cosine"]["pt"]))  # the cost file loads as a WKD-L cost


def test_coco_supercategories_group_the_classes_for_the_semantic_score(coco_root):
    data = COCODetectionDataModule(root=str(coco_root))
    assert data.class_groups == ["__background__ (label 0)", "person", "vehicle", "animal"]
    assert _groups("auto", data.class_names, data.class_groups) is None  # every class alone: nothing to score
    raw = COCODetectionDataModule(root=str(coco_root), label_mapping="category_id").class_groups
    assert raw[1] == "person" and raw[3] == "vehicle" and raw[18] == "animal" and raw[2] == "N/A (label 2)"
    shared = ["__background__ (label 0)", "vehicle", "vehicle", "animal"]
    _, groups = _groups("auto", ["__background__", "car", "truck", "dog"], shared)
    assert groups == shared


# --------------------------------------------------------------------------- models
def test_backbone_weights_load_from_local_classification_checkpoints(tmp_path):
    resnet = torchvision.models.resnet18(weights=None)
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pth")
    detector = faster_rcnn("resnet18", 4, backbone_weights=str(tmp_path / "resnet18.pth"))
    torch.testing.assert_close(detector.backbone.body.layer4[1].conv2.weight, resnet.layer4[1].conv2.weight)
    mobilenet = torchvision.models.mobilenet_v3_large(weights=None)
    torch.save(mobilenet.state_dict(), tmp_path / "mobilenet.pth")
    detector = faster_rcnn("mobilenet_v3_large", 4, backbone_weights=str(tmp_path / "mobilenet.pth"))
    torch.testing.assert_close(detector.backbone.body["16"][0].weight, mobilenet.features[16][0].weight)
    with pytest.raises(ValueError, match="do not fit a resnet34 detection backbone"):
        faster_rcnn("resnet34", 4, backbone_weights=str(tmp_path / "resnet18.pth"))
    with pytest.raises(
        FileNotFoundError, match=r"backbone weights file .* ImageNet weights of resnet18 .*f37072fd\.pth"
    ):
        faster_rcnn("resnet18", 4, backbone_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="unknown detection backbone"):
        faster_rcnn("vgg16")
    with pytest.raises(ValueError, match="background too"):
        faster_rcnn("resnet18", 1)


def test_torchvision_coco_checkpoint_layout_loads_as_teacher(tmp_path):
    """``faster_rcnn("resnet50", 91)`` takes the state dict of torchvision's ``fasterrcnn_resnet50_fpn`` (the layout of
    its COCO file, here saved from an untrained copy with ordinary BatchNorm) and then detects exactly as it does."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reference = torchvision.models.detection.fasterrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, min_size=64, max_size=96
        ).eval()
    weights = teacher_file(tmp_path, reference)
    teacher = FrozenTeacher(faster_rcnn("resnet50", 91, min_size=64, max_size=96), weights)
    images = [torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        expected, got = reference(images)[0], teacher.model(images)[0]
    assert len(expected["boxes"]) > 0
    torch.testing.assert_close(got["boxes"], expected["boxes"])
    torch.testing.assert_close(got["scores"], expected["scores"])


# --------------------------------------------------------------------------- the wkd-det command and its configs
def localised_coco_config(config: Path, tmp_path: Path, coco_root: Path) -> Path:
    """A copy of ``config`` for one CPU step on the fixture: small images, a ResNet-18 teacher (random weights in a
    file), local stand-ins for the backbone weights and the cost file, one CPU device."""
    data = yaml.safe_load(config.read_text())
    mapping = data["data"]["init_args"]["label_mapping"]
    num_classes = COCODetectionDataModule(root=str(coco_root), label_mapping=mapping).num_classes
    data["data"]["init_args"].update(root=str(coco_root), num_workers=0, batch_size=2)
    data["trainer"].update(devices=1, strategy="auto", default_root_dir=str(tmp_path / "run"))
    model = data["model"]
    model["warmup_steps"] = 2
    for role in ("student", "teacher"):
        if role not in model:
            continue
        args = model[role]["init_args"]
        if role == "teacher":
            args["backbone"] = "resnet18"
        args.update(num_classes=num_classes, min_size=64, max_size=96, box_batch_size_per_image=32)
        if args.get("backbone_weights"):
            backbone = getattr(torchvision.models, args["backbone"])(weights=None)
            args["backbone_weights"] = str(tmp_path / f"{args['backbone']}.pth")
            torch.save(backbone.state_dict(), args["backbone_weights"])
    if "teacher" in model:
        model["teacher_weights"] = teacher_file(tmp_path, faster_rcnn(**model["teacher"]["init_args"]))
    for loss in (model.get("losses") or {}).values():
        if "cost" in loss["init_args"]:
            cost = tmp_path / "cost.pt"
            torch.save({"cost": 1 - torch.eye(num_classes), "method": "uniform", "kappa_applied": False}, cost)
            loss["init_args"]["cost"] = str(cost)
    path = tmp_path / f"{config.parent.name}_{config.name}"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("config", COCO_CONFIGS, ids=lambda c: c.relative_to(ROOT / "configs").as_posix())
def test_every_coco_config_runs_one_step(config, tmp_path, coco_root):
    original = yaml.safe_load(config.read_text())
    pair = {"r101_r18": ("resnet101", "resnet18"), "r50_mv3": ("resnet50", "mobilenet_v3_large")}.get(config.stem)
    if pair is not None:
        assert original["model"]["student"]["init_args"]["backbone"] == pair[1]
        if "teacher" in original["model"]:
            assert original["model"]["teacher"]["init_args"]["backbone"] == pair[0]
    path = localised_coco_config(config, tmp_path, coco_root)
    make_cli(["fit", "-c", str(path), "--trainer.fast_dev_run=true", *QUIET], model_class=DetectionDistillationModule)


def test_wkd_det_fit_writes_map_summary_and_checkpoints_without_teacher(tmp_path, coco_root):
    """One epoch through the CLI: the best checkpoint follows val/map, summary.json records it, no teacher inside."""
    path = localised_coco_config(ROOT / "configs/coco/wkd_lf/r101_r18.yaml", tmp_path, coco_root)
    args = [
        "fit",
        "-c",
        str(path),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.log_every_n_steps=1",
        *QUIET,
    ]
    cli = make_cli(args, model_class=DetectionDistillationModule)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["metric"] == "val/map" and summary["complete"] and 0 <= summary["best_val_map"] <= 1
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=True)
    assert checkpoint["callbacks"]
    assert not [k for k in checkpoint["state_dict"] if k.startswith("teacher.")]
    assert any(k.startswith("losses.") and ".projector." in k for k in checkpoint["state_dict"])  # WKD-F's
    assert {"val/map", "val/map_50", "val/map_best"} <= set(cli.trainer.callback_metrics)
    metrics = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss/wkd_l/wd", "train/loss/wkd_f/feat", "train/loss/roi_classifier"} <= set(metrics)
