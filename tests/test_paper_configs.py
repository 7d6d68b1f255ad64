"""The paper configs under ``configs/cifar100`` and ``configs/imagenet`` hold exactly the recipes they claim.

The reference values are transcribed here by hand, independently of the YAML files, from the project's shared notes:
SPEC §5 (its table: γ, τ, κ, w_f, ρ, projector, grid, E0 per row, and the training recipes) and RELEASE_RECIPES (what
the official WKD release and mdistiller actually run: its "equal in all 12 WKD configs" paragraph and rows 1-15).
:data:`REFERENCE` holds one row per config with the source of every block of values; :func:`recipe_of` reads the same
flat keys out of a YAML config, and :func:`test_config_matches_its_reference_row` compares them key by key.

Also checked: the table covers exactly the configs on disk (BAN configs aside); every WKD-L paper config reads the
release's ``cka_paired`` cost and its ``_semantic`` twin the class-mean cosine cost; the ``wkd-ir`` command in each
header writes the cost file its config reads, and runs on the test fixtures. That each config builds and trains one
step is tested in ``tests/commands/test_cli.py``; its loss values in ``tests/losses/test_golden.py``.
"""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml

from wkd_lightning.commands.ir import build_parser
from wkd_lightning.commands.ir import main as wkd_ir
from wkd_lightning.losses import CosineDecay, load_cost
from wkd_lightning.losses.schedule import epoch_of
from wkd_lightning.models import model_info
from wkd_lightning.run.optim import milestone_epochs

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
PAPER_DATASETS = ("cifar100", "imagenet")

#: SPEC §5, the table, column by column as there ("–" → None).
COLUMNS = ("dataset", "method", "teacher", "student", "gamma", "tau", "kappa", "w_f", "rho", "projector", "grid", "E0")
SPEC_ROWS = [
    ("cifar100", "wkd_l", "resnet32x4", "resnet8x4", 600, 8, 1, None, None, None, None, 150),
    ("cifar100", "wkd_l", "wrn_40_2", "ShuffleV1", 200, 6, 1, None, None, None, None, 150),
    ("cifar100", "wkd_f", "resnet32x4", "resnet8x4", None, None, None, 0.08, 4, "conv1x1", 1, 150),
    ("cifar100", "wkd_f", "wrn_40_2", "ShuffleV1", None, None, None, 0.3, 3, "conv1x1", 4, 150),
    ("cifar100", "wkd_lf", "resnet32x4", "resnet8x4", 200, 8, 1, 0.08, 8, "conv1x1", 1, 150),
    ("cifar100", "wkd_lf", "wrn_40_2", "ShuffleV1", 60, 4, 1, 0.5, 3, "conv1x1", 4, 150),
    ("imagenet", "wkd_l", "resnet34", "resnet18", 30, 2, 1, None, None, None, None, 0),
    ("imagenet", "wkd_f", "resnet34", "resnet18", None, None, None, 0.02, 2, "bottleneck", 4, 0),
    ("imagenet", "wkd_lf", "resnet34", "resnet18", 10, 2, 1, 1.0, 2, "bottleneck", 4, 0),
    ("imagenet", "wkd_l", "resnet50", "mobilenet_v1", 25, 2, 2, None, None, None, None, 0),
    ("imagenet", "wkd_f", "resnet50", "mobilenet_v1", None, None, None, 0.005, 2, "bottleneck", 4, 30),
    ("imagenet", "wkd_lf", "resnet50", "mobilenet_v1", 25, 2, 2, 0.005, 2, "bottleneck", 4, 0),
]
SPEC_TABLE = [dict(zip(COLUMNS, row, strict=True)) for row in SPEC_ROWS]

