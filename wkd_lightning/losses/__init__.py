"""Distillation losses: pure tensor functions and the plug-ins that wrap them for :class:`DistillationModule`."""

from wkd_lightning.losses.base import DistillationContext, DistillationLoss
from wkd_lightning.losses.dkd import DKD, dkd_loss
from wkd_lightning.losses.fitnet import FitNet, fitnet_loss
from wkd_lightning.losses.kd import KD, kd_loss
from wkd_lightning.losses.projectors import PROJECTOR_KINDS, ProjectedFeatureLoss, make_projector
from wkd_lightning.losses.schedule import Constant, CosineDecay, LinearWarmup, WeightSchedule
from wkd_lightning.losses.wkd_feature import WKDFeature, gaussian_wd_full_cov, gaussian_wd_loss
from wkd_lightning.losses.wkd_logit import WKDLogit, load_cost, sharpen_cost, uniform_cost, wkd_logit_loss

__all__ = [
    "DKD",
    "KD",
    "PROJECTOR_KINDS",
    "Constant",
    "CosineDecay",
    "DistillationContext",
    "DistillationLoss",
    "FitNet",
    "LinearWarmup",
    "ProjectedFeatureLoss",
    "WKDFeature",
    "WKDLogit",
    "WeightSchedule",
    "dkd_loss",
    "fitnet_loss",
    "gaussian_wd_full_cov",
    "gaussian_wd_loss",
    "kd_loss",
    "load_cost",
    "make_projector",
    "sharpen_cost",
    "uniform_cost",
    "wkd_logit_loss",
]
