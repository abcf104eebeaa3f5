"""What every dataset builder shares: checking the user's layout with errors that name the path,
and reading files."""

from __future__ import annotations

import json
import os


class LayoutError(ValueError):
    """The files under --manual_dir are not in the layout the builder reads."""


def require_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise LayoutError(f"missing folder {path} ({what})")
    return path


def require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise LayoutError(f"missing file {path} ({what})")
    return path


def load_json(path: str):
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise LayoutError(f"{path} is not valid JSON: {e}") from None


def read_bytes(path: str) -> bytes:
    if not os.path.isfile(path):
        raise LayoutError(f"missing image {path}")
    with open(path, "rb") as f:
        return f.read()
