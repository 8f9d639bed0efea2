"""DataError and the small JSON helpers that raise it with the file and the field in one line.

A malformed dataset file is a user problem (wrong download, wrong path), so it gets a one-line
message such as ``paco_lvis_v1_test.json: annotations[3] has no 'category_id'``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from part_point_ros.errors import InputError


class DataError(InputError):
    """A dataset file or folder is missing or malformed; the message names the file and the field."""


_KIND_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number"}


def read_json(path: Path) -> Any:
    """Parse ``path`` as JSON; a missing or unparsable file raises DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the dataset root")
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as err:
        where = f"line {err.lineno}, column {err.colno}"
        raise DataError(f"{path.name}: not valid JSON ({where}: {err.msg})") from err
    except UnicodeDecodeError as err:
        raise DataError(f"{path.name}: not UTF-8 text ({err.reason}); is it the right file?") from err


def expect(value: Any, kind: type | tuple[type, ...], *, file: Path, where: str) -> Any:
    """Return ``value`` if it is of ``kind`` (bool never counts as a number), else raise DataError."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        wanted = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
        raise DataError(f"{file.name}: {where} should be {wanted}, got {type(value).__name__}")
    return value


def field(obj: dict, key: str, kind: type | tuple[type, ...], *, file: Path, where: str) -> Any:
    """``obj[key]`` checked against ``kind``; a missing key or wrong type names file, place and key."""
    if key not in obj:
        raise DataError(f"{file.name}: {where} has no '{key}'")
    return expect(obj[key], kind, file=file, where=f"{where}['{key}']")
