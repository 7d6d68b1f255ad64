"""Every public loss function and every loss plug-in compiles to ONE graph, forward and backward, and equals eager.

``torch.compile(fullgraph=True)`` raises on any graph break, and a ``.item()``/``bool(tensor)``/``int(tensor)`` on
the way (a host synchronisation on a GPU) is one: so these tests fail if a value check or a data-dependent branch is
left on the loss's path. The default tests use the ``aot_eager`` backend: Dynamo captures the whole forward graph and
AOTAutograd traces its backward, like the real compiler, but the graphs run with the eager kernels, so the results
are compared with eager tightly and the tests take seconds (``inductor`` codegen takes tens of seconds per graph on
two CPU cores; the ``slow`` test at the end runs it for WKD-L). Eager calls keep their clear errors; under
compilation the value checks are skipped (:mod:`wkd_lightning.losses.checks`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from wkd_lightning.losses import (
    DKD,
    KD,
    FitNet,
    WKDFeature,
    WKDLogit,
    dkd_loss,
    gaussian_wd_loss,
    kd_loss,
    sharpen_cost,
    wkd_logit_loss,
)
from wkd_lightning.losses.base import DistillationContext

B, C = 6, 10
FEATURES = (B, 4, 5, 5)


def _cost() -> Tensor:
    g = torch.Generator().manual_seed(3)
    d = torch.rand(C, C, generator=g)
    return sharpen_cost((d + d.t()).fill_diagonal_(0.0), 1.0)


def _inputs(seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "z_s": (torch.randn(B, C, generator=g) * 3).requires_grad_(),
        "z_t": torch.randn(B, C, generator=g) * 3,
        "y": torch.randint(0, C, (B,), generator=g),
        "f_s": torch.randn(FEATURES, generator=g).requires_grad_(),
        "f_t": torch.randn(FEATURES, generator=g),
        "cost": _cost(),
    }


def _ctx(x: dict[str, Tensor]) -> DistillationContext:
    return DistillationContext(
        student_logits=x["z_s"],
        teacher_logits=x["z_t"],
        target=x["y"],
        student_features={"s": x["f_s"]},
        teacher_features={"t": x["f_t"]},
        epoch=3,
        max_epochs=10,
    )


def _sum(out: Tensor | tuple[Tensor, ...] | dict[str, Tensor]) -> Tensor:
    values = out.values() if isinstance(out, dict) else (out,) if isinstance(out, Tensor) else out
    return sum(v * (i + 1) for i, v in enumerate(values))  # weight the terms so that each one is compared


FUNCTIONS: dict[str, Callable[[dict[str, Tensor]], Tensor]] = {
    "wkd_logit_loss": lambda x: _sum(wkd_logit_loss(x["z_s"], x["z_t"], x["y"], x["cost"], 2.0)),
    "gaussian_wd_loss": lambda x: _sum(gaussian_wd_loss(x["f_s"], x["f_t"])),
    "gaussian_wd_loss-grid2": lambda x: _sum(gaussian_wd_loss(x["f_s"], x["f_t"], grid=2)),
    "kd_loss": lambda x: _sum(kd_loss(x["z_s"], x["z_t"], 4.0)),
    "dkd_loss": lambda x: _sum(dkd_loss(x["z_s"], x["z_t"], x["y"])),
}


def _plugin(name: str) -> nn.Module:
    plugin = {
        "KD": lambda: KD(temperature=4.0, weight=0.9),
        "DKD": lambda: DKD(warmup_epochs=5),
        "WKDLogit": lambda: WKDLogit(cost=_cost(), weight=50.0, temperature=4.0),
        "WKDFeature": lambda: WKDFeature("s", "t", grid=2, mean_weight=4.0, weight=0.5),
        "FitNet": lambda: FitNet("s", "t"),
    }[name]()
    features = _inputs()
    plugin.build({"s": features["f_s"].detach()}, {"t": features["f_t"]})
    return plugin.train()


PLUGINS = ["KD", "DKD", "WKDLogit", "WKDFeature", "FitNet"]


def _grads(loss: Tensor, x: dict[str, Tensor], params: list[Tensor]) -> list[Tensor]:
    return list(torch.autograd.grad(loss, [x["z_s"], x["f_s"], *params], allow_unused=True, materialize_grads=True))


def _compare(eager: Callable[[], tuple[Tensor, list[Tensor]]], compiled: Callable[[], tuple[Tensor, list[Tensor]]]):
    value, grads = eager()
    value_c, grads_c = compiled()
    torch.testing.assert_close(value_c, value, rtol=1e-6, atol=1e-7)
    assert any(bool(g.abs().sum() > 0) for g in grads), "the test must see a gradient"
    for g_c, g in zip(grads_c, grads):
        torch.testing.assert_close(g_c, g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_loss_function_compiles_to_one_graph_equal_to_eager(name: str) -> None:
    fn = FUNCTIONS[name]
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")

    def run(f: Callable) -> tuple[Tensor, list[Tensor]]:
        x = _inputs()
        loss = f(x)
        return loss.detach(), _grads(loss, x, [])

    _compare(lambda: run(fn), lambda: run(compiled))


@pytest.mark.parametrize("name", PLUGINS)
def test_loss_plugin_compiles_to_one_graph_equal_to_eager(name: str) -> None:
    eager_plugin = _plugin(name)
    compiled_plugin = copy.deepcopy(eager_plugin)
    compiled_call = torch.compile(lambda ctx: _sum(compiled_plugin(ctx)), fullgraph=True, backend="aot_eager")

    def run(plugin: nn.Module, call: Callable) -> tuple[Tensor, list[Tensor]]:
        x = _inputs()
        loss = call(_ctx(x))
        return loss.detach(), _grads(loss, x, list(plugin.parameters()))

    _compare(
        lambda: run(eager_plugin, lambda ctx: _sum(eager_plugin(ctx))), lambda: run(compiled_plugin, compiled_call)
    )


def test_a_host_read_on_the_path_fails_the_harness() -> None:
    """The harness can fail: a loss that reads a value (as the old checks did) is refused by fullgraph."""

    def with_check(x: dict[str, Tensor]) -> Tensor:
        loss = kd_loss(x["z_s"], x["z_t"])
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError
        return loss

    with pytest.raises(Exception, match=r"(?i)data-dependent|graph break|Tensor.item|bool"):
        torch.compile(with_check, fullgraph=True, backend="aot_eager")(_inputs())


def test_eager_calls_raise_their_errors_compiled_calls_skip_the_value_checks() -> None:
    x = _inputs()
    x["z_s"] = x["z_s"].detach().clone()
    x["z_s"][1, 2] = math.nan
    with pytest.raises(ValueError, match=r"^kd_loss: the student logits contain 1 NaN and 0 inf values"):
        kd_loss(x["z_s"], x["z_t"])
    assert torch.isnan(torch.compile(kd_loss, fullgraph=True, backend="aot_eager")(x["z_s"], x["z_t"]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        dkd_loss(x["z_t"], x["z_t"], torch.full((B,), 10))
    # Shape checks are metadata: they still raise while compiling.
    with pytest.raises(Exception, match="teacher and student must predict the same classes"):
        torch.compile(kd_loss, fullgraph=True, backend="aot_eager")(x["z_t"], torch.zeros(B, C + 1))


def test_wkd_logit_loss_compiles_on_a_cost_whose_kernel_underflows() -> None:
    x = _inputs()
    big = torch.full((C, C), 30.0).fill_diagonal_(0.0)  # max M/ε = 600: exp underflows in fp32, one path all the same
    eager = wkd_logit_loss(x["z_s"], x["z_t"], x["y"], big, 2.0)
    compiled = torch.compile(wkd_logit_loss, fullgraph=True, backend="aot_eager")(x["z_s"], x["z_t"], x["y"], big, 2.0)
    assert all(torch.isfinite(v) for v in eager)
    torch.testing.assert_close(torch.stack(compiled), torch.stack(eager), rtol=0, atol=0)


@pytest.mark.slow
def test_wkd_logit_with_the_inductor_backend() -> None:
    """The real compiler (generated C++ kernels) on WKD-L, whose unrolled Sinkhorn iterations it fuses: the same values
    and gradients (WKD-F and KD run under inductor in ``tests/test_gpu_ready.py``)."""
    eager_plugin = _plugin("WKDLogit")
    compiled_plugin = copy.deepcopy(eager_plugin)
    compiled_call = torch.compile(lambda ctx: _sum(compiled_plugin(ctx)), fullgraph=True)

    def run(plugin: nn.Module, call: Callable) -> tuple[Tensor, list[Tensor]]:
        x = _inputs()
        loss = call(_ctx(x))
        return loss.detach(), _grads(loss, x, list(plugin.parameters()))

    value, grads = run(eager_plugin, lambda ctx: _sum(eager_plugin(ctx)))
    value_c, grads_c = run(compiled_plugin, compiled_call)
    torch.testing.assert_close(value_c, value, rtol=1e-4, atol=1e-6)
    for g_c, g in zip(grads_c, grads):
        torch.testing.assert_close(g_c, g, rtol=1e-4, atol=1e-6)
