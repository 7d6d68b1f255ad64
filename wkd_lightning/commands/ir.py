"""``wkd-ir``: build WKD-L cost matrices (category interrelations) from a trained teacher, with heatmaps and scores.

Example (Fashion-MNIST teacher trained with ``wkd fit -c configs/fashion_mnist/teacher.yaml``)::

    wkd-ir --teacher wkd_lightning.models.mini_resnet14 \\
        --teacher_weights runs/fashion_mnist/teacher/checkpoints/best.ckpt \\
        --data wkd_lightning.data.FashionMNISTDataModule --layer pool --output_dir runs/fashion_mnist/ir

(``python -m wkd_lightning.commands.ir`` is the same command.) The teacher's features at ``--layer`` are extracted over
the data module's **training** set, in order and without augmentation where the data module can say how
(``transform(train=False)``), then for every method ``<output_dir>/<method>.pt`` and ``<output_dir>/<method>.png``
are written. The ``.pt`` file is a dict loadable with ``torch.load(..., weights_only=True)`` and by
:func:`wkd_lightning.losses.load_cost` (``model.losses[...].init_args.cost: <output_dir>/cov_align.pt``)::

    {"cost": C×C fp32 tensor, "method", "teacher", "teacher_config", "teacher_weights", "dataset", "dataset_config",
     "layer", "class_names", "samples_per_class", "kappa_applied": False, "semantic_score": {...} or None}

With a torchvision Faster R-CNN teacher (:mod:`wkd_lightning.detection`) and a COCO-format data module, the rows are
RoI features instead: the ground-truth boxes of each class and, for the background class 0, the teacher's top RPN
proposals that overlap no box (``--layer`` ``box_head`` by default, ``roi_align`` or ``logits``); see
:func:`wkd_lightning.detection.extract_roi_class_features`.

κ is not applied: ``WKDLogit`` sharpens the matrix with its own ``kappa`` when it loads the file. For datasets with
known class groups (Fashion-MNIST, CIFAR-100 superclasses) or a ``--groups`` file, the semantic score of every
matrix is printed beside its chance level (see :mod:`wkd_lightning.ir.score`).
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from torch import nn
from torch.utils.data import DataLoader
from torchvision.models.detection import FasterRCNN

from wkd_lightning.data.sampling import SeededDataset
from wkd_lightning.detection.ir import extract_roi_class_features
from wkd_lightning.ir.extract import LOGITS, extract_class_features
from wkd_lightning.ir.heatmap import plot_cost_heatmap
from wkd_lightning.ir.methods import KNOWN_METHODS, classifier_cosine, cost_matrix, final_linear
from wkd_lightning.ir.score import KNOWN_GROUPINGS, group_labels, known_groups, semantic_score
from wkd_lightning.run.errors import user_errors_as_messages
from wkd_lightning.run.files import replaced_atomically
from wkd_lightning.teacher import FrozenTeacher

#: The box classifier of a torchvision detector (its last nn.Linear is the box regressor).
DETECTOR_CLASSIFIER = "roi_heads.box_predictor.cls_score"
#: Methods the command accepts: the feature-based ones of :func:`cost_matrix` plus the classifier-weight cosine.
CLI_METHODS = (*KNOWN_METHODS, "classifier_cosine")

CLASSIFIER_HINT = "pass --classifier PATH (the dotted path of its final layer)."


def build_parser() -> ArgumentParser:
    """The ``wkd-ir`` argument parser (also reads ``-c config.yaml``)."""
    parser = ArgumentParser(
        prog="wkd-ir",
        description="Build WKD-L cost matrices (category interrelations) from a trained teacher's features, with "
        "heatmaps and a semantic score.",
        default_env=False,
    )
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="YAML file with any of these options.")
    parser.add_argument(
        "--teacher",
        type=nn.Module,
        required=True,
        help="teacher architecture: a class path or registered factory, e.g. wkd_lightning.models.mini_resnet14 "
        "(set its init args with --teacher.num_classes 100 etc.).",
    )
    parser.add_argument(
        "--teacher_weights",
        type=str,
        required=True,
        help="teacher weights: a Lightning checkpoint of this project, a {'model': state_dict} file or a state dict.",
    )
    parser.add_argument(
        "--data",
        type=L.LightningDataModule,
        required=True,
        help="data module whose training set is used, e.g. wkd_lightning.data.FashionMNISTDataModule.",
    )
    parser.add_argument(
        "--layer",
        type=str | None,
        default=None,
        help="classifiers: 'logits' (default) or the dotted path of a teacher module (pool, layer3); detectors: "
        "'box_head' (default), 'roi_align' or 'logits' of the teacher's RoIs.",
    )
    parser.add_argument(
        "--methods",
        type=list[str],
        default=list(KNOWN_METHODS),
        help=f"cost methods to build, any of {', '.join(CLI_METHODS)}.",
    )
    parser.add_argument("--output_dir", type=str, default="runs/ir", help="where the .pt and .png files go.")
    parser.add_argument(
        "--overwrite",
        type=bool,
        default=False,
        help="replace cost files that already exist in --output_dir (by default they are kept and the run refused: "
        "checkpoints trained on a cost record its hash, and a rebuilt cost would no longer match them).",
    )
    parser.add_argument(
        "--max_per_class", type=int | None, default=None, help="use at most this many training images per class."
    )
    parser.add_argument(
        "--groups",
        type=str,
        default="auto",
        help="class groups for the semantic score: 'auto' (recognise Fashion-MNIST / CIFAR-100, else the data "
        "module's class_groups, e.g. COCO supercategories), 'none', a known "
        f"grouping ({', '.join(KNOWN_GROUPINGS)}) or a JSON file {{group: [class names]}}.",
    )
    parser.add_argument(
        "--classifier",
        type=str | None,
        default=None,
        help="module path of the teacher's final linear layer for classifier_cosine (default: the last nn.Linear; "
        f"for detectors {DETECTOR_CLASSIFIER}).",
    )
    parser.add_argument("--device", type=str, default="auto", help="'auto' (CUDA if available), 'cpu', 'cuda', ...")
    parser.add_argument("--progress", type=bool, default=True, help="show a progress bar during extraction.")
    return parser


def main(args: Sequence[str] | None = None) -> dict[str, dict]:
    """Entry point of ``wkd-ir``; returns, per method, the written paths, the matrix and its semantic score."""
    parser = build_parser()
    config = parser.parse_args(args)
    unknown = [m for m in config.methods if m not in CLI_METHODS]
    if unknown or not config.methods:
        parser.error(f"--methods: unknown {unknown or 'empty list'}; choose from {', '.join(CLI_METHODS)}.")
    if config.max_per_class is not None and config.max_per_class < 1:
        parser.error(f"--max_per_class must be >= 1, got {config.max_per_class}.")
    existing = [str(Path(config.output_dir) / f"{m}.pt") for m in config.methods]
    existing = [path for path in existing if os.path.isfile(path)]
    if existing and not config.overwrite:
        raise FileExistsError(
            f"cost file(s) {', '.join(existing)} exist already; wkd-ir does not replace them (runs trained on them "
            "record their hash). Pass --overwrite true to rebuild them, or another --output_dir."
        )
    init = parser.instantiate(config) if hasattr(parser, "instantiate") else parser.instantiate_classes(config)
    teacher = FrozenTeacher(init.teacher, weights=config.teacher_weights)  # raises on a missing or wrong file
    datamodule: L.LightningDataModule = init.data
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device

    datamodule.prepare_data()
    datamodule.setup("fit")
    loader = _sequential_loader(datamodule)
    num_classes = getattr(datamodule, "num_classes", None)
    class_names = getattr(datamodule, "class_names", None)
    feature_methods = [m for m in config.methods if m != "classifier_cosine"]
    is_detector = isinstance(teacher.model, FasterRCNN)
    classifier_path = config.classifier or (DETECTOR_CLASSIFIER if is_detector else None)
    layer = config.layer or ("box_head" if is_detector else LOGITS)
    if is_detector and num_classes is not None:  # the RoI extractor takes C from the teacher's box classifier
        teacher_classes = final_linear(teacher.model, classifier_path, hint=CLASSIFIER_HINT).out_features
        if teacher_classes != num_classes:
            raise ValueError(
                f"the teacher's box classifier has {teacher_classes} outputs but the data has {num_classes} classes "
                "(background included): build the teacher with the data's num_classes (--teacher.num_classes), or "
                "set --data.label_mapping to the teacher's (category_id for torchvision's 91-output COCO models)."
            )
    features = None
    if feature_methods and is_detector:  # RoI features: ground-truth boxes per class, background RoIs for class 0
        features = extract_roi_class_features(
            teacher,
            loader,
            layer,
            max_per_class=config.max_per_class,
            device=device,
            progress=config.progress,
        )
    elif feature_methods:
        features = extract_class_features(
            teacher,
            loader,
            layer,
            num_classes=num_classes,
            max_per_class=config.max_per_class,
            device=device,
            progress=config.progress,
        )
    if features is not None:
        num_classes = len(features)
    if num_classes is None:
        num_classes = final_linear(teacher.model, classifier_path, hint=CLASSIFIER_HINT).out_features
    if class_names is None:
        class_names = [str(k) for k in range(num_classes)]
    class_names = [str(name) for name in class_names]
    if len(class_names) != num_classes:
        raise ValueError(f"the data module names {len(class_names)} classes but has {num_classes}.")
    grouping = _groups(config.groups, class_names, getattr(datamodule, "class_groups", None))

    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    metadata = {
        "teacher": config.teacher.class_path,
        "teacher_config": _plain(config.teacher.get("init_args", {})),
        "teacher_weights": os.fspath(config.teacher_weights),
        "dataset": config.data.class_path,
        "dataset_config": _plain(config.data.get("init_args", {})),
        "layer": layer,
        "class_names": class_names,
        "samples_per_class": [int(x.shape[0]) for x in features] if features is not None else None,
        "max_per_class": config.max_per_class,
        "kappa_applied": False,
    }
    results = {}
    for method in config.methods:
        if method == "classifier_cosine":
            linear = final_linear(teacher.model, classifier_path, hint=CLASSIFIER_HINT)
            if linear.out_features != num_classes:
                raise ValueError(
                    f"the teacher's classifier has {linear.out_features} outputs but the data has {num_classes} "
                    "classes."
                )
            cost = classifier_cosine(linear)
            layer_name = classifier_path or next(n for n, m in teacher.model.named_modules() if m is linear)
        else:
            cost = cost_matrix(features, method)
            layer_name = layer
        score = semantic_score(cost, grouping[1]) if grouping is not None else None
        pt_path, png_path = output_dir / f"{method}.pt", output_dir / f"{method}.png"
        record = {
            **metadata,
            "cost": cost.cpu(),
            "method": method,
            "layer": layer_name,
            "groups": grouping[0] if grouping is not None else None,
            "semantic_score": score.as_dict() if score is not None else None,
        }
        with replaced_atomically(pt_path) as tmp:  # every rank of a multi-process wkd-ban writes the same files
            torch.save(record, tmp)
        title = f"{method} · {_short(config.data.class_path)} · {layer_name}"
        if score is not None:
            title += f"\nsemantic score {score.score:.2f} (chance {score.chance:.2f})"
        with replaced_atomically(png_path) as tmp:
            plot_cost_heatmap(cost, class_names, tmp, title=title, groups=grouping[1] if grouping else None)
        summary = f"{score}" if score is not None else "semantic score n/a (no known class groups)"
        print(f"{method:>18}: {summary} -> {pt_path}, {png_path}")
        results[method] = {"cost": cost, "pt": pt_path, "png": png_path, "score": score}
    return results


def _sequential_loader(datamodule: L.LightningDataModule) -> DataLoader:
    """The training set in order, without augmentation where the dataset (``without_augmentation()``) or the data
    module (an evaluation ``transform(train=False)``) says how."""
    train_loader = datamodule.train_dataloader()
    dataset = train_loader.dataset
    if isinstance(dataset, SeededDataset):  # plain (x, y) samples, no per-sample seeding or indices
        dataset = dataset.dataset
    make_transform = getattr(datamodule, "transform", None)
    if hasattr(dataset, "without_augmentation"):  # datasets that augment inside (detection: boxes flip too)
        dataset = dataset.without_augmentation()
    elif callable(make_transform) and hasattr(dataset, "transform"):
        dataset = copy.copy(dataset)
        dataset.transform = make_transform(train=False)
    else:
        warnings.warn(
            f"{type(datamodule).__name__} offers no evaluation transform (transform(train=False)), so the training "
            "set's own transform is used for feature extraction; if it augments, disable augmentation in the data "
            "module's options for reproducible features.",
            stacklevel=2,
        )
    return DataLoader(
        dataset,
        batch_size=train_loader.batch_size or 256,
        shuffle=False,
        num_workers=train_loader.num_workers,
        collate_fn=train_loader.collate_fn,
        drop_last=False,
    )


def _groups(option: str, class_names: list[str], data_groups: list[str] | None = None) -> tuple[str, list[str]] | None:
    """Resolve ``--groups`` to (name, group label per class), or None when there is nothing to score against.

    ``"auto"`` recognises the known class sets, else takes the data module's own ``class_groups`` (COCO's
    supercategories) when some group holds two classes.
    """
    if option == "none":
        return None
    if option == "auto":
        found = known_groups(class_names)
        if found is None and data_groups is not None and len(set(data_groups)) < len(data_groups):
            found = "data module class_groups", list(data_groups)
        return found
    if option in KNOWN_GROUPINGS:
        return option, group_labels(class_names, KNOWN_GROUPINGS[option])
    path = Path(option)
    if not path.is_file():
        raise FileNotFoundError(
            f"--groups {option!r}: not 'auto', 'none', a known grouping ({', '.join(KNOWN_GROUPINGS)}) or an existing "
            "JSON file mapping group names to lists of class names."
        )
    groups = json.loads(path.read_text())
    if not isinstance(groups, dict) or not all(isinstance(v, list) for v in groups.values()):
        raise ValueError(f"--groups file {option!r} must hold a JSON object {{group: [class names]}}.")
    return path.stem, group_labels(class_names, groups)


def _plain(value):
    """Config values as plain Python (dict/list/str/int/float/bool/None), safe for ``weights_only`` loading."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _short(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1]


def cli_main() -> None:
    """Console-script entry point of ``wkd-ir`` (returns nothing, so the shell sees exit status 0; a bad input: one
    message and status 1, see :mod:`wkd_lightning.run.errors`).

    ``wkd-ir`` needs one process. Started by a multi-process launcher (torchrun, srun), rank 0 builds the files and
    the other ranks exit at once: they would only redo the same work, and find rank 0's files already there.
    """
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and rank != 0:
        print(f"wkd-ir: rank {rank} of {world_size} has nothing to do; rank 0 builds the cost files.")
        return
    with user_errors_as_messages():
        main()


if __name__ == "__main__":
    main()
