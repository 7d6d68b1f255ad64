"""``wkd models`` and ``wkd configs``: what a config can name, and the experiments the repository ships.

Usage::

    wkd models                 # every registered architecture: name, class path, input size, last feature stage
    wkd models resnet          # only the names that contain "resnet"
    wkd configs                # every shipped config (configs/**/*.yaml) with the first sentence of its comment
    wkd configs cifar100/kd    # only the paths that contain "cifar100/kd"

A model is named in a config or on the command line by its class path (``--model.student
wkd_lightning.models.resnet8x4``, or ``class_path: wkd_lightning.models.resnet8x4`` in YAML); any other ``nn.Module``
class or factory that can be imported works too (``torchvision.models.resnet18``).

The same names replace torch's ~400 ``nn.Module`` subclasses in the help of ``wkd fit --help``
(:class:`CatalogHelpFormatter`).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

from jsonargparse import DefaultHelpFormatter

from wkd_lightning import models

#: The shipped configs: ``configs/`` at the root of the repository (a source checkout or an editable install).
CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"
#: How jsonargparse names ``torch.nn.Module`` in a list of known subclasses.
MODULE_BASE = "torch.nn.Module"
#: Where a description taken from a config's comment is cut.
DESCRIPTION_WIDTH = 100


def model_class_path(name: str) -> str:
    """The class path a config uses for the registered model ``name`` (``wkd_lightning.models.resnet8x4``)."""
    factory = models.model_info(name).factory
    if getattr(models, name, None) is factory:
        return f"{models.__name__}.{name}"
    return f"{factory.__module__}.{factory.__name__}"


def model_rows(contains: str = "") -> list[tuple[str, str, str, str]]:
    """(name, class path, input size, last feature stage with its channels) of every registered model whose name
    contains ``contains`` (case-insensitive)."""
    rows = []
    for name in models.list_models():
        if contains.lower() not in name.lower():
            continue
        info = models.model_info(name)
        size = "×".join(str(n) for n in info.input_size)
        stage = f"{info.last_stage} ({info.feature_channels[info.last_stage]} ch)" if info.last_stage else "-"
        rows.append((name, model_class_path(name), size, stage))
    return rows


def config_description(path: Path) -> str:
    """The first sentence of the comment at the top of a config (its first comment lines, up to the first command
    line, blank line or key), cut to :data:`DESCRIPTION_WIDTH` characters."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text.startswith("#"):
            break
        text = text.lstrip("#")
        if not text.strip() or text.startswith("  "):  # a blank comment line, or an indented command example
            break
        lines.append(text.strip())
    description = " ".join(lines)
    sentence = re.match(r".*?\.(?=\s|$)", description)
    description = sentence.group(0) if sentence else description
    if len(description) > DESCRIPTION_WIDTH:
        description = description[: DESCRIPTION_WIDTH - 1].rstrip() + "…"
    return description


def config_command(path: Path, shown: str) -> str:
    """The command a config is run with, as its own comment shows it (``wkd fit``, ``wkd-det fit``, ``wkd-ban``,
    ``wkd-ir``; ``wkd fit -c ... -c`` for a config added to an experiment's); ``wkd fit`` when it shows none."""
    pattern = r"(wkd(?:-det|-ban|-ir)?(?: fit)?)((?: -c \S+)*) -c " + re.escape(shown) + r"(?!\S)"
    found = re.search(pattern, path.read_text(encoding="utf-8"))
    if found is None:
        return "wkd fit"
    return found.group(1) + (" -c ... -c" if found.group(2) else "")


def config_rows(contains: str = "", root: Path = CONFIG_ROOT) -> list[tuple[str, str, str]]:
    """(path as typed after ``-c``, the command it is run with, description) of every shipped config whose path
    contains ``contains``.

    Raises:
        FileNotFoundError: there is no ``configs/`` folder (an install without the repository's files).
    """
    if not root.is_dir():
        raise FileNotFoundError(
            f"no configs folder at {root}: the configs ship with the source repository, not with an installed wheel. "
            "Install the project from a checkout (pip install -e .) to list them."
        )
    rows = []
    for path in sorted(root.rglob("*.yaml")):
        shown = f"{root.name}/{path.relative_to(root).as_posix()}"
        if contains.lower() in shown.lower():
            rows.append((shown, config_command(path, shown), config_description(path)))
    return rows


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """Left-aligned columns, two spaces apart; the last column is not padded."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]]).rstrip()
        for row in [header, *rows]
    )


def list_command(argv: Sequence[str], prog: str, description: str, what: str, rows_of, header: Sequence[str]) -> None:
    """A listing command: ``<prog> [TEXT]`` prints the table of ``rows_of(TEXT)``; no row is an error."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("contains", nargs="?", default="", help=f"only {what}s that contain this text.")
    contains = parser.parse_args(argv).contains
    rows = rows_of(contains)
    if not rows:
        raise ValueError(f"no {what} contains {contains!r}; `{prog}` lists them all.")
    print(table(rows, header))


def models_main(argv: Sequence[str]) -> None:
    """``wkd models [TEXT]``."""
    list_command(
        argv,
        "wkd models",
        "List the registered architectures: the name, the class path a config or --model.student / --model.teacher "
        "takes, the input size it is made for, and its last feature stage (the WKD-F default layer).",
        "registered model name",
        model_rows,
        ("name", "class path (--model.student / --model.teacher)", "input", "last stage"),
    )
    print("\nAny other nn.Module class or factory works too, by its class path (e.g. torchvision.models.resnet18).")


def configs_main(argv: Sequence[str]) -> None:
    """``wkd configs [TEXT]``."""
    list_command(
        argv,
        "wkd configs",
        "List the shipped configs (configs/**/*.yaml): the path to pass to -c, the command that runs it (as its "
        "comment shows: wkd fit, wkd-det fit, wkd-ban, wkd-ir) and the first sentence of its comment.",
        "shipped config path",
        config_rows,
        ("config", "run with", "description"),
    )


class CatalogHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help, but an ``nn.Module`` argument (``--model.student``, ``--model.teacher``) lists the
    registered models instead of every subclass of ``nn.Module`` that happens to be imported (~400 of torch's)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_string = super()._get_help_string(action)
        extra = getattr(action, "extra_help", None)
        if extra is None:
            return help_string
        known = extra()
        if not known or not help_string.endswith(known + ")"):
            return help_string
        if MODULE_BASE not in known.removeprefix(", known subclasses: ").split(", "):
            return help_string  # losses, optimizers, ...: their own short lists
        prefix = f"{models.__name__}."
        names = ", ".join(model_class_path(name).removeprefix(prefix) for name in models.list_models())
        ours = f", registered models, as {prefix}NAME: {names}; or any nn.Module class path (`wkd models`)"
        return help_string[: -len(known) - 1] + ours + ")"