#: SPEC §5 "Published top-1" (%), per (dataset, method, teacher).
PUBLISHED = {
    ("cifar100", "wkd_l", "resnet32x4"): 76.53, ("cifar100", "wkd_f", "resnet32x4"): 76.77,
    ("cifar100", "wkd_lf", "resnet32x4"): 77.28, ("cifar100", "wkd_l", "wrn_40_2"): 76.72,
    ("cifar100", "wkd_f", "wrn_40_2"): 77.36, ("cifar100", "wkd_lf", "wrn_40_2"): 77.50,
    ("imagenet", "wkd_l", "resnet34"): 72.49, ("imagenet", "wkd_f", "resnet34"): 72.50,
    ("imagenet", "wkd_lf", "resnet34"): 72.76, ("imagenet", "wkd_l", "resnet50"): 73.17,
    ("imagenet", "wkd_f", "resnet50"): 73.12, ("imagenet", "wkd_lf", "resnet50"): 73.69,
}  # fmt: skip

#: RELEASE_RECIPES "Equal in all 12 WKD configs" (SGD momentum 0.9, weight decay, batch, epochs, LR steps, CE weight
#: 1) and row 1 (the release's trainer hard-codes nesterov=True, ImageNet included).
RELEASE_SGD = {
    "cifar100": {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "batch_size": 64, "max_epochs": 240,
                 "milestones": [150, 180, 210], "lr_gamma": 0.1, "ce_weight": 1.0},
    "imagenet": {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-4, "batch_size": 256, "max_epochs": 100,
                 "milestones": [30, 60, 90], "lr_gamma": 0.1, "ce_weight": 1.0},
}  # fmt: skip
#: RELEASE_RECIPES "Equal in all 12": lr 0.05 (res8x4) / 0.01 (ShuffleV1) / 0.1 (ImageNet), by student.
RELEASE_LR = {"resnet8x4": 0.05, "ShuffleV1": 0.01, "resnet18": 0.1, "mobilenet_v1": 0.1}
#: SPEC §1.4 and RELEASE_RECIPES "Equal in all 12": Sinkhorn ε = 0.05, exactly 10 iterations.
RELEASE_SINKHORN = {"wkd_l.sinkhorn_eps": 0.05, "wkd_l.sinkhorn_iters": 10}
#: SPEC §4.1 / RELEASE_RECIPES "feature layers (same tensors)": the last stage of each network, by our module names.
LAST_STAGE = {
    "resnet8x4": "layer3", "resnet32x4": "layer3", "ShuffleV1": "layer3", "wrn_40_2": "block3",
    "resnet18": "layer4", "resnet34": "layer4", "resnet50": "layer4", "mobilenet_v1": "features.stage5",
}  # fmt: skip

#: mdistiller's recipe for its KD/DKD baselines: RELEASE_RECIPES rows 10 (no Nesterov on CIFAR-100) and 12/15
#: (ImageNet: batch 512, lr 0.2, no Nesterov); the rest as mdistiller's CIFAR/ImageNet SOLVER sections, which equal the
#: release's (batch 64, 240 epochs, steps 150/180/210, wd 5e-4; 100 epochs, steps 30/60/90, wd 1e-4).
MDISTILLER_SGD = {
    "cifar100": RELEASE_SGD["cifar100"] | {"nesterov": False},
    "imagenet": RELEASE_SGD["imagenet"] | {"nesterov": False, "batch_size": 512},
}
MDISTILLER_LR = {"resnet8x4": 0.05, "ShuffleV1": 0.01, "resnet18": 0.2, "mobilenet_v1": 0.2}
#: Loss settings of the baselines, with their RELEASE_RECIPES rows.
MDISTILLER_LOSSES = {
    ("cifar100", "kd", "resnet32x4"): ({"ce_weight": 0.1, "kd.temperature": 4.0, "kd.weight": 0.9}, "row 9"),
    ("cifar100", "kd", "wrn_40_2"): (
        {"ce_weight": 0.1, "kd.temperature": 4.0, "kd.weight": 0.9},
        "row 11: no mdistiller config for this pair; mdistiller's KD defaults of row 9",
    ),
    ("imagenet", "kd", "resnet34"): ({"ce_weight": 0.5, "kd.temperature": 1.0, "kd.weight": 0.5}, "row 12"),
    ("imagenet", "kd", "resnet50"): ({"ce_weight": 0.5, "kd.temperature": 1.0, "kd.weight": 0.5}, "row 12"),
    **{
        ("cifar100", "dkd", teacher): (
            {"ce_weight": 1.0, "dkd.alpha": 1.0, "dkd.beta": 8.0, "dkd.temperature": 4.0, "dkd.warmup_epochs": 20},
            "'DKD CIFAR (α 1, β 8, T 4, warm-up 20, CE 1) matched mdistiller'",
        )
        for teacher in ("resnet32x4", "wrn_40_2")
    },
    ("imagenet", "dkd", "resnet34"): (
        {"ce_weight": 1.0, "dkd.alpha": 1.0, "dkd.beta": 0.5, "dkd.temperature": 1.0, "dkd.warmup_epochs": 1},
        "rows 13-15 (mdistiller configs/imagenet/r34_r18/dkd.yaml: β 0.5, T 1, warm-up 1, CE 1; α the cfg default)",
    ),
    ("imagenet", "dkd", "resnet50"): (
        {"ce_weight": 1.0, "dkd.alpha": 1.0, "dkd.beta": 2.0, "dkd.temperature": 1.0, "dkd.warmup_epochs": 1},
        "rows 13-15 (mdistiller configs/imagenet/r50_mv1/dkd.yaml: β 2.0, T 1, warm-up 1, CE 1; α the cfg default)",
    ),
}

