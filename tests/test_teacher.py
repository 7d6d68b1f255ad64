"""Teacher loading from every supported file format, and its errors."""

import argparse
import ast
import datetime
import inspect
import re
import struct
import subprocess
import sys
import tarfile
import zipfile

import pytest
import torch
import torchvision
from torch import nn

import wkd_lightning.teacher
from wkd_lightning.checkpoints import read_state_dict
from wkd_lightning.models import mini_resnet8, mini_resnet14, resnet18
from wkd_lightning.teacher import FrozenTeacher, Teacher, load_weights


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
    with pytest.raises(ValueError, match=r"could not read teacher weights .* is it complete, and the file you meant"):
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


def test_frozen_teacher_answers_the_teacher_interface_with_no_ops():
    """The module drives every teacher alike: for a pretrained one every call but ``targets`` leaves it as it was, and
    ``targets`` gives the network's logits for every sample."""
    teacher, student = FrozenTeacher(mini_resnet14()), mini_resnet8()
    assert isinstance(teacher, Teacher) and teacher.slot == "teacher"
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x = torch.randn(3, 1, 28, 28)
    teacher.attach(student, [])
    teacher.prepare_state({}, "teacher.")
    teacher.start(num_samples=3, num_classes=10, world_size=1, device=torch.device("cpu"))
    teacher.refresh_costs([], student)
    logits, has_target = teacher.targets(x, torch.arange(3))
    teacher.observe(torch.arange(3), torch.randn(3, 10))
    teacher.after_optimizer_step(student)
    assert has_target is None and not logits.requires_grad
    assert torch.equal(logits, teacher.model(x))
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_online_teachers_are_teachers_saved_under_their_own_slot():
    from wkd_lightning.selfkd import EMATeacher, PreviousEpochTeacher

    for online in (EMATeacher(), PreviousEpochTeacher()):
        assert isinstance(online, Teacher) and online.slot == "online_teacher"


def test_teacher_module_does_not_import_selfkd():
    """``selfkd`` builds on ``teacher``, never the other way round (no import circle, not even for annotations)."""
    tree = ast.parse(inspect.getsource(wkd_lightning.teacher))
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert "wkd_lightning.losses.base" in imported  # the walk sees the module's imports
    assert not [name for name in imported if name and name.startswith("wkd_lightning.selfkd")]


# --------------------------------------------------------------------------- checkpoints users actually have
def _without_bn_counters(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def test_legacy_torchvision_file_without_bn_counters_loads(tmp_path):
    """torchvision's 2017 ImageNet files (resnet34-333f7ec4.pth, ...) predate BatchNorm's num_batches_tracked and use
    the pre-zip serialisation; such a file loads, with the same weights and outputs."""
    torch.manual_seed(0)
    source = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    for module in source.modules():  # non-trivial running statistics, so a skipped buffer would show
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    legacy = _without_bn_counters(source.state_dict())
    assert len(legacy) < len(source.state_dict())
    path = tmp_path / "resnet18-5c106cde.pth"
    torch.save(legacy, path, _use_new_zipfile_serialization=False)
    model = load_weights(resnet18(num_classes=10), path).eval()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in legacy.items())
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)


def test_only_bn_counters_are_filled(tmp_path):
    """Anything else a file lacks is still refused by the strict check: a BN's running_var, or a whole BN (whose
    counter is then not filled either)."""
    state = _without_bn_counters(mini_resnet14().state_dict())
    del state["bn1.running_var"]
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"do not fit SmallResNet: missing \(1\): bn1\.running_var\. Is the"):
        load_weights(mini_resnet14(), tmp_path / "w.pt")
    for key in ("bn1.weight", "bn1.bias", "bn1.running_mean"):
        del state[key]
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"missing \(5\): bn1\.weight, .*bn1\.num_batches_tracked\. Is the"):
        load_weights(mini_resnet14(), tmp_path / "w.pt")


def _zero_bytes_inside_largest_member(path) -> str:
    """Overwrite 64 bytes in the middle of the largest stored member of a zip file, in place; returns its name."""
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", f.read(4))
        f.seek(info.header_offset + 30 + name_length + extra_length + info.file_size // 2)
        f.write(bytes(64))
    return info.filename


def test_checkpoint_corrupted_in_place_is_refused_by_name(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "teacher.pth"
    torch.save({"model": mini_resnet14().state_dict()}, path)
    member = _zero_bytes_inside_largest_member(path)
    torch.load(path, weights_only=True)  # torch alone reads the damaged file without a word
    with pytest.raises(ValueError, match=rf"teacher weights file '{path}' is damaged: {member} fails the zip"):
        load_weights(mini_resnet14(), path)


def test_files_that_are_not_checkpoints_say_what_they_are(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"'.*empty\.pth' is empty \(0 bytes\): an interrupted download"):
        read_state_dict(empty)
    html = tmp_path / "ckpt_epoch_240.pth"
    html.write_text("<!DOCTYPE html>\n<html><head><title>Google Drive - Virus scan warning</title></head></html>")
    with pytest.raises(ValueError, match=r"is an HTML page \(\d+ bytes\), not a checkpoint: the download saved"):
        read_state_dict(html)


def test_unextracted_cifar_teachers_tar_says_extract_it(tmp_path):
    inner = tmp_path / "resnet32x4_vanilla"
    inner.mkdir()
    torch.save({"model": mini_resnet8().state_dict()}, inner / "ckpt_epoch_240.pth")
    archive = tmp_path / "cifar_teachers.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(inner, arcname="cifar_teachers/resnet32x4_vanilla")
    with pytest.raises(ValueError) as error:
        read_state_dict(archive)
    message = str(error.value)
    assert "is a tar archive of 2 files, not a checkpoint (RepDistiller's cifar_teachers.tar, unextracted?)" in message
    assert "cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth" in message and "tar -xf" in message


def test_repdistiller_last_file_with_a_namespace_explains_and_its_fix_works(tmp_path):
    """RepDistiller's `<model>_last.pth` stores the run's argparse options; the message's one-line fix works."""
    state = mini_resnet8().state_dict()
    path = tmp_path / "resnet8_last.pth"
    torch.save({"opt": argparse.Namespace(model="resnet8", epochs=240), "model": state, "epoch": 240}, path)
    with pytest.raises(ValueError) as error:
        load_weights(mini_resnet8(), path)
    message = str(error.value)
    assert "also pickles an argparse.Namespace" in message and "weights_only=False" not in message
    command = re.search(r'python -c "(.*?)" and point at (\S+)\.$', message)
    subprocess.run([sys.executable, "-c", command.group(1)], check=True)
    loaded = load_weights(mini_resnet8(), command.group(2))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def test_other_pickled_objects_are_named(tmp_path):
    torch.save({"model": mini_resnet8().state_dict(), "when": datetime.date(2024, 12, 1)}, tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"pickles a Python object of type datetime\.date, not only tensors"):
        read_state_dict(tmp_path / "w.pth")
