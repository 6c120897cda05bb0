"""Reading the JSON markers that record what a unit of work was made from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datadream.errors import UserError


def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker's content, None when there is none; a damaged one is a clear error."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise UserError(f"{path} is damaged (not the JSON datadream wrote); move its folder away to redo that work")
    return value