#: The four teacher → student pairs and the teachers' weight files (RepDistiller's cifar_teachers.tar layout;
#: torchvision's v1 ImageNet files).
PAIRS = {
    ("cifar100", "resnet32x4", "resnet8x4"): "weights/cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth",
    ("cifar100", "wrn_40_2", "ShuffleV1"): "weights/cifar_teachers/wrn_40_2_vanilla/ckpt_epoch_240.pth",
    ("imagenet", "resnet34", "resnet18"): "weights/resnet34-b627a593.pth",
    ("imagenet", "resnet50", "mobilenet_v1"): "weights/resnet50-0676ba61.pth",
}
CIFAR_TEACHERS = ("resnet32x4", "wrn_40_2")
#: The semantic-cost twins of the WKD-L paper configs (ours, SPEC §8): ``<method>_semantic/``.
SEMANTIC = "_semantic"


def _wkd_values(row: dict, cost: str) -> dict:
    values = {"E0": row["E0"]}
    if row["gamma"] is not None:
        values |= {"wkd_l.weight": row["gamma"], "wkd_l.temperature": row["tau"], "wkd_l.kappa": row["kappa"]}
        values |= RELEASE_SINKHORN | {"wkd_l.cost": cost}
    if row["w_f"] is not None:
        values |= {"wkd_f.weight": row["w_f"], "wkd_f.mean_weight": row["rho"], "wkd_f.projector": row["projector"]}
        values |= {"wkd_f.grid": row["grid"], "wkd_f.covariance": "diagonal"}
        values |= {"wkd_f.student_path": LAST_STAGE[row["student"]], "wkd_f.teacher_path": LAST_STAGE[row["teacher"]]}
    return values


def _row(config: str, teacher: str, student: str, values: dict, source: str) -> dict:
    return {"config": config, "teacher": teacher, "student": student, "values": values, "source": source}


