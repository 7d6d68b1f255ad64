"""Experiment tracking checks: fail fast, with the fix, when Weights & Biases online mode cannot reach its server.

Without network, ``wandb.init`` in online mode retries for minutes before failing with a message about sockets.
Before a run starts, :func:`check_wandb_reachable` opens one TCP connection to the W&B server (``WANDB_BASE_URL``,
default ``https://api.wandb.ai``) with a short timeout and, when that fails, says how to log offline instead.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from urllib.parse import urlparse

from lightning.pytorch.loggers import Logger, WandbLogger

OFFLINE_MODES = ("offline", "dryrun", "disabled")
DEFAULT_BASE_URL = "https://api.wandb.ai"


def wandb_is_online(logger: Logger) -> bool:
    """True for a ``WandbLogger`` that will talk to the W&B server (not offline by argument or ``WANDB_MODE``)."""
    if not isinstance(logger, WandbLogger) or logger._offline:
        return False
    mode = logger._wandb_init.get("mode") or os.environ.get("WANDB_MODE", "online")
    return mode not in OFFLINE_MODES


def check_wandb_reachable(loggers: Iterable[Logger], timeout_s: float = 5.0) -> None:
    """Raise ``ConnectionError`` when an online ``WandbLogger`` is configured but the W&B server is unreachable."""
    if not any(wandb_is_online(logger) for logger in loggers):
        return
    url = urlparse(os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
    except OSError as error:
        raise ConnectionError(
            f"Weights & Biases is in online mode but its server {url.hostname}:{port} cannot be reached "
            f"({type(error).__name__}: {error}). Without network, log offline: use "
            "`-c configs/logging/wandb_offline.yaml` (sync later with `wandb sync`) or set WANDB_MODE=offline; "
            "`configs/logging/wandb_disabled.yaml` turns W&B off."
        ) from error
