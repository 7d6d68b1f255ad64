"""``trainer.test`` and ``trainer.predict`` (``wkd test`` / ``wkd predict``) run on every classification data module,
each set up for that stage alone, on the tiny on-disk fixtures of ``tests/conftest.py``."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from wkd_lightning import DistillationModule
from wkd_lightning.data import CIFAR100DataModule, FashionMNISTDataModule, ImageNetDataModule
from wkd_lightning.models import mini_resnet8, resnet8, resnet18

#: data module, its fixture, the student, the number of evaluation images the fixture holds (its test / val split).
CASES = {
    "fashion_mnist": (FashionMNISTDataModule, "fashion_dir", lambda: mini_resnet8(), 40, {}),
    "cifar100": (CIFAR100DataModule, "cifar100_dir", lambda: resnet8(num_classes=100), 20, {}),
    "imagenet": (ImageNetDataModule, "imagenet_dir", lambda: resnet18(num_classes=3), 6, {"num_classes": 3}),
}


def _trainer(tmp_path) -> L.Trainer:
    return L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)


@pytest.mark.parametrize("name", sorted(CASES))
def test_test_and_predict_run_on_every_classification_data_module(name, tmp_path, request):
    data_class, fixture, student, size, options = CASES[name]
    data_dir = request.getfixturevalue(fixture)

    def data():  # a fresh data module per loop: each is set up for its own stage only
        return data_class(data_dir=str(data_dir), batch_size=4, num_workers=0, **options)

    torch.manual_seed(0)
    module = DistillationModule(student=student())
    (metrics,) = _trainer(tmp_path).test(module, datamodule=data())
    assert 0.0 <= metrics["test/top1"] <= 1.0 and "test/loss" in metrics
    batches = _trainer(tmp_path).predict(module, datamodule=data())
    probabilities = torch.cat(batches)
    assert probabilities.shape == (size, module.num_classes)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(size))
