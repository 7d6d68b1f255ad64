"""Registry-parametrised checks of every architecture in the zoo (timm style).

For each registered model: logits of the right shape and finite on its input size, a gradient for every trainable
parameter, and the advertised feature paths exist with the advertised channels (captured with :class:`FeatureHooks`,
as the training module does). CIFAR-family models are also run on grey 1×28×28 input. Small class counts keep the
heads cheap; the two transformer teachers run at batch 1, and the big 224×224 models are marked ``slow`` (still in
the default run; ``-m "not slow"`` leaves them out).
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torchvision

from wkd_lightning import DistillationModule
from wkd_lightning.hooks import FeatureHooks
from wkd_lightning.losses import WKDFeature
from wkd_lightning.models import create_model, list_models, model_info, register_model
from wkd_lightning.teacher import FrozenTeacher

NUM_CLASSES = 7
HEAVY = {"vit_b_16", "swin_t"}  # run at batch 1: ~2-4 s each for forward + backward on one CPU thread
SLOW = HEAVY | {"resnet34", "resnet50"}  # 224×224 forward + backward of the big ImageNet models

CIFAR = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4", "resnet32x4",
    "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19",
    "MobileNetV2", "ShuffleV1", "ShuffleV2", "ResNet50", "ResNet18",
]  # fmt: skip
IMAGENET = ["resnet18", "resnet34", "resnet50", "mobilenet_v1", "vit_b_16", "swin_t"]
SMALL_GREY = ["mini_resnet8", "mini_resnet14"]


def _param(name: str):
    return pytest.param(name, marks=[pytest.mark.slow] if name in SLOW else [], id=name)


def test_required_architectures_are_registered():
    assert set(CIFAR + IMAGENET + SMALL_GREY) <= set(list_models())


def test_registry_metadata_is_consistent():
    for name in list_models():
        info = model_info(name)
        assert len(info.input_size) == 3
        if name == "vit_b_16":  # token sequences, no feature map to advertise
            assert info.feature_channels == {} and info.last_stage is None
            continue
        assert info.last_stage in info.feature_channels, name
        assert all(isinstance(c, int) and c > 0 for c in info.feature_channels.values()), name
    for name in CIFAR:
        assert model_info(name).input_size == (3, 32, 32)
        defaults = {k: p.default for k, p in inspect.signature(model_info(name).factory).parameters.items()}
        assert defaults == {"num_classes": 100, "in_channels": 3}, name
    for name in IMAGENET:
        assert model_info(name).input_size == (3, 224, 224)
    assert model_info("mini_resnet8").last_stage == model_info("mini_resnet14").last_stage == "layer3"


def test_last_stage_must_be_an_advertised_path():
    with pytest.raises(ValueError, match="last_stage"):
        register_model((3, 32, 32), {"layer1": 8}, last_stage="layer9")


@pytest.mark.parametrize("name", [_param(n) for n in list_models()])
def test_forward_backward_and_feature_channels(name):
    info = model_info(name)
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES)
    # BN models run in train mode (batch statistics); the transformers in eval mode, where stochastic depth is off
    # (Swin-T's drops whole residual branches at random, which would leave their gradients zero at batch 1).
    model.train(any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()))
    with torch.no_grad():  # zero-initialised weights (torchvision's ViT head) would block every upstream gradient
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.02)
    batch = 1 if name in HEAVY else 2
    hooks = FeatureHooks(model, info.feature_channels, owner=name)
    logits = model(torch.randn(batch, *info.input_size))
    features = hooks.collect()
    hooks.remove()

    assert logits.shape == (batch, NUM_CLASSES)
    assert torch.isfinite(logits).all()
    assert {path: f.shape[1] for path, f in features.items()} == info.feature_channels
    assert all(f.ndim == 4 and f.shape[0] == batch for f in features.values())
    if info.last_stage is not None:  # the last stage is (one of) the coarsest maps, right before global pooling
        last = features[info.last_stage].shape[-1]
        assert last == min(f.shape[-1] for f in features.values())
        if info.input_size[1] == 224:
            assert last == 7

    logits.sum().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, f"{name}: no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)
    zero = [n for n, p in trainable if not p.grad.any()]
    assert not zero, f"{name}: all-zero gradient for {zero[:5]}"


@pytest.mark.parametrize("name", CIFAR + SMALL_GREY)
def test_grey_28x28_input(name):
    info = model_info(name)
    model = create_model(name, num_classes=10, in_channels=1).eval()
    hooks = FeatureHooks(model, info.feature_channels, owner=name)
    with torch.no_grad():
        logits = model(torch.randn(2, 1, 28, 28))
    features = hooks.collect()
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert {path: f.shape[1] for path, f in features.items()} == info.feature_channels


def test_torchvision_resnet_is_returned_unwrapped_and_loads_released_state_dicts(tmp_path):
    model = create_model("resnet18")
    assert type(model) is torchvision.models.ResNet
    released = torchvision.models.resnet18(weights=None)  # what torchvision's weight files hold: a plain state dict
    with torch.no_grad():
        for module in released.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
    path = tmp_path / "resnet18-v1.pth"
    torch.save(released.state_dict(), path)
    teacher = FrozenTeacher(create_model("resnet18"), weights=path)
    x = torch.randn(1, 3, 64, 64)  # fully convolutional: a small input keeps the check cheap
    with torch.no_grad():
        assert torch.equal(teacher(x), released.eval()(x))


def test_in_channels_replaces_only_the_stem_of_imagenet_models():
    for name, stem in (("resnet18", "conv1"), ("mobilenet_v1", "features.stem.0")):
        grey = dict(create_model(name, num_classes=5, in_channels=1).named_modules())[stem]
        assert grey.in_channels == 1
    model = create_model("mobilenet_v1", num_classes=5, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 224, 224)).shape == (1, 5)


@pytest.mark.parametrize(("teacher", "student", "grid"), [("resnet32x4", "resnet8x4", 1), ("wrn_40_2", "ShuffleV1", 4)])
def test_paper_pairs_plug_into_wkd_f_through_their_last_stages(teacher, student, grid):
    """The CIFAR pairs of the WKD paper, wired only from registry metadata (as configs do)."""
    torch.manual_seed(0)
    loss = WKDFeature(
        student_path=model_info(student).last_stage, teacher_path=model_info(teacher).last_stage, grid=grid
    )
    module = DistillationModule(
        student=create_model(student, num_classes=10),
        teacher=create_model(teacher, num_classes=10),
        losses=[loss],
        num_classes=10,
        input_size=model_info(student).input_size,
    )
    module._probe()  # builds the projector from one example (setup() does this under a trainer)
    module.log = module.log_dict = lambda *args, **kwargs: None
    module._make_metrics(10)
    total = module.training_step((torch.randn(2, 3, 32, 32), torch.tensor([1, 2])), 0)
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for p in module.student.parameters())
