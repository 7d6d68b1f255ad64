"""The plug-in contract: plug-ins return raw terms; ``plugin_terms`` alone applies ``w = weight · c(e)``."""

from __future__ import annotations

import pytest
import torch

from wkd_lightning.losses import DKD, KD, FitNet, WKDFeature, WKDLogit
from wkd_lightning.losses.base import DistillationContext, DistillationLoss, plugin_terms
from wkd_lightning.losses.schedule import CosineDecay


class Fixed(DistillationLoss):
    """A plug-in returning fixed raw terms, one of them outside its weight."""

    name = "fixed"
    unweighted_terms = ("own",)

    def forward(self, ctx: DistillationContext) -> dict[str, torch.Tensor]:
        return {"main": torch.tensor(3.0), "own": torch.tensor(5.0)}


def _ctx(epoch: int = 1, max_epochs: int = 1) -> DistillationContext:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(4, 2, 4, 4, generator=g)
    teacher = torch.randn(4, 3, 2, 2, generator=g)
    return DistillationContext(
        student_logits=torch.randn(4, 5, generator=g),
        teacher_logits=torch.randn(4, 5, generator=g),
        target=torch.tensor([0, 1, 2, 3]),
        student_features={"s": student},
        teacher_features={"t": teacher},
        epoch=epoch,
        max_epochs=max_epochs,
    )


def test_plugin_terms_weights_every_term_but_the_unweighted_ones():
    loss = Fixed(weight=2.0, schedule=CosineDecay())
    ctx = _ctx(epoch=2, max_epochs=3)  # c(2) = ½(1 + cos(2π/3)) = ¼
    terms = plugin_terms([loss], ctx)
    assert terms.weights == {"fixed": 2.0 * CosineDecay()(2, 3)} and terms.weights["fixed"] == pytest.approx(0.5)
    assert terms.raw == {"fixed/main": torch.tensor(3.0), "fixed/own": torch.tensor(5.0)}
    assert torch.equal(terms.weighted["fixed/main"], terms.weights["fixed"] * torch.tensor(3.0))
    assert torch.equal(terms.weighted["fixed/own"], torch.tensor(5.0))


PLUGINS = {
    "KD": lambda weight: KD(weight=weight),
    "DKD": lambda weight: DKD(weight=weight),
    "WKDLogit": lambda weight: WKDLogit(weight=weight),
    "WKDFeature": lambda weight: WKDFeature("s", "t", weight=weight),
    "FitNet": lambda weight: FitNet("s", "t", weight=weight),
}


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_plugins_return_their_terms_before_the_weight(name):
    """A plug-in's forward does not read its weight: weights 1 and 7 give the same raw terms, and the weighted ones
    are ``w = 7 · c(e)`` times the raw ones exactly where the plug-in does not exempt the term."""
    ctx = _ctx()
    results = []
    for weight in (1.0, 7.0):
        torch.manual_seed(0)  # the same projectors for both weights
        loss = PLUGINS[name](weight)
        loss.build({"s": ctx.student_features["s"][:1]}, {"t": ctx.teacher_features["t"][:1]})
        results.append((loss, loss(ctx), plugin_terms([loss], ctx)))
    (loss, raw_1, _), (_, raw_7, terms_7) = results
    assert raw_1.keys() == raw_7.keys() and all(torch.equal(raw_1[k], raw_7[k]) for k in raw_1)
    weight = terms_7.weights[loss.name]
    assert weight == 7.0 * loss.schedule(ctx.epoch, ctx.max_epochs)
    for key, value in raw_7.items():
        expected = value if key in loss.unweighted_terms else weight * value
        assert torch.equal(terms_7.weighted[f"{loss.name}/{key}"], expected), key
