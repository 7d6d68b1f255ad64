"""How the layers of a ``wkd`` command (config files, then the command line, in the order typed) combine for the
keyed losses, on top of jsonargparse's rules.

``model.losses`` is a mapping from a stable key to a loss (``wkd_l: {class_path: ..., init_args: ...}``), so that one
loss's one setting can be addressed: ``--model.losses.wkd_l.weight 30`` (or ``.init_args.weight``) and a second
``-c`` file holding only ``model: {losses: {wkd_l: {init_args: {weight: 30}}}}`` change that setting and keep the rest
of that loss and the other losses as configured. The rules:

* a **mapping** merges into the losses configured so far: a key that is there gets the settings given (the others
  kept), a new key adds a loss (with its ``class_path``), ``<key>: null`` removes one;
* a **list** (the form before keyed losses) replaces them all, each loss keyed by its class's ``name`` (``wkd_l``,
  ``wkd_f``, ``kd``, ``dkd``, ``fitnet``).

jsonargparse merges a mapping's entries into the earlier ones by key but drops the keys that a later file does not
name; :class:`WKDArgumentParser` hands those back, and turns lists into mappings, when a config file is applied.
:func:`keyed_losses_argv` does the same for a whole ``--model.losses VALUE`` on the command line.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping

import yaml
from lightning.pytorch.cli import LightningArgumentParser

from wkd_lightning.losses.base import keyed_loss_configs

#: The keyed-loss setting, as a config key and as an option.
LOSSES_KEY = "model.losses"
LOSSES_OPTION = "--" + LOSSES_KEY


def is_mapping_type(typehint) -> bool:
    """Whether ``typehint`` is a mapping, or a union of ``None`` and a mapping (``dict[str, X] | None``)."""
    origin = typing.get_origin(typehint)
    if origin in (dict, Mapping, typing.Mapping):
        return True
    args = typing.get_args(typehint)
    if origin is typing.Union or type(typehint).__name__ == "UnionType":
        others = [a for a in args if a is not type(None)]
        return len(others) == 1 and is_mapping_type(others[0])
    return False


def merged_losses(new, previous):
    """``model.losses`` of a config layer (``new``, as read) against the value configured so far (``previous``).

    A list becomes a mapping (see the module docstring) and replaces; a mapping keeps the earlier keys it does not
    name, in their order, then its own new keys. Entries it names are merged by jsonargparse, key by key.
    """
    if isinstance(new, list):
        return keyed_loss_configs(new)
    if not isinstance(new, Mapping) or not isinstance(previous, Mapping):
        return new
    merged = {key: new.get(key, value) for key, value in previous.items()}
    merged.update({key: value for key, value in new.items() if key not in merged})
    return merged


class WKDArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, with the keyed-loss layering of this module for config files."""

    def _keyed_losses(self) -> bool:
        action = self._option_string_actions.get(LOSSES_OPTION)
        return action is not None and is_mapping_type(getattr(action, "_typehint", None))

    def _apply_actions(self, cfg, parent_key: str = "", prev_cfg=None, skip_fn=None):
        # jsonargparse applies every loaded config file (and config given as a string) through here, with the config
        # so far as `prev_cfg`: the one place where a file's `model.losses` meets the earlier value.
        if isinstance(cfg, dict) and parent_key in ("", "model") and self._keyed_losses():
            branch = cfg if parent_key == "model" else cfg.get("model")
            if isinstance(branch, dict) and "losses" in branch:
                previous = prev_cfg.get(LOSSES_KEY) if prev_cfg is not None else None
                if isinstance(branch["losses"], list) and previous is not None:
                    prev_cfg = prev_cfg.clone()  # a list replaces: nothing of the earlier losses merges into it
                    prev_cfg[LOSSES_KEY] = None
                branch["losses"] = merged_losses(branch["losses"], previous)
        return super()._apply_actions(cfg, parent_key, prev_cfg, skip_fn)


def keyed_losses_argv(argv: list[str]) -> list[str]:
    """``argv`` with a whole ``--model.losses VALUE`` written per key: a mapping as ``--model.losses.<key> VALUE`` for
    each key (merged into the configured losses, as a config file's mapping is), a list as one mapping (replacing
    them, each loss keyed by its class's name). Values that do not read as YAML are left to jsonargparse."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        name, equals, value = arg.partition("=")
        if name != LOSSES_OPTION or (not equals and i + 1 >= len(argv)):
            out.append(arg)
            i += 1
            continue
        if not equals:
            value = argv[i + 1]
        i += 1 if equals else 2
        try:
            loaded = yaml.safe_load(value)
        except yaml.YAMLError:
            loaded = None
        if isinstance(loaded, list):
            out += [LOSSES_OPTION, "null", LOSSES_OPTION, json.dumps(keyed_loss_configs(loaded))]  # replaces
        elif isinstance(loaded, dict) and loaded:
            for key, entry in loaded.items():
                out += [f"{LOSSES_OPTION}.{key}", json.dumps(entry)]
        else:
            out += [LOSSES_OPTION, value]
    return out
