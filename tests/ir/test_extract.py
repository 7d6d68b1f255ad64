"""Per-class feature extraction: row layout of feature maps, logits, caps, eval mode, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from wkd_lightning.ir import extract_class_features, feature_rows
from wkd_lightning.teacher import FrozenTeacher


class Probe(nn.Module):
    """Identity 'feature map' (B×2×2×3 from the input), a BatchNorm that reveals train mode, and 3 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.stage = nn.Identity()
        self.bn = nn.BatchNorm1d(12)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        x = self.stage(x)
        return self.fc(self.bn(x.flatten(1)))


def _loader(labels, batch_size=4):
    x = torch.arange(len(labels) * 12, dtype=torch.float32).reshape(len(labels), 2, 2, 3)
    return x, DataLoader(TensorDataset(x, torch.tensor(labels)), batch_size=batch_size, shuffle=False)


def test_feature_map_rows_are_image_major_positions():
    x = torch.arange(2 * 3 * 2 * 2.0).reshape(2, 3, 2, 2)
    rows, positions = feature_rows(x)
    assert positions == 4 and rows.shape == (8, 3)
    assert torch.equal(rows[5], x[1, :, 0, 1])  # image 1, position (0, 1)
    assert feature_rows(torch.ones(4, 7))[0].shape == (4, 7)


def test_extracts_hooked_maps_per_class_in_data_order():
    labels = [0, 1, 2, 0, 0, 1, 2, 2, 1]
    x, loader = _loader(labels)
    model = Probe()
    model.train()
    features = extract_class_features(model, loader, "stage", num_classes=3, progress=False)
    assert [f.shape for f in features] == [(18, 2)] * 3  # 3 images × 6 positions (2×3), 2 channels
    first_of_class_1 = x[1].flatten(1).T  # positions × channels
    assert torch.equal(features[1][:6], first_of_class_1)
    assert model.training  # mode restored
    assert model.bn.num_batches_tracked.item() == 0  # ran in eval mode: no BatchNorm update


def test_logits_and_cap_and_frozen_teacher():
    labels = [0, 1, 2] * 5
    _, loader = _loader(labels, batch_size=2)
    teacher = FrozenTeacher(Probe())
    features = extract_class_features(teacher, loader, "logits", num_classes=3, max_per_class=2, progress=False)
    assert [f.shape for f in features] == [(2, 3)] * 3
    expected = teacher(torch.arange(12.0).reshape(1, 2, 2, 3))
    torch.testing.assert_close(features[0][:1], expected)


def test_extraction_errors():
    _, loader = _loader([0, 1, 0, 1])
    with pytest.raises(ValueError, match="no samples of classes \\[2\\]"):
        extract_class_features(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), loader, num_classes=3, progress=False)
    with pytest.raises(ValueError, match="outputs 3 logits but the data has 5 classes"):
        extract_class_features(Probe(), loader, num_classes=5, progress=False)
    with pytest.raises(ValueError, match="no module at path 'layer9'"):
        extract_class_features(Probe(), loader, "layer9", progress=False)
    soft = DataLoader(TensorDataset(torch.ones(2, 2, 2, 3), torch.ones(2, 3)), batch_size=2)
    with pytest.raises(ValueError, match="integer class labels"):
        extract_class_features(Probe(), soft, progress=False)
    with pytest.raises(ValueError, match="max_per_class"):
        extract_class_features(Probe(), loader, max_per_class=0, progress=False)