def build_reference() -> list[dict]:
    """One row per config: the expected flat values (see :func:`recipe_of`) and where they come from."""
    rows = []
    for spec in SPEC_TABLE:
        d, m, t, s = spec["dataset"], spec["method"], spec["teacher"], spec["student"]
        recipe = RELEASE_SGD[d] | {"optimizer": "PaperSGD", "lr": RELEASE_LR[s]}
        source = (
            f"SPEC §5 table row {d} {m} {t}->{s}; RELEASE_RECIPES 'equal in all 12' (SGD, lr, wd, batch, epochs, "
            "steps, CE 1, Sinkhorn, layers) and row 1 (Nesterov)"
        )
        rows.append(_row(f"{d}/{m}/{t}_{s}", t, s, recipe | _wkd_values(spec, "cka_paired"), source + ", row 3 (cost)"))
        if spec["gamma"] is not None:
            semantic = recipe | _wkd_values(spec, "class_mean_cosine")
            rows.append(_row(f"{d}/{m}{SEMANTIC}/{t}_{s}", t, s, semantic, source + "; cost: ours, SPEC §8"))
    for (d, m, t), (losses, reference_row) in MDISTILLER_LOSSES.items():
        s = next(s for (d2, t2, s) in PAIRS if (d2, t2) == (d, t))
        recipe = MDISTILLER_SGD[d] | {"optimizer": "PaperSGD", "lr": MDISTILLER_LR[s]}
        source = f"mdistiller via RELEASE_RECIPES {reference_row}; SGD recipe rows 10/12/15"
        rows.append(_row(f"{d}/{m}/{t}_{s}", t, s, recipe | losses, source))
    for t in CIFAR_TEACHERS:
        recipe = RELEASE_SGD["cifar100"] | {"optimizer": "PaperSGD", "lr": 0.05}
        rows.append(_row(f"cifar100/teacher/{t}", None, t, recipe, "SPEC §5 CIFAR-100 recipe (a teacher: CE only)"))
    return rows


REFERENCE = build_reference()
LOSS_PREFIX = {
    "wkd_lightning.losses.WKDLogit": "wkd_l",
    "wkd_lightning.losses.WKDFeature": "wkd_f",
    "wkd_lightning.losses.KD": "kd",
    "wkd_lightning.losses.DKD": "dkd",
}


def load(path: Path) -> dict:
    assert path.is_file(), f"missing config {path.relative_to(ROOT)}"
    return yaml.safe_load(path.read_text())


def config_file(config: str) -> Path:
    return CONFIG_DIR / f"{config}.yaml"


def recipe_of(cfg: dict) -> dict:
    """The flat recipe values of a YAML config, under the keys of :data:`REFERENCE` (a cost file → its method)."""
    model, data = cfg["model"], cfg["data"]["init_args"]
    optimizer = model["optimizer"]
    scheduler = model["lr_scheduler"]
    assert scheduler["class_path"] == "wkd_lightning.run.optim.MultiStepLR"  # milestones: fractions of the run
    values = {
        "optimizer": optimizer["class_path"].rpartition(".")[2],
        **{k: optimizer["init_args"][k] for k in ("lr", "momentum", "nesterov", "weight_decay")},
        "batch_size": data["batch_size"],
        "max_epochs": cfg["trainer"]["max_epochs"],
        "milestones": milestone_epochs(scheduler["init_args"]["milestones"], cfg["trainer"]["max_epochs"]),
        "lr_gamma": scheduler["init_args"]["gamma"],
        "ce_weight": model.get("ce_weight", 1.0),  # the module's default
    }
    starts = set()
    losses = model.get("losses") or {}
    assert isinstance(losses, dict), "losses keyed (model.losses.<key>), so one loss can be addressed"
    for key, loss in losses.items():
        prefix = LOSS_PREFIX[loss["class_path"]]
        assert key == prefix, f"the {loss['class_path']} loss is keyed {key!r}, not {prefix!r}"
        args = dict(loss.get("init_args") or {})
        schedule = args.pop("schedule", None)
        if schedule is not None:
            assert schedule["class_path"] == "wkd_lightning.losses.CosineDecay"
            start = schedule["init_args"]["start_epoch"]
            assert start == 0 or 0 < start < 1, f"E0 {start}: a fraction of the run (0 is the same in any run)"
            starts.add(epoch_of(start, cfg["trainer"]["max_epochs"], "E0"))  # the epoch the run resolves it to
        if prefix == "wkd_l":
            args["cost"] = Path(args["cost"]).stem
        if prefix == "wkd_f":
            args.setdefault("covariance", "diagonal")
        values |= {f"{prefix}.{k}": v for k, v in args.items()}
    if starts:
        assert len(starts) == 1, f"one E0 for every scheduled loss, got {starts}"
        values["E0"] = starts.pop()
    return values


