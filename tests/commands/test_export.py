"""What a run leaves a user, as typed (subprocesses of the installed commands): ``wkd models``/``configs``, a short
``wkd fit --help``, ``load_from_checkpoint``, ``wkd export`` round trips, ``wkd predict``'s CSV (one process and
DDP), and ``wkd-ban``'s one-message errors."""

from __future__ import annotations

import csv
import importlib.util
import re
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from tests.commands.test_cli_runs import VANILLA, fit_args
from tests.conftest import write_fashion_mnist
from tests.distributed.launch import QUIET, run, run_ok
from wkd_lightning import DistillationModule, FashionMNISTDataModule
from wkd_lightning.models import mini_resnet8, mini_resnet14

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, Path]:
    """(tiny Fashion-MNIST, run directory of one short `wkd fit` of vanilla.yaml on it), shared by the tests here."""
    root = tmp_path_factory.mktemp("fitted")
    fashion_dir = write_fashion_mnist(root / "fashion-mnist")
    run_ok(fit_args(fashion_dir, root / "run"), root / "fit.log")
    return fashion_dir, root / "run"


def test_models_configs_and_a_fit_help_that_lists_our_models(tmp_path):
    models = run_ok(["wkd", "models"], tmp_path / "models.log").output
    assert re.search(r"\nresnet8x4 +wkd_lightning\.models\.resnet8x4 +3×32×32 +layer3 \(256 ch\)\n", models)
    assert re.search(r"\nmini_resnet8 +wkd_lightning\.models\.mini_resnet8 +1×28×28 +layer3 \(32 ch\)\n", models)
    configs = run_ok(["wkd", "configs", "fashion_mnist"], tmp_path / "configs.log").output
    assert "configs/fashion_mnist/vanilla.yaml" in configs and "configs/cifar100" not in configs
    assert "wkd fit" in configs and "The student alone (cross-entropy only)" in configs
    assert re.search(r"\nconfigs/fashion_mnist/ban_kd\.yaml +wkd-ban +Born-Again Networks with KD", configs)
    assert re.search(r"\nconfigs/fashion_mnist/ir\.yaml +wkd-ir +WKD-L cost matrices", configs)
    unknown = run(["wkd", "models", "no_such_net"], tmp_path / "unknown.log")
    assert unknown.returncode == 1 and "wkd models: error: no registered model name contains 'no_such_net'" in (
        unknown.output
    )
    assert "Traceback" not in unknown.output

    help_text = run_ok(["wkd", "fit", "--help"], tmp_path / "help.log").output
    assert len(help_text.splitlines()) < 1300  # 2492 lines when every nn.Module subclass was listed, twice
    assert "torch.nn.Identity" not in help_text and "torch.ao." not in help_text
    start = help_text.index("\n  --model.student STUDENT")
    student = " ".join(help_text[start : help_text.index("\n  --model.teacher.help", start)].split())
    assert "registered models, as wkd_lightning.models.NAME" in student and "resnet8x4" in student
    assert "wkd_lightning.losses.WKDLogit" in help_text  # the losses' own list stays
    # A reader that went away (`wkd models | head`) is no error of the user's: `true` closes the pipe at once.
    piped = subprocess.run("wkd models | true", shell=True, capture_output=True, text=True, timeout=300)
    assert piped.stderr == "", piped.stderr
    top = run_ok(["wkd", "--help"], tmp_path / "top.log").output
    assert "wkd models" in top and "wkd export" in top


