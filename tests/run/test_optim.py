"""Schedules that follow the run length (wkd_lightning.run.optim, CosineDecay); the CLI side is in
tests/commands/test_cli_runs.py and tests/commands/test_cli_overrides.py."""

from __future__ import annotations

import pytest
import torch

from wkd_lightning.losses import CosineDecay
from wkd_lightning.losses.schedule import epoch_of
from wkd_lightning.run.optim import (
    CosineAnnealingLR,
    MultiStepLR,
    milestone_epochs,
    resolve_loss_schedules,
    resolve_lr_scheduler,
)


def test_fractions_become_the_release_epochs_at_the_default_run_length():
    assert milestone_epochs([0.625, 0.75, 0.875], 240) == [150, 180, 210]
    assert milestone_epochs([0.3, 0.6, 0.9], 100) == [30, 60, 90]
    assert milestone_epochs([8, 11], 24) == [8, 11]  # integers are pinned


def test_resolved_config_builds_torch_schedules_with_those_epochs():
    cosine = {"class_path": "wkd_lightning.run.optim.CosineAnnealingLR", "init_args": {"T_max": "max_epochs"}}
    steps = {"class_path": "wkd_lightning.run.optim.MultiStepLR", "init_args": {"milestones": [0.5, 0.75]}}
    resolve_lr_scheduler(cosine, 30)
    resolve_lr_scheduler(steps, 8)
    assert cosine["init_args"]["T_max"] == 30 and steps["init_args"]["milestones"] == [4, 6]
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    assert CosineAnnealingLR(optimizer, **cosine["init_args"]).T_max == 30
    assert sorted(MultiStepLR(optimizer, **steps["init_args"]).milestones) == [4, 6]


def test_unresolved_values_are_errors_that_say_so():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match=r"MultiStepLR: milestone 0\.625 is a fraction of the run, but the run length"):
        MultiStepLR(optimizer, milestones=[0.625])
    with pytest.raises(ValueError, match="T_max 'max_epochs' follows the run length, but it is unknown"):
        CosineAnnealingLR(optimizer)
    with pytest.raises(ValueError, match="neither a fraction of the run"):
        milestone_epochs([1.5], 10)


def test_loss_weight_decay_start_is_a_fraction_of_the_run_or_pinned():
    """CosineDecay's E0 follows the run length by epoch_of's rule: a fraction in (0, 1) of the run, else an epoch."""
    assert [epoch_of(v, 240, "E0") for v in (0.625, 150, 150.0, 0, 0.0)] == [150, 150, 150, 0, 0]
    assert epoch_of(0.6, 15, "E0") == 9 and epoch_of(0.6, 30, "E0") == 18
    follows, pinned = CosineDecay(start_epoch=0.6), CosineDecay(start_epoch=9)
    assert follows(9, 15) == pinned(9, 15) == 1.0 and follows(10, 15) == pinned(10, 15) < 1.0
    assert follows(18, 30) == 1.0 and follows(19, 30) < 1.0 and pinned(10, 30) < 1.0  # in Python: per call
    for bad, message in ((-1, "is negative"), (1.5, "is neither a fraction"), ("9", "is neither a fraction")):
        with pytest.raises(ValueError, match=f"CosineDecay: start_epoch -?'?[0-9.]+'? {message}"):
            CosineDecay(start_epoch=bad)


def test_loss_schedules_of_a_config_resolve_against_the_run_length():
    def loss(start):
        schedule = {"class_path": "wkd_lightning.losses.CosineDecay", "init_args": {"start_epoch": start}}
        return {"class_path": "wkd_lightning.losses.WKDLogit", "init_args": {"schedule": schedule}}

    warmup = {"class_path": "wkd_lightning.losses.LinearWarmup", "init_args": {"warmup_epochs": 5}}
    losses = {"wkd_l": loss(0.625), "wkd_f": loss(30), "kd": {"class_path": "KD", "init_args": {"schedule": warmup}}}
    resolve_loss_schedules(losses, 240)
    starts = [losses[k]["init_args"]["schedule"]["init_args"]["start_epoch"] for k in ("wkd_l", "wkd_f")]
    assert starts == [150, 30] and warmup["init_args"] == {"warmup_epochs": 5}  # other schedules left alone
    listed = [loss(0.5)]
    resolve_loss_schedules(listed, 12)  # a list (wkd-det's form) too
    assert listed[0]["init_args"]["schedule"]["init_args"]["start_epoch"] == 6
