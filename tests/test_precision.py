"""``bf16-mixed`` end to end on the CPU: the networks run in bfloat16, every distillation term is computed in fp32."""

from __future__ import annotations

import lightning as L
import torch

from tests.commands.test_cli import QUIET, ROOT, localised_config
from wkd_lightning.commands.wkd import make_cli


class RecordLossDtypes(L.Callback):
    """Record the dtype of the student's logits and of every loss plug-in's output during training."""

    def __init__(self) -> None:
        self.logit_dtypes: set[torch.dtype] = set()
        self.term_dtypes: dict[str, torch.dtype] = {}
        self.finite = True

    def on_train_start(self, trainer, pl_module) -> None:
        pl_module.student.register_forward_hook(lambda m, i, out: self.logit_dtypes.add(out.dtype))
        for loss in pl_module.losses:
            loss.register_forward_hook(self._record(loss.name))

    def _record(self, name: str):
        def hook(module, inputs, terms) -> None:
            for key, value in terms.items():
                self.term_dtypes[f"{name}/{key}"] = value.dtype
                self.finite &= bool(torch.isfinite(value))

        return hook


def test_bf16_mixed_wkd_lf_computes_losses_in_fp32(tmp_path, fashion_dir):
    path = localised_config(ROOT / "configs/fashion_mnist/wkd_lf.yaml", tmp_path, fashion_dir)
    cli = make_cli(["-c", str(path), "--trainer.precision=bf16-mixed", "--trainer.max_epochs=1",
                    "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1", *QUIET], run=False)  # fmt: skip
    record = RecordLossDtypes()
    cli.trainer.callbacks.append(record)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)

    assert torch.bfloat16 in record.logit_dtypes  # the networks really ran in bf16
    assert set(record.term_dtypes) >= {"wkd_l/target", "wkd_l/wd", "wkd_f/feat"}, record.term_dtypes
    assert set(record.term_dtypes.values()) == {torch.float32}, record.term_dtypes
    assert record.finite
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
