"""Every checkpoint the project reads is loaded with ``weights_only=True`` (no code runs when a file is opened)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from tests.commands.test_cli import QUIET, ROOT, localised_config
from wkd_lightning.commands.wkd import make_cli

SOURCES = sorted(p for folder in ("wkd_lightning", "benchmarks", "scripts") for p in (ROOT / folder).rglob("*.py"))


def torch_load_calls(path: Path) -> list[ast.Call]:
    def is_torch_load(node: ast.AST) -> bool:
        func = getattr(node, "func", None)
        return (
            isinstance(node, ast.Call)
            and isinstance(func, ast.Attribute)
            and func.attr == "load"
            and isinstance(func.value, ast.Name)
            and func.value.id == "torch"
        )

    return [node for node in ast.walk(ast.parse(path.read_text())) if is_torch_load(node)]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_torch_load_uses_weights_only(path):
    for call in torch_load_calls(path):
        flags = {k.arg: k.value for k in call.keywords}
        value = flags.get("weights_only")
        assert isinstance(value, ast.Constant) and value.value is True, f"{path}:{call.lineno} torch.load without it"


def test_cli_reads_checkpoints_with_weights_only(tmp_path, fashion_dir, monkeypatch):
    path = localised_config(ROOT / "configs/fashion_mnist/vanilla.yaml", tmp_path, fashion_dir)
    args = ["-c", str(path), "--trainer.max_epochs=1", "--trainer.limit_train_batches=1", *QUIET]
    make_cli(["fit", *args])
    seen = []
    real_load = torch.load

    def spy(*a, **k):
        seen.append(k.get("weights_only"))
        return real_load(*a, **k)

    monkeypatch.setattr(torch, "load", spy)
    make_cli(["validate", *args, "--ckpt_path=last"])
    assert seen and all(flag is True for flag in seen), seen
