"""CIFAR-100 architectures of the CRD/RepDistiller lineage, state-dict compatible with ``cifar_teachers.tar``.

Every family was written from the architecture description of RepDistiller's ``models/`` (module names, layer order
and parameter shapes), not copied, so the released teacher checkpoints (``{"model": state_dict}``) load with strict
key and shape checking through :func:`wkd_lightning.teacher.load_weights`. All factories take ``num_classes`` (100)
and ``in_channels`` (3; 1 for grey 28×28 images, which every family here accepts) and return logits only; features
are read by forward hooks on the dotted paths advertised in the registry (:func:`~wkd_lightning.models.model_info`).
"""

from wkd_lightning.models.cifar.mobilenetv2 import MobileNetV2, MobileNetV2Cifar
from wkd_lightning.models.cifar.resnet import (
    CifarResNet,
    resnet8,
    resnet8x4,
    resnet14,
    resnet20,
    resnet32,
    resnet32x4,
    resnet44,
    resnet56,
    resnet110,
)
from wkd_lightning.models.cifar.resnetv2 import CifarBottleneckResNet, CifarResNetV2, ResNet18, ResNet50
from wkd_lightning.models.cifar.shufflenetv1 import ShuffleNetV1, ShuffleV1
from wkd_lightning.models.cifar.shufflenetv2 import ShuffleNetV2, ShuffleV2
from wkd_lightning.models.cifar.vgg import VGG, vgg8, vgg11, vgg13, vgg16, vgg19
from wkd_lightning.models.cifar.wrn import WideResNet, wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2

__all__ = [
    "VGG",
    "CifarBottleneckResNet",
    "CifarResNet",
    "CifarResNetV2",
    "MobileNetV2",
    "MobileNetV2Cifar",
    "ResNet18",
    "ResNet50",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "ShuffleV1",
    "ShuffleV2",
    "WideResNet",
    "resnet8",
    "resnet8x4",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet32x4",
    "resnet44",
    "resnet56",
    "resnet110",
    "vgg8",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
]
