"""Atomic file writes: a file appears under its name complete or not at all, even when its writer is killed.

A writer writes `.<name>.tmp-<pid>` beside the target and renames it over the target when done (a rename
within a directory is atomic); on an error the temp file is removed. Temp files left by killed writers of the
same target are removed when the next writer starts. JSON is read with `errors.read_json`.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator


class PendingFile:
    """A file being written at `tmp` that becomes `path` on `commit()` and disappears on `discard()`.

    For writers whose lifetime is not one `with` block (e.g. store.ArtifactWriter); otherwise use `atomic_path`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.path.parent.glob(f".{self.path.name}.tmp-*"):  # left by a killed writer
            stale.unlink(missing_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")

    def commit(self) -> Path:
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields the temp path to write; it is renamed to `path` when the block ends without an error."""
    pending = PendingFile(path)
    try:
        yield pending.tmp
        pending.commit()
    finally:
        pending.discard()


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(data: Any, path: str | os.PathLike, indent: int | None = None) -> Path:
    """Write JSON atomically; compact unless `indent` is given."""
    # dumps, not dump: only dumps uses the C encoder
    return write_text_atomic(json.dumps(data, indent=indent, separators=(",", ": ") if indent else (",", ":")),
                             path)