def test_the_transcribed_tables_are_complete():
    """12 SPEC rows (3 methods × 2 pairs × 2 data sets), each once, with a published number; 8 baselines."""
    keys = {(r["dataset"], r["method"], r["teacher"], r["student"]) for r in SPEC_TABLE}
    assert len(keys) == len(SPEC_TABLE) == 12
    assert set(PUBLISHED) == {(d, m, t) for d, m, t, _ in keys}
    for row in SPEC_TABLE:
        assert (row["dataset"], row["teacher"], row["student"]) in PAIRS
        logit, feature = row["method"] in ("wkd_l", "wkd_lf"), row["method"] in ("wkd_f", "wkd_lf")
        assert all((row[k] is not None) == logit for k in ("gamma", "tau", "kappa"))
        assert all((row[k] is not None) == feature for k in ("w_f", "rho", "projector", "grid"))
    assert len(MDISTILLER_LOSSES) == 8
    assert len({row["config"] for row in REFERENCE}) == len(REFERENCE) == 12 + 8 + 8 + 2
    for network, stage in LAST_STAGE.items():  # our registry names the same layers (the release's last stage)
        assert model_info(network).last_stage == stage


def test_paper_config_folders_hold_exactly_the_reference_configs():
    """Every reference row has its config and nothing else is there (except the BAN configs of SPEC §7)."""
    found = {
        path.relative_to(CONFIG_DIR).with_suffix("").as_posix()
        for dataset in PAPER_DATASETS
        for path in (CONFIG_DIR / dataset).rglob("*.yaml")
        if not path.name.startswith("ban_")
    }
    expected = {row["config"] for row in REFERENCE}
    assert not expected - found, f"missing: {sorted(expected - found)}"
    assert not found - expected, f"unexpected: {sorted(found - expected)}"


@pytest.mark.parametrize("row", REFERENCE, ids=lambda row: row["config"])
def test_config_matches_its_reference_row(row):
    cfg = load(config_file(row["config"]))
    actual, expected = recipe_of(cfg), row["values"]
    wrong = {k: (actual.get(k, "<absent>"), v) for k, v in expected.items() if actual.get(k, "<absent>") != v}
    extra = sorted(set(actual) - set(expected))
    assert not wrong and not extra, (
        f"{row['config']} vs {row['source']}: (config, reference) {wrong}; keys with no reference value {extra}"
    )


@pytest.mark.parametrize("row", REFERENCE, ids=lambda row: row["config"])
def test_config_names_its_networks_data_and_run_directory(row):
    dataset = row["config"].split("/")[0]
    cfg = load(config_file(row["config"]))
    model, trainer, data = cfg["model"], cfg["trainer"], cfg["data"]
    classes = {"cifar100": 100, "imagenet": 1000}[dataset]
    assert model["student"]["class_path"] == f"wkd_lightning.models.{row['student']}"
    assert model["student"]["init_args"]["num_classes"] == classes
    if row["teacher"] is None:
        assert not model.get("teacher") and not model.get("teacher_weights") and not model.get("losses")
    else:
        assert model["teacher"]["class_path"] == f"wkd_lightning.models.{row['teacher']}"
        assert model["teacher"]["init_args"]["num_classes"] == classes
        assert model["teacher_weights"] == PAIRS[(dataset, row["teacher"], row["student"])]
    assert trainer["precision"] == "bf16-mixed"  # a documented deviation (docs: fp16 + GradScaler in the release)
    assert trainer["devices"] == 1  # batch_size is per device: the recipe's batch is the total
    assert trainer["default_root_dir"] == f"runs/{row['config']}"
    assert cfg["seed_everything"] == 0  # a documented deviation (docs: seeds 42 / 10 in the release)
    data_class = {"cifar100": "CIFAR100DataModule", "imagenet": "ImageNetDataModule"}[dataset]
    assert data["class_path"] == f"wkd_lightning.data.{data_class}"
    assert data["init_args"]["data_dir"] == f"data/{dataset}"
    if dataset == "imagenet":  # ImageNetDataModule takes num_classes; the module must name the same C
        assert data["init_args"]["num_classes"] == model["num_classes"] == classes
    assert f"wkd fit -c configs/{row['config']}.yaml" in header(config_file(row["config"])), "the header's command"


