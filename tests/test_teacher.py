"""Teacher loading from every supported file format, and its errors."""

import pytest
import torch

from wkd_lightning.checkpoints import read_state_dict
from wkd_lightning.models import mini_resnet8, mini_resnet14
from wkd_lightning.teacher import FrozenTeacher, load_weights


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "module"])
def test_weights_load_from_the_usual_formats(tmp_path, wrap):
    source = mini_resnet14()
    state = source.state_dict()
    payload = {
        "plain": state,
        "model": {"model": state, "epoch": 240},  # RepDistiller's cifar_teachers.tar layout
        "state_dict": {"state_dict": state},
        "module": {f"module.{k}": v for k, v in state.items()},  # DataParallel
    }[wrap]
    torch.save(payload, tmp_path / "w.pt")
    loaded = load_weights(mini_resnet14(), tmp_path / "w.pt")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def test_lightning_checkpoint_of_this_project_gives_its_student(tmp_path):
    student = mini_resnet8()
    state = {f"student.{k}": v for k, v in student.state_dict().items()}
    state["losses.0.projector.0.weight"] = torch.zeros(1)
    torch.save({"state_dict": state, "pytorch-lightning_version": "2.6.6"}, tmp_path / "run.ckpt")
    assert read_state_dict(tmp_path / "run.ckpt").keys() == student.state_dict().keys()


def test_missing_file_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist\. Train a teacher first"):
        FrozenTeacher(mini_resnet14(), tmp_path / "nope.ckpt")


def test_corrupt_file_is_reported(tmp_path):
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read teacher weights"):
        read_state_dict(tmp_path / "bad.ckpt")


def test_weights_of_another_architecture_show_the_first_mismatches(tmp_path):
    torch.save(mini_resnet8().state_dict(), tmp_path / "small.pt")
    with pytest.raises(
        ValueError, match=r"do not fit SmallResNet: missing \(\d+\): layer1\.1\.conv1\.weight.*shape mismatch"
    ):
        load_weights(mini_resnet14(), tmp_path / "small.pt")


def test_frozen_teacher_ignores_train_mode_and_grad():
    teacher = FrozenTeacher(mini_resnet14())
    teacher.train()
    assert not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    out = teacher(torch.randn(2, 1, 28, 28, requires_grad=True))
    assert not out.requires_grad
