"""The one base class of the errors pseudomask reports to a user as a message, not a traceback, and the
JSON reader whose errors name the file, line and column."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class PseudomaskError(Exception):
    """Bad input or a bad artifact; the message names the file and the record."""


def read_json(path: str | os.PathLike, error: type[PseudomaskError], what: str) -> Any:
    """Parsed JSON of a file; a missing file or malformed JSON raises `error` naming the file (and line)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