def test_imagenet_teacher_note_names_old_and_new_torchvision_files():
    note = (CONFIG_DIR / "imagenet" / "teacher" / "README.md").read_text()
    for (dataset, teacher, _), weights in PAIRS.items():
        if dataset == "imagenet":
            assert weights in note and f"wkd_lightning.models.{teacher}" in note
    for legacy in ("resnet34-333f7ec4.pth", "resnet50-19c8e357.pth", "resnet18-5c106cde.pth"):
        assert legacy in note
    assert "weights_only=True" in note


SCHEDULES = sorted({(row["E0"], RELEASE_SGD[row["dataset"]]["max_epochs"]) for row in SPEC_TABLE})


@pytest.mark.parametrize(("e0", "max_epochs"), SCHEDULES, ids=[f"E0={e0},E={e}" for e0, e in SCHEDULES])
def test_cosine_decay_is_the_spec_schedule(e0, max_epochs):
    """SPEC §2: c(e) = 1 for e ≤ E0, else ½(1 + cos(π(e − E0)/(E − E0))); with E0 = 0 the decay starts at epoch 1."""
    schedule = CosineDecay(start_epoch=e0)
    for epoch in range(1, max_epochs + 1):
        spec = 1.0 if epoch <= e0 else 0.5 * (1 + math.cos(math.pi * (epoch - e0) / (max_epochs - e0)))
        assert schedule(epoch, max_epochs) == pytest.approx(spec, abs=1e-12), epoch
    assert schedule(max_epochs, max_epochs) == pytest.approx(0.0, abs=1e-12)
    if e0 == 0:
        assert schedule(1, max_epochs) < 1.0


def header(path: Path) -> str:
    """The leading comment block of a YAML file."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:])
    return "\n".join(lines)


def ir_commands(path: Path) -> list[list[str]]:
    """The ``wkd-ir`` commands in a config's header (continuation lines ending in a backslash joined), as argv."""
    text = header(path).replace("\\\n", " ")
    return [shlex.split(match) for match in re.findall(r"^\s*wkd-ir (.*)$", text, flags=re.MULTILINE)]


WKD_L_CONFIGS = [row for row in REFERENCE if "wkd_l.cost" in row["values"]]


@pytest.mark.parametrize("row", WKD_L_CONFIGS, ids=lambda row: row["config"])
def test_header_wkd_ir_command_writes_the_cost_the_config_reads(row):
    """The one ``wkd-ir`` command of a header writes the config's cost: the release's ``cka_paired`` of the teacher's
    last-stage maps (CIFAR-100) or logits (ImageNet), SPEC §3; or, in a ``_semantic`` config, the class-mean cosine of
    the pooled penultimate features."""
    dataset = row["config"].split("/")[0]
    path = config_file(row["config"])
    cfg = load(path)
    (argv,) = ir_commands(path)
    ns = build_parser().parse_args(argv)
    assert ns.teacher.class_path == cfg["model"]["teacher"]["class_path"]
    assert ns.teacher_weights == cfg["model"]["teacher_weights"]
    assert ns.data.class_path == cfg["data"]["class_path"]
    assert ns.data.init_args.data_dir == cfg["data"]["init_args"]["data_dir"]
    if dataset == "cifar100":
        assert ns.data.init_args.augment is False  # features of the un-augmented training images
    method = row["values"]["wkd_l.cost"]
    assert ns.methods == [method]
    if method == "cka_paired":
        assert ns.layer == (LAST_STAGE[row["teacher"]] if dataset == "cifar100" else "logits")
    else:
        assert ns.layer == "avgpool"
    (cost,) = [
        loss["init_args"]["cost"] for loss in cfg["model"]["losses"].values() if loss["class_path"].endswith("WKDLogit")
    ]
    assert f"{ns.output_dir}/{method}.pt" == cost


