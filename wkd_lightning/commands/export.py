"""``wkd export``: the trained student of a ``wkd fit`` checkpoint alone, in a file that plain PyTorch code loads.

Usage::

    wkd export --ckpt_path runs/fashion_mnist/kd/checkpoints/best.ckpt --format state_dict --output student.pt
    wkd export --ckpt_path RUN/checkpoints/best.ckpt --format torchscript --output student.ts.pt
    wkd export --ckpt_path RUN/checkpoints/best.ckpt --format onnx --output student.onnx

Formats:

* ``state_dict``: the student's ``state_dict`` with the keys its architecture expects (no ``student.`` prefix, no
  teacher, loss adapters or metrics), for ``model = mini_resnet8()`` then
  ``model.load_state_dict(torch.load(FILE, weights_only=True))``, as with torchvision or timm weights.
* ``torchscript``: ``torch.jit.script`` of the student in eval mode, or ``torch.jit.trace`` on an example batch
  where scripting fails; load with ``torch.jit.load(FILE)``, without this package.
* ``onnx``: ``torch.onnx.export`` in eval mode, input ``input`` (N×C×H×W, N free), output ``logits``; needs the
  packages ``onnx`` and ``onnxscript`` (``pip install onnx onnxscript``; both are in the ``dev`` extra).

The student is rebuilt from the checkpoint alone: its architecture is the ``student`` config that every checkpoint
of ``wkd fit`` stores (older checkpoints: the run's ``config.yaml`` beside ``checkpoints/``); the teacher file is not
needed. Every file is read back after writing and its logits compared with the student's on a random batch.
TorchScript and ONNX need the input size: ``--input_size C H W``, else the module's ``input_size`` or the
registered model's (``wkd models``).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml
from torch import nn

from wkd_lightning.checkpoints import check_run_checkpoint, describe_mismatch, read_state_dict
from wkd_lightning.models import list_models, model_info

FORMATS = ("state_dict", "torchscript", "onnx")
#: Packages ``torch.onnx.export`` needs (its default exporter since torch 2.9 builds the graph with onnxscript).
ONNX_PACKAGES = ("onnx", "onnxscript")
#: A written file reproduces the student when its logits are within this of the student's (float32 rounding).
TOLERANCE = 1e-4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wkd export",
        description="Write the trained student of a `wkd fit` checkpoint alone: a plain state_dict "
        "(model.load_state_dict), TorchScript (torch.jit.load) or ONNX.",
    )
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint of `wkd fit` (RUN/checkpoints/best.ckpt).")
    parser.add_argument("--format", choices=FORMATS, default="state_dict", help="default: state_dict.")
    parser.add_argument("--output", required=True, help="the file to write.")
    parser.add_argument(
        "--input_size",
        type=int,
        nargs=3,
        metavar=("C", "H", "W"),
        help="one input's size, for torchscript/onnx (default: the module's input_size, else the registered model's).",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file.")
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    """``wkd export ...``; returns the written file."""
    options = build_parser().parse_args(argv)
    output = Path(options.output)
    if output.exists() and not options.overwrite:
        raise FileExistsError(f"{output} exists already; pass --overwrite to replace it, or another --output.")
    if options.format == "onnx":
        require_onnx()
    student, config, stored_size = load_student(options.ckpt_path)
    input_size = tuple(options.input_size or stored_size or registered_input_size(config) or ())
    if options.format != "state_dict" and not input_size:
        raise ValueError(
            f"{options.format} needs one input's size, and neither the checkpoint nor the model registry gives it "
            "for this student: pass --input_size C H W (e.g. --input_size 3 32 32)."
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    how = export(student, options.format, output, input_size)
    check_export(student, config, options.format, output, input_size)
    print(
        f"wkd export: wrote {output} ({options.format}{how}, {sum(p.numel() for p in student.parameters())} "
        f"parameters). Load it with: {load_hint(options.format, output, config)}"
    )
    return output


def require_onnx() -> None:
    """Raises ValueError when a package of :data:`ONNX_PACKAGES` is not installed."""
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(
            f"--format onnx needs the package(s) {', '.join(missing)}, which are not installed: pip install "
            f"{' '.join(missing)} (or pip install -e .[dev]); --format torchscript needs nothing more."
        )


def load_student(ckpt_path: str | os.PathLike) -> tuple[nn.Module, dict, tuple[int, ...] | None]:
    """The trained student of a ``wkd fit`` checkpoint in eval mode, its config (``class_path``/``init_args``) and the
    module's ``input_size`` (or None).

    Raises:
        FileNotFoundError: no such checkpoint.
        ValueError: the file is damaged, or holds no student config, or its weights do not fit the config.
    """
    path = os.fspath(ckpt_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"--ckpt_path {path!r} does not exist: pass a checkpoint of `wkd fit` "
            "(RUN/checkpoints/best.ckpt or last.ckpt)."
        )
    check_run_checkpoint(path)
    hparams = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters") or {}
    config = hparams.get("student") or run_config_student(Path(path))
    student = instantiate_student(config, path)
    state = read_state_dict(path, what="checkpoint")
    problem = describe_mismatch(student.state_dict(), state)
    if problem:
        raise ValueError(
            f"the student weights of {path!r} do not fit its config {config.get('class_path')}: {problem}."
        )
    student.load_state_dict(state)
    return student.eval(), config, tuple(hparams["input_size"]) if hparams.get("input_size") else None


def run_config_student(ckpt_path: Path) -> dict:
    """The student config of the run's ``config.yaml`` (``RUN/checkpoints/x.ckpt`` → ``RUN/config.yaml``), for
    checkpoints written before they stored it."""
    config_file = ckpt_path.parent.parent / "config.yaml"
    student = None
    if config_file.is_file():
        student = (yaml.safe_load(config_file.read_text()) or {}).get("model", {}).get("student")
    if not isinstance(student, dict):
        raise ValueError(
            f"{ckpt_path} stores no student config (a checkpoint of another program, or of an older version), and "
            f"{config_file} gives none: export needs the architecture. Export from a checkpoint of `wkd fit`, whose "
            "run directory has config.yaml."
        )
    return student


def instantiate_student(config: dict, path: str) -> nn.Module:
    """Build the student from its ``class_path``/``init_args`` config, as the CLI does."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--student", type=nn.Module)
    try:
        return parser.instantiate_classes(parser.parse_object({"student": config})).student
    except Exception as error:  # jsonargparse reports an unknown class or bad arguments with several types
        raise ValueError(f"cannot build the student {config!r} stored in {path!r}: {error}") from error


