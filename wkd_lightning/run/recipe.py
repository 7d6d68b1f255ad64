"""The recipe of a run (its resolved ``model`` config: student, teacher, losses and their settings), stored in every
checkpoint and compared when a fit resumes, so that a resume with other losses, temperatures or weights does not
continue a run as if one recipe had held throughout.

Input *files* (teacher weights, WKD-L costs) are judged by their contents in :mod:`wkd_lightning.run.fingerprints`; here
a string naming an existing file counts as "a file", whatever its path, so moving a file is not a change of recipe.
The optimizer and LR schedule are not part of the recipe: a resume may extend a run (``--trainer.max_epochs``), and
the schedule follows the run length. ``--allow_changed_recipe true`` resumes anyway, with a warning.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

#: Where a checkpoint keeps its run's recipe.
RECIPE_KEY = "wkd_recipe"
#: Model options that are not the recipe (files are fingerprinted; the optimizer and schedule may change).
NOT_RECIPE = ("teacher_weights", "allow_changed_inputs", "optimizer", "lr_scheduler")
FILE = "<a file: compared by content>"


def plain(value):
    """``value`` as JSON-like data (dicts, lists, str, numbers): what a ``weights_only`` checkpoint can hold."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, str) and os.path.isfile(value):
        return FILE
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def recipe_of(model_config) -> dict:
    """The recipe of a resolved ``model`` config (see the module docstring)."""
    return {k: v for k, v in plain(model_config).items() if k not in NOT_RECIPE}


def differences(saved, current, prefix: str = "model") -> list[str]:
    """``"model.losses.kd.init_args.temperature: 4.0 in the checkpoint, 2.0 now"`` for every value that differs."""
    if isinstance(saved, list) and isinstance(current, dict) and len(saved) == len(current):
        saved = dict(zip(current, saved))  # losses as a list (checkpoints before keyed losses), in the same order
    if isinstance(saved, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(saved) | set(current)):
            found += differences(saved.get(key), current.get(key), f"{prefix}.{key}")
        return found
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        return [d for i, (a, b) in enumerate(zip(saved, current)) for d in differences(a, b, f"{prefix}.{i}")]
    return [] if saved == current else [f"{prefix}: {saved!r} in the checkpoint, {current!r} now"]


class RecipeCheck(L.Callback):
    """Store the run's recipe in every checkpoint; refuse a resume whose recipe differs (or warn, when allowed).

    Args:
        recipe: this run's recipe (:func:`recipe_of` of its resolved model config).
        allow_changed_recipe: resume anyway, with a warning.
    """

    def __init__(self, recipe: dict, allow_changed_recipe: bool = False) -> None:
        self.recipe = recipe
        self.allow_changed_recipe = allow_changed_recipe

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[RECIPE_KEY] = self.recipe

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """Raises ValueError: the checkpoint's recipe differs from this run's (each difference named)."""
        saved = checkpoint.get(RECIPE_KEY)
        changes = differences(saved, self.recipe) if saved is not None else []
        if not changes:
            return
        shown = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more" if len(changes) > 5 else "")
        if not self.allow_changed_recipe:
            raise ValueError(
                f"the checkpoint was trained with another recipe than this command's: {shown}. Resuming would "
                "continue one run with two recipes. Resume with the run's own config (its config.yaml), start over "
                "with --new_version true, or pass --allow_changed_recipe true to resume anyway (with a warning)."
            )
        rank_zero_warn(f"allow_changed_recipe=True: resuming a checkpoint trained with another recipe: {shown}.")
