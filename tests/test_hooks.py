"""Feature hooks by dotted module path."""

import pytest
import torch
from torch import nn

from wkd_lightning.hooks import FeatureHooks
from wkd_lightning.models import mini_resnet8


def test_hooks_capture_the_outputs_of_the_named_modules():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Sequential(nn.Linear(3, 2), nn.Tanh()))
    x = torch.randn(5, 4)
    first = model[0](x)
    second = model[2][0](torch.relu(first))
    hooks = FeatureHooks(model, ["0", "2.0", "2.0"], owner="student")
    model(x)
    features = hooks.collect()
    assert list(features) == ["0", "2.0"]
    torch.testing.assert_close(features["0"], first)
    torch.testing.assert_close(features["2.0"], second)
    assert hooks.collect() == {}, "features are handed over once, not kept between steps"
    hooks.remove()
    model(x)
    assert hooks.collect() == {}


def test_hooks_on_a_resnet_stage_have_the_stage_shape():
    model = mini_resnet8()
    hooks = FeatureHooks(model, ["layer3", "layer2.0.conv1"])
    model(torch.randn(2, 1, 28, 28))
    features = hooks.collect()
    assert features["layer3"].shape == (2, 32, 7, 7)
    assert features["layer2.0.conv1"].shape == (2, 16, 14, 14)


def test_unknown_path_lists_available_modules():
    with pytest.raises(ValueError, match=r"teacher has no module at path 'layer4'\. Available module paths: conv1"):
        FeatureHooks(mini_resnet8(), ["layer4"], owner="teacher")


def test_no_paths_registers_no_hooks():
    model = mini_resnet8()
    FeatureHooks(model, [])
    assert not any(m._forward_hooks for m in model.modules())
