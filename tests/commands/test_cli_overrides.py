"""Overrides that do what they say, as a user types them (a subprocess of the installed ``wkd``): one loss's one
setting by its key (``--model.losses.wkd_l.weight 30``, or a second ``-c`` file) merges into that loss; loss-weight
schedules follow ``--trainer.max_epochs`` unless pinned; a ``1`` batch limit in a config file is one batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.distributed.launch import QUIET, run, run_ok
from wkd_lightning.commands.wkd import one_batch_limits
from wkd_lightning.losses import KD, WKDLogit
from wkd_lightning.losses.base import keyed_loss_configs, loss_plugins
from wkd_lightning.run.config_layers import keyed_losses_argv, merged_losses

ROOT = Path(__file__).resolve().parents[2]
WKD_LF = str(ROOT / "configs/fashion_mnist/wkd_lf.yaml")
VANILLA = str(ROOT / "configs/fashion_mnist/vanilla.yaml")
CIFAR_WKD_LF = str(ROOT / "configs/cifar100/wkd_lf/resnet32x4_resnet8x4.yaml")

pytestmark = pytest.mark.filterwarnings("ignore")


def printed(tmp_path: Path, *args: str) -> dict:
    """The config ``wkd fit <args> --print_config`` prints (resolved, as the run would use it)."""
    finished = run_ok(["wkd", "fit", *args, "--print_config"], tmp_path / "print.log")
    return yaml.safe_load(finished.output[finished.output.index("# lightning") :])


def losses(config: dict) -> dict:
    return {key: loss["init_args"] for key, loss in config["model"]["losses"].items()}


def test_one_loss_setting_by_its_key_on_the_command_line(tmp_path):
    base = losses(printed(tmp_path, "-c", WKD_LF))
    assert list(base) == ["wkd_l", "wkd_f"]
    assert base["wkd_l"]["weight"] == 25.0 and base["wkd_f"]["weight"] == 0.08
    changed = losses(
        printed(tmp_path, "-c", WKD_LF, "--model.losses.wkd_l.weight", "30", "--model.losses.wkd_f.init_args.grid=2")
    )
    assert changed["wkd_l"]["weight"] == 30.0  # the short form ...
    assert changed["wkd_f"]["grid"] == 2  # ... and the init_args form
    assert changed["wkd_l"] | {"weight": 25.0} == base["wkd_l"]  # nothing else of the loss was reset
    assert changed["wkd_f"] | {"grid": 1} == base["wkd_f"]  # cost, τ, schedule kept; the other loss untouched


def test_a_layered_config_file_merges_into_one_loss(tmp_path):
    base = losses(printed(tmp_path, "-c", WKD_LF))
    override = tmp_path / "tau.yaml"
    override.write_text("model:\n  losses:\n    wkd_l:\n      init_args:\n        temperature: 2.0\n")
    short = tmp_path / "rho.yaml"  # the settings without `init_args:`, as on the command line
    short.write_text("model:\n  losses:\n    wkd_f:\n      mean_weight: 3.0\n")
    layered = losses(printed(tmp_path, "-c", WKD_LF, "-c", str(override), "-c", str(short)))
    assert list(layered) == ["wkd_l", "wkd_f"]  # the untouched loss is still there
    assert layered["wkd_l"] == base["wkd_l"] | {"temperature": 2.0}  # cost, γ, schedule as configured
    assert layered["wkd_f"] == base["wkd_f"] | {"mean_weight": 3.0}


def test_a_layer_adds_and_removes_losses_by_key(tmp_path):
    layer = tmp_path / "swap.yaml"
    layer.write_text(
        "model:\n  losses:\n    wkd_f: null\n    kd:\n      class_path: wkd_lightning.losses.KD\n"
        "      init_args:\n        temperature: 4.0\n"
    )
    config = printed(tmp_path, "-c", WKD_LF, "-c", str(layer), "--model.losses.wkd_l", "null")
    assert list(config["model"]["losses"]) == ["kd"]
    assert config["model"]["losses"]["kd"]["init_args"]["temperature"] == 4.0


def test_an_unkeyed_loss_option_is_refused_with_the_keyed_form(tmp_path):
    finished = run(["wkd", "fit", "-c", WKD_LF, "--model.losses.weight", "5", "--print_config"], tmp_path / "e.log")
    assert finished.returncode == 1
    assert "wkd: error: --model.losses.weight: losses are keyed, so name the loss: --model.losses.<key>.weight" in (
        finished.output
    )
    assert "Traceback" not in finished.output


def test_loss_schedules_follow_the_run_length_unless_pinned(tmp_path):
    def start_epochs(config: dict) -> dict:
        return {key: args["schedule"]["init_args"]["start_epoch"] for key, args in losses(config).items()}

    assert start_epochs(printed(tmp_path, "-c", WKD_LF)) == {"wkd_l": 9, "wkd_f": 9}  # 0.6 of 15 epochs
    longer = printed(tmp_path, "-c", WKD_LF, "--trainer.max_epochs", "30")
    assert start_epochs(longer) == {"wkd_l": 18, "wkd_f": 18}  # 0.6 of 30, as T_max follows: 30
    assert longer["model"]["lr_scheduler"]["init_args"]["T_max"] == 30
    pinned = printed(tmp_path, "-c", WKD_LF, "--trainer.max_epochs=30", "--model.losses.wkd_l.schedule.start_epoch=9")
    assert start_epochs(pinned) == {"wkd_l": 9, "wkd_f": 18}
    cifar = printed(tmp_path, "-c", CIFAR_WKD_LF)  # the release's epochs: E0 150 of 240, LR steps 150/180/210
    assert start_epochs(cifar) == {"wkd_l": 150, "wkd_f": 150}
    assert cifar["model"]["lr_scheduler"]["init_args"]["milestones"] == [150, 180, 210]


def test_a_batch_limit_of_1_in_a_config_file_means_one_batch_with_a_warning(tmp_path, fashion_dir):
    limits = tmp_path / "limits.yaml"
    limits.write_text("trainer:\n  limit_train_batches: 1\n")
    run_dir = tmp_path / "run"
    args = ["wkd", "fit", "-c", VANILLA, f"--data.data_dir={fashion_dir}", "--data.train_size=null",
            "--data.num_workers=0", "--data.batch_size=8", f"--trainer.default_root_dir={run_dir}",
            "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
            "-c", str(limits), *QUIET]  # fmt: skip
    finished = run_ok(args, tmp_path / "fit.log")
    assert f"trainer.limit_train_batches: 1 in {limits}: the CLI reads limits as floats" in finished.output
    assert torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 1  # the file's 1


def test_which_batch_limits_are_a_1(tmp_path):
    one, full = tmp_path / "one.yaml", tmp_path / "full.yaml"
    one.write_text("trainer:\n  limit_train_batches: 1\n  limit_val_batches: 2\n")
    full.write_text("trainer:\n  limit_train_batches: 1.0\n")
    assert one_batch_limits(["fit", "-c", str(one)]) == {
        "limit_train_batches": f"trainer.limit_train_batches: 1 in {one}"
    }
    assert one_batch_limits(["fit", "-c", str(one), f"--config={full}"]) == {}  # 1.0: all batches, the last layer
    assert one_batch_limits(["fit", "-c", str(one), "--trainer.limit_train_batches=0.5"]) == {}
    assert one_batch_limits(["fit", "--trainer.limit_val_batches", "1", "-c", str(one)]) == {
        "limit_train_batches": f"trainer.limit_train_batches: 1 in {one}"  # the file's 2 came after the typed 1
    }


def test_keyed_losses_in_python_and_in_layers():
    kd, wkd = KD(temperature=4.0), WKDLogit()
    plugins = loss_plugins({"kd_t4": kd, "wkd_l": wkd, "gone": None})
    assert [loss.name for loss in plugins] == ["kd_t4", "wkd_l"] and plugins[0] is kd  # logs train/loss/kd_t4/...
    assert [loss.name for loss in loss_plugins([KD(), WKDLogit()])] == ["kd", "wkd_l"]  # a list: the class names
    with pytest.raises(ValueError, match=r"loss key 'kd\.t4'"):
        loss_plugins({"kd.t4": KD()})
    with pytest.raises(ValueError, match="distinct names"):
        loss_plugins([KD(), KD()])
    listed = [{"class_path": "wkd_lightning.losses.WKDLogit"}, {"class_path": "KD"}]
    assert list(keyed_loss_configs(listed)) == ["wkd_l", "kd"]
    assert merged_losses({"kd": {"weight": 2}}, {"wkd_l": "W", "kd": "K"}) == {"wkd_l": "W", "kd": {"weight": 2}}
    assert list(merged_losses(listed, {"wkd_f": "F"})) == ["wkd_l", "kd"]  # a list replaces
    assert keyed_losses_argv(["--model.losses", "{kd: {weight: 2}}", "-c", "x"]) == [
        "--model.losses.kd", '{"weight": 2}', "-c", "x"
    ]  # fmt: skip


def test_a_resume_that_extends_the_run_keeps_the_recipe_of_a_fractional_schedule(tmp_path, fashion_dir):
    """E0 = 0.6 of the run is epoch 1 of 1 and epoch 2 of 3: the recipe keeps the fraction, so the extension is no
    change of recipe (as for the LR schedule)."""
    from wkd_lightning.models import mini_resnet14

    teacher = tmp_path / "teacher.pt"
    torch.save(mini_resnet14().state_dict(), teacher)
    run_dir = tmp_path / "run"
    args = ["wkd", "fit", "-c", str(ROOT / "configs/fashion_mnist/wkd_l.yaml"), f"--model.teacher_weights={teacher}",
            "--model.losses.wkd_l.cost=uniform", f"--data.data_dir={fashion_dir}", "--data.train_size=null",
            "--data.num_workers=0", "--data.batch_size=16", f"--trainer.default_root_dir={run_dir}",
            "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", *QUIET]  # fmt: skip
    run_ok([*args, "--trainer.max_epochs=1"], tmp_path / "fit.log")
    run_ok([*args, "--trainer.max_epochs=3", "--ckpt_path=last"], tmp_path / "resume.log")
    last = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    assert last["epoch"] == 2  # 3 epochs done
    assert last["wkd_recipe"]["losses"]["wkd_l"]["init_args"]["schedule"]["init_args"]["start_epoch"] == 0.6
