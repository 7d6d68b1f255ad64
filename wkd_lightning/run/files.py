"""Writing result files so that no reader ever sees half of one.

Several processes may write the same file (every DDP rank of a ``wkd-ban`` driver, ``wkd-ir`` under a launcher), and
a reader may look at any moment (a resumed run, a study script). :func:`replaced_atomically` writes to a temporary
file beside the target and moves it into place in one step (``os.replace``): readers see the old file or the new one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replaced_atomically(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so writers that go by the extension still work) that replaces
    ``path`` when the block ends without an error; on an error it is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """``Path(path).write_text(text)`` through :func:`replaced_atomically`."""
    with replaced_atomically(path) as tmp:
        tmp.write_text(text)
