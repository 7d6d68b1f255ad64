"""Input-file fingerprints: every checkpoint records the SHA-256 of the teacher weights and of the WKD-L cost file,
and a resume or an evaluation that finds other files is refused (or, with ``allow_changed_inputs``, warned about)."""

from __future__ import annotations

import hashlib
import shutil
import warnings

import lightning as L
import pytest
import torch
from test_module import TinyData, trainer
from test_teacher import _zero_bytes_inside_largest_member

from wkd_lightning import DistillationModule, fingerprints
from wkd_lightning.detection import DetectionDistillationModule
from wkd_lightning.losses import KD, WKDLogit
from wkd_lightning.models import mini_resnet8, mini_resnet14
from wkd_lightning.run.fingerprints import FINGERPRINT_KEY


def sha256(path) -> str:  # the oracle: hashlib on the whole file at once
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def inputs(tmp_path):
    """A teacher file, a second teacher file with other weights, and a 10×10 cost file."""
    torch.manual_seed(0)
    files = {"teacher": tmp_path / "teacher.pt", "other_teacher": tmp_path / "other.pt", "cost": tmp_path / "cost.pt"}
    torch.save(mini_resnet14().state_dict(), files["teacher"])
    torch.save(mini_resnet14().state_dict(), files["other_teacher"])
    torch.save({"cost": 1 - torch.eye(10), "kappa_applied": False}, files["cost"])
    return files


def module(teacher_file, cost_file, **kwargs) -> DistillationModule:
    return DistillationModule(
        student=mini_resnet8(),
        teacher=mini_resnet14(),
        teacher_weights=str(teacher_file),
        losses=[KD(), WKDLogit(cost=str(cost_file), weight=1.0)],
        **kwargs,
    )


def fit_once(tmp_path, inputs) -> str:
    run = trainer(tmp_path / "run", enable_checkpointing=True)
    run.fit(module(inputs["teacher"], inputs["cost"]), datamodule=TinyData())
    return run.checkpoint_callback.best_model_path


def test_checkpoints_hold_the_sha256_of_teacher_and_cost_files(tmp_path, inputs):
    checkpoint = torch.load(fit_once(tmp_path, inputs), weights_only=True)
    assert checkpoint[FINGERPRINT_KEY] == {
        "teacher_weights": {"path": str(inputs["teacher"]), "sha256": sha256(inputs["teacher"])},
        "losses.1.cost": {"path": str(inputs["cost"]), "sha256": sha256(inputs["cost"])},
    }


def test_resume_or_validate_with_other_files_is_refused_or_warned(tmp_path, inputs):
    ckpt = fit_once(tmp_path, inputs)
    data = TinyData()
    with pytest.raises(
        ValueError, match=r"other input files: teacher_weights: the checkpoint's run read .*/teacher\.pt"
    ):
        trainer(tmp_path / "v").validate(module(inputs["other_teacher"], inputs["cost"]), data, ckpt_path=ckpt)
    rebuilt = tmp_path / "cost2.pt"
    torch.save({"cost": 0.5 * (1 - torch.eye(10)), "kappa_applied": False}, rebuilt)
    with pytest.raises(ValueError, match=r"losses\.1\.cost: .* --model\.allow_changed_inputs true"):
        trainer(tmp_path / "f", max_epochs=2).fit(module(inputs["teacher"], rebuilt), data, ckpt_path=ckpt)
    with pytest.warns(UserWarning, match=r"allow_changed_inputs=True: loading a checkpoint whose run read other"):
        trainer(tmp_path / "v").validate(
            module(inputs["other_teacher"], inputs["cost"], allow_changed_inputs=True), data, ckpt_path=ckpt
        )


def test_the_same_files_elsewhere_are_accepted(tmp_path, inputs):
    ckpt = fit_once(tmp_path, inputs)
    moved = {k: shutil.copy(v, tmp_path / f"moved_{v.name}") for k, v in inputs.items()}
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r"allow_changed_inputs")
        trainer(tmp_path / "v").validate(module(moved["teacher"], moved["cost"]), TinyData(), ckpt_path=ckpt)


def test_files_are_hashed_once_at_construction(tmp_path, inputs, monkeypatch):
    fingerprints._cached_sha256.cache_clear()
    calls = []
    original = fingerprints._sha256_of_file
    monkeypatch.setattr(fingerprints, "_sha256_of_file", lambda path: calls.append(path) or original(path))
    model = module(inputs["teacher"], inputs["cost"])
    assert sorted(calls) == sorted(str(p.resolve()) for p in (inputs["teacher"], inputs["cost"]))
    L.Trainer(
        max_epochs=2, default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_train_batches=3, limit_val_batches=1, num_sanity_val_steps=0,
    ).fit(model, datamodule=TinyData())  # fmt: skip
    assert len(calls) == 2  # six steps and two checkpoints later: no more reads


def test_damaged_cost_file_is_refused_before_training(tmp_path, inputs):
    _zero_bytes_inside_largest_member(inputs["cost"])
    with pytest.raises(ValueError, match=r"WKD-L cost file '.*cost\.pt' is damaged"):
        module(inputs["teacher"], inputs["cost"])


def test_detection_module_checks_its_teacher_file(tmp_path):
    from detection.test_detection import small_detector

    teacher, other = tmp_path / "t.pth", tmp_path / "o.pth"
    torch.save(small_detector(seed=1).state_dict(), teacher)
    torch.save(small_detector(seed=2).state_dict(), other)

    def build(path, **kwargs):
        return DetectionDistillationModule(
            student=small_detector(), teacher=small_detector(), teacher_weights=str(path), losses=[KD()], **kwargs
        )

    checkpoint = {}
    build(teacher).on_save_checkpoint(checkpoint)
    assert checkpoint[FINGERPRINT_KEY]["teacher_weights"]["sha256"] == sha256(teacher)
    build(teacher).on_load_checkpoint(checkpoint)
    with pytest.raises(ValueError, match=r"teacher_weights: the checkpoint's run read"):
        build(other).on_load_checkpoint(checkpoint)
    with pytest.warns(UserWarning, match=r"allow_changed_inputs=True"):
        build(other, allow_changed_inputs=True).on_load_checkpoint(checkpoint)
