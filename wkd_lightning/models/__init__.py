"""Model zoo: registered architectures by name.

* :mod:`~wkd_lightning.models.small`: small ResNets for 28×28 grey images (Fashion-MNIST).
* :mod:`~wkd_lightning.models.cifar`: the CIFAR-100 architectures of the CRD/RepDistiller lineage, state-dict
  compatible with the released ``cifar_teachers.tar`` checkpoints.
* :mod:`~wkd_lightning.models.imagenet`: torchvision ResNets, a MobileNetV1, and ViT-B/16 / Swin-T teachers.

Each factory is registered under its own name with its input size, its feature stages (dotted path → channels) and
its last stage; see :func:`model_info`.
"""

from wkd_lightning.models.cifar import (
    VGG,
    CifarBottleneckResNet,
    CifarResNet,
    CifarResNetV2,
    MobileNetV2,
    MobileNetV2Cifar,
    ResNet18,
    ResNet50,
    ShuffleNetV1,
    ShuffleNetV2,
    ShuffleV1,
    ShuffleV2,
    WideResNet,
    resnet8,
    resnet8x4,
    resnet14,
    resnet20,
    resnet32,
    resnet32x4,
    resnet44,
    resnet56,
    resnet110,
    vgg8,
    vgg11,
    vgg13,
    vgg16,
    vgg19,
    wrn_16_1,
    wrn_16_2,
    wrn_40_1,
    wrn_40_2,
)
from wkd_lightning.models.imagenet import MobileNetV1, mobilenet_v1, resnet18, resnet34, resnet50, swin_t, vit_b_16
from wkd_lightning.models.registry import ModelInfo, create_model, list_models, model_info, register_model
from wkd_lightning.models.small import SmallResNet, mini_resnet8, mini_resnet14

__all__ = [
    "VGG",
    "CifarBottleneckResNet",
    "CifarResNet",
    "CifarResNetV2",
    "MobileNetV1",
    "MobileNetV2",
    "MobileNetV2Cifar",
    "ModelInfo",
    "ResNet18",
    "ResNet50",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "ShuffleV1",
    "ShuffleV2",
    "SmallResNet",
    "WideResNet",
    "create_model",
    "list_models",
    "mini_resnet8",
    "mini_resnet14",
    "mobilenet_v1",
    "model_info",
    "register_model",
    "resnet8",
    "resnet8x4",
    "resnet14",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet32x4",
    "resnet34",
    "resnet44",
    "resnet50",
    "resnet56",
    "resnet110",
    "swin_t",
    "vgg8",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "vit_b_16",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
]
