"""LR schedules that follow the run length (wkd_lightning.schedules); the CLI side is in tests/test_cli_runs.py."""

from __future__ import annotations

import pytest
import torch

from wkd_lightning.schedules import CosineAnnealingLR, MultiStepLR, milestone_epochs, resolve_lr_scheduler


def test_fractions_become_the_release_epochs_at_the_default_run_length():
    assert milestone_epochs([0.625, 0.75, 0.875], 240) == [150, 180, 210]
    assert milestone_epochs([0.3, 0.6, 0.9], 100) == [30, 60, 90]
    assert milestone_epochs([8, 11], 24) == [8, 11]  # integers are pinned


def test_resolved_config_builds_torch_schedules_with_those_epochs():
    cosine = {"class_path": "wkd_lightning.schedules.CosineAnnealingLR", "init_args": {"T_max": "max_epochs"}}
    steps = {"class_path": "wkd_lightning.schedules.MultiStepLR", "init_args": {"milestones": [0.5, 0.75]}}
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
