"""Send a stage's stdout and stderr (progress bars included) to its log file."""

from __future__ import annotations

import contextlib
import os
import traceback
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def redirect_output(path: str | os.PathLike | None) -> Iterator[None]:
    """Append stdout and stderr to `path` for the duration (no-op for None)."""
    if not path:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        try:
            yield
        except BaseException:
            traceback.print_exc(file=fh)
            raise