def registered_input_size(config: dict) -> tuple[int, ...] | None:
    """The input size of a registered model named by ``config``'s class path, with its ``in_channels``."""
    name = str(config.get("class_path", "")).rpartition(".")[2]
    if name not in list_models():
        return None
    channels, height, width = model_info(name).input_size
    return (int((config.get("init_args") or {}).get("in_channels", channels)), height, width)


def export(student: nn.Module, fmt: str, output: Path, input_size: Sequence[int]) -> str:
    """Write ``student`` (in eval mode) as ``fmt`` to ``output``; returns how the TorchScript was made (``""`` for
    the other formats)."""
    example = torch.randn(2, *input_size) if input_size else None
    how = ""
    if fmt == "state_dict":
        torch.save({k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}, output)
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notices: not the user's concern here
            try:
                scripted, how = torch.jit.script(student), ", scripted"
            except Exception:  # the architecture uses Python that TorchScript cannot compile: trace it instead
                with torch.no_grad():
                    scripted, how = torch.jit.trace(student, example), f", traced on a {tuple(example.shape)} batch"
            torch.jit.save(scripted, str(output))
    elif fmt == "onnx":
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                student,
                (example,),
                str(output),
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                verbose=False,
                **onnx_single_file(student),
            )
    else:
        raise ValueError(f"--format {fmt!r} is unknown; choose one of {', '.join(FORMATS)}.")
    return how


def onnx_single_file(student: nn.Module) -> dict:
    """``torch.onnx.export``'s option that keeps the weights inside the ``.onnx`` file (newer torch writes them to a
    ``.data`` file beside it by default), unless they pass protobuf's 2 GB limit."""
    if "external_data" not in inspect.signature(torch.onnx.export).parameters:
        return {}
    size = sum(t.numel() * t.element_size() for t in student.state_dict().values())
    return {"external_data": size > 1.5e9}


def check_export(student: nn.Module, config: dict, fmt: str, output: Path, input_size: Sequence[int]) -> None:
    """Read ``output`` back as a user would (a fresh model from ``config`` for a state dict) and compare its logits
    with the student's on a random batch of 3, another batch size than the example's (ONNX: when onnxruntime is
    installed; a state dict without a known input size: its strict load only).

    Raises:
        RuntimeError: the file does not reproduce the student's logits.
    """
    if fmt == "state_dict":
        model = instantiate_student(config, str(output))
        model.load_state_dict(torch.load(output, weights_only=True))
        model.eval()
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
            model = torch.jit.load(str(output))
    elif importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])

        def model(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    else:
        return
    if not input_size:
        return
    x = torch.randn(3, *input_size)
    with torch.no_grad():
        expected, got = student(x), model(x)
    error = float((got - expected).abs().max())
    if not error <= TOLERANCE:
        raise RuntimeError(
            f"the exported {fmt} file {output} does not reproduce the student: logits differ by "
            f"{error:.3g} on a random batch of 3 (tolerance {TOLERANCE})."
        )


def load_hint(fmt: str, output: Path, config: dict) -> str:
    """The Python lines that load the written file."""
    if fmt == "torchscript":
        return f"model = torch.jit.load({str(output)!r})"
    if fmt == "onnx":
        return f"onnxruntime.InferenceSession({str(output)!r}).run(None, {{'input': x}})"
    init = ", ".join(f"{k}={v!r}" for k, v in (config.get("init_args") or {}).items())
    loaded = f"torch.load({str(output)!r}, weights_only=True)"
    return f"model = {config.get('class_path')}({init}); model.load_state_dict({loaded})"