def test_load_from_checkpoint_and_export_round_trips(fitted, tmp_path):
    _, run_dir = fitted
    best = run_dir / "checkpoints/best.ckpt"
    module = DistillationModule.load_from_checkpoint(best, map_location="cpu").eval()  # no arguments needed
    stored = torch.load(best, weights_only=True)["state_dict"]
    assert all(torch.equal(v, stored[k]) for k, v in module.state_dict().items() if k.startswith("student."))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        expected = module(x)

    state_file, script_file = tmp_path / "student.pt", tmp_path / "student.ts"
    printed = run_ok(["wkd", "export", f"--ckpt_path={best}", "--format=state_dict", f"--output={state_file}"],
                     tmp_path / "sd.log").output  # fmt: skip
    assert f"wkd export: wrote {state_file} (state_dict, " in printed
    assert "model = wkd_lightning.models.mini_resnet8(num_classes=10, in_channels=1)" in printed
    bare = mini_resnet8(num_classes=10, in_channels=1)
    bare.load_state_dict(torch.load(state_file, weights_only=True))  # strict: the keys of the bare architecture
    run_ok(["wkd", "export", f"--ckpt_path={best}", "--format=torchscript", f"--output={script_file}"],
           tmp_path / "ts.log")  # fmt: skip
    scripted = torch.jit.load(str(script_file))
    with torch.no_grad():
        torch.testing.assert_close(bare.eval()(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(scripted(x), expected, rtol=1e-5, atol=1e-5)

    again = run(["wkd", "export", f"--ckpt_path={best}", "--format=state_dict", f"--output={state_file}"],
                tmp_path / "again.log")  # fmt: skip
    assert again.returncode == 1 and f"wkd export: error: {state_file} exists already; pass --overwrite" in (
        again.output
    )
    missing = run(["wkd", "export", f"--ckpt_path={tmp_path}/none.ckpt", f"--output={tmp_path}/x.pt"],
                  tmp_path / "missing.log")  # fmt: skip
    assert missing.returncode == 1 and "wkd export: error: --ckpt_path" in missing.output
    assert "does not exist" in missing.output and "Traceback" not in missing.output


def test_load_from_checkpoint_rebuilds_projectors_sized_by_the_data(tmp_path, fashion_dir):
    """WKD-F's projector is built at set-up from the data's input size; the checkpoint keeps that size, so the module
    rebuilt from it alone has the projector and loads every trained weight (strict)."""
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pt"
    torch.save(mini_resnet14().state_dict(), teacher)
    run_dir = tmp_path / "run"
    args = [str(Path(VANILLA).with_name("wkd_f.yaml")) if a == VANILLA else a for a in fit_args(fashion_dir, run_dir)]
    run_ok([*args, f"--model.teacher_weights={teacher}"], tmp_path / "fit.log")
    best = run_dir / "checkpoints/best.ckpt"
    stored = torch.load(best, weights_only=True)["state_dict"]
    assert any(".projector." in k for k in stored)
    module = DistillationModule.load_from_checkpoint(best, map_location="cpu")
    state = module.state_dict()
    assert state.keys() == stored.keys() and all(torch.equal(state[k], stored[k]) for k in stored)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime is not installed (dev extra)")
def test_export_onnx_round_trip(fitted, tmp_path):
    import onnxruntime

    _, run_dir = fitted
    best = run_dir / "checkpoints/best.ckpt"
    output = tmp_path / "student.onnx"
    run_ok(["wkd", "export", f"--ckpt_path={best}", "--format=onnx", f"--output={output}"], tmp_path / "onnx.log")
    assert [p.name for p in tmp_path.glob("student.onnx*")] == ["student.onnx"]  # one file, weights inside
    module = DistillationModule.load_from_checkpoint(best, map_location="cpu").eval()
    x = torch.randn(5, 1, 28, 28)  # another batch size than the export's example
    (got,) = onnxruntime.InferenceSession(str(output)).run(None, {"input": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), module(x), rtol=1e-4, atol=1e-4)


def test_onnx_without_its_packages_names_them(monkeypatch):
    from wkd_lightning import export

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"--format onnx needs the package\(s\) onnx, onnxscript, which are not inst"):
        export.require_onnx()


def read_predictions(folder: Path) -> list[dict]:
    (evaluation,) = folder.iterdir()
    with open(evaluation / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def expected_top5(module: DistillationModule, fashion_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = FashionMNISTDataModule(data_dir=str(fashion_dir), batch_size=64, num_workers=0)
    data.setup("predict")
    with torch.no_grad():
        probs = torch.cat([module.eval()(x).softmax(1) for x, _ in data.predict_dataloader()])
    return probs.topk(5, dim=1)


@pytest.mark.parametrize("devices", [1, 2])
def test_predict_writes_the_top5_of_every_test_sample_once(fitted, tmp_path, devices):
    fashion_dir, fitted_run = fitted
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    best = run_dir / "checkpoints/best.ckpt"
    best.write_bytes((fitted_run / "checkpoints/best.ckpt").read_bytes())
    ddp = ["--trainer.accelerator=cpu", "--trainer.strategy=ddp", f"--trainer.devices={devices}"] if devices > 1 else []
    args = ["wkd", "predict", "-c", VANILLA, f"--data.data_dir={fashion_dir}", "--data.num_workers=0",
            "--data.batch_size=16", f"--trainer.default_root_dir={run_dir}", f"--ckpt_path={best}", *QUIET,
            *ddp]  # fmt: skip
    printed = run_ok(args, tmp_path / "predict.log").output
    rows = read_predictions(run_dir / "predict")
    assert printed.count("wkd predict: wrote the top-5 predictions of 40 samples to ") == 1
    assert list(rows[0]) == ["index", "label", "label_name"] + [
        f"top{i}{s}" for i in range(1, 6) for s in ("", "_name", "_prob")
    ]
    assert [int(r["index"]) for r in rows] == list(range(40))  # the test split, each sample once, in order
    assert [int(r["label"]) for r in rows] == [i % 10 for i in range(40)]  # the fixture's labels
    assert rows[3]["label_name"] == "Dress"
    probs, classes = expected_top5(DistillationModule.load_from_checkpoint(best, map_location="cpu"), fashion_dir)
    assert [[int(r[f"top{i}"]) for i in range(1, 6)] for r in rows] == classes.tolist()
    got = torch.tensor([[float(r[f"top{i}_prob"]) for i in range(1, 6)] for r in rows])
    torch.testing.assert_close(got, probs, rtol=0, atol=2e-6)


def test_wkd_ban_bad_input_is_one_message(tmp_path):
    config = tmp_path / "no_student.yaml"
    config.write_text(yaml.safe_dump({"trainer": {"default_root_dir": str(tmp_path / "ban")}, "model": {}}))
    finished = run(["wkd-ban", "-c", str(config), "--generations=2"], tmp_path / "ban.log")
    assert finished.returncode == 1, finished.output
    assert f"wkd-ban: error: {config} sets no model.student" in finished.output
    assert "Traceback" not in finished.output
    debug = run(["wkd-ban", "-c", str(config), "--generations=2", "--debug"], tmp_path / "debug.log")
    assert debug.returncode == 1 and "Traceback" in debug.output


def test_export_refuses_checkpoints_it_cannot_rebuild(tmp_path):
    linear = torch.nn.Linear(4, 3)
    weights = {f"student.{k}": v for k, v in linear.state_dict().items()}
    foreign = tmp_path / "foreign/checkpoints/x.ckpt"  # no student config, no config.yaml beside its folder
    foreign.parent.mkdir(parents=True)
    torch.save({"pytorch-lightning_version": "2.6.0", "state_dict": weights, "hyper_parameters": {}}, foreign)
    finished = run(["wkd", "export", f"--ckpt_path={foreign}", f"--output={tmp_path}/a.pt"], tmp_path / "a.log")
    assert finished.returncode == 1 and f"wkd export: error: {foreign} stores no student config" in finished.output

    unsized = tmp_path / "unsized.ckpt"  # an architecture the registry does not know: no input size
    student = {"class_path": "torch.nn.Linear", "init_args": {"in_features": 4, "out_features": 3}}
    torch.save({"pytorch-lightning_version": "2.6.0", "state_dict": weights,
                "hyper_parameters": {"student": student}}, unsized)  # fmt: skip
    args = ["wkd", "export", f"--ckpt_path={unsized}", "--format=torchscript", f"--output={tmp_path}/b.ts"]
    finished = run(args, tmp_path / "b.log")
    assert finished.returncode == 1 and "wkd export: error: torchscript needs one input's size" in finished.output
    assert "--input_size C H W" in finished.output and "Traceback" not in finished.output
    assert not (tmp_path / "b.ts").exists()