@pytest.mark.parametrize(
    "teacher_key",
    sorted({(d, t, s) for (d, t, s) in PAIRS}),
    ids=lambda key: f"{key[0]}/{key[1]}",
)
def test_header_wkd_ir_commands_run(teacher_key, tmp_path, request):
    """Both header commands of a teacher (paper config and its semantic twin) run as written on the fixture data set
    (random teacher weights, the fixture's classes) and write a C×C cost that ``WKDLogit`` can load."""
    dataset, teacher, student = teacher_key
    paths = [config_file(f"{dataset}/wkd_l{suffix}/{teacher}_{student}") for suffix in ("", SEMANTIC)]
    data_dir = request.getfixturevalue("cifar100_dir" if dataset == "cifar100" else "imagenet_dir")
    teacher_args = {}
    if dataset == "imagenet":
        teacher_args["num_classes"] = sum(1 for d in (data_dir / "train").iterdir() if d.is_dir())
    weights = tmp_path / "teacher.pt"
    torch.save({"model": model_info(teacher).factory(**teacher_args).state_dict()}, weights)
    for path in paths:
        (argv,) = ir_commands(path)
        out = tmp_path / build_parser().parse_args(argv).output_dir
        extra = [f"--teacher_weights={weights}", f"--data.data_dir={data_dir}", "--data.num_workers=0"]
        extra += [f"--output_dir={out}", "--progress=false", "--device=cpu"]
        if teacher_args:
            extra += [f"--teacher.num_classes={teacher_args['num_classes']}"]
            extra += [f"--data.num_classes={teacher_args['num_classes']}"]
        results = wkd_ir([*argv, *extra])
        (method,) = results
        assert results[method]["pt"] == out / f"{method}.pt" and results[method]["pt"].is_file()
        cost = load_cost(results[method]["pt"], kappa=1.0)
        classes = teacher_args.get("num_classes", 100)
        assert cost.shape == (classes, classes)


def _docs_rows(header_start: str) -> list[list[str]]:
    """The body rows of the table of the docs' *Paper scale* page whose header row starts with ``header_start``."""
    lines = (ROOT / "docs" / "paper_scale.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def test_docs_reproduction_table_gives_every_paper_config_its_number_and_command():
    """Every SPEC §5 row is in the docs' reproduction table with SPEC's values and published top-1, and the command
    runs its config; the docs' wkd-ir commands are the ones in the config headers (same argv)."""
    rows = {row[0].strip("`"): row for row in _docs_rows("| config | γ | τ |")}
    for spec in SPEC_TABLE:
        name = f"configs/{spec['dataset']}/{spec['method']}/{spec['teacher']}_{spec['student']}.yaml"
        assert name in rows, name
        cells = rows[name]
        expected = [spec[k] for k in ("gamma", "tau", "kappa", "w_f", "rho", "projector", "grid", "E0")]
        assert cells[1:9] == ["–" if v is None else str(v) for v in expected], name
        assert float(cells[9]) == PUBLISHED[(spec["dataset"], spec["method"], spec["teacher"])], name
        assert cells[10] == f"`wkd fit -c {name}`"
    docs_ir = {
        row[2].strip("`"): shlex.split(row[1].strip("`").removeprefix("wkd-ir "))
        for row in _docs_rows("| teacher | command | writes |")
    }
    for dataset, teacher, student in PAIRS:
        path = config_file(f"{dataset}/wkd_l/{teacher}_{student}")
        (argv,) = ir_commands(path)
        writes = f"{build_parser().parse_args(argv).output_dir}/cka_paired.pt"
        assert docs_ir[writes] == argv
