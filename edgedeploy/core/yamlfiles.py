"""Strictly validated YAML files found by name in a folder (device profiles, recipes).

Hand-edited files get a strict check: an unknown field (a typo) or a missing one is an error that
names the file and the dotted field, instead of a setting silently ignored.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from edgedeploy.core.errors import EdgeDeployError

Schema = Mapping[str, Any]  # field -> type, tuple of types, a nested Schema, or OptionalField(one of those)


class OptionalField:
    """A schema entry that may be left out; when given, it is checked like ``schema``."""

    def __init__(self, schema: Any):
        self.schema = schema


def resolve(name_or_path: str, folder: Path, kind: str, error: type[EdgeDeployError]) -> Path:
    """A path given as such, or ``folder/<name>.yaml``; unknown names list the known ones."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if not candidate.is_file():
            raise error(f"{kind} file {candidate} does not exist")
        return candidate
    path = folder / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml"))) or "none"
        noun = "targets" if kind == "device profile" else f"{kind}s"
        label = "target" if kind == "device profile" else kind
        raise error(f"unknown {label} {name_or_path!r}: known {noun} are {known} (or pass a path to a {kind} YAML)")
    return path


def load(path: Path, kind: str, error: type[EdgeDeployError], schema: Schema) -> tuple[dict, str]:
    """Parse and check ``path`` against ``schema``; returns (data, sha256 of the file's bytes)."""
    raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise error(f"{kind} {path} is not valid YAML{where}: fix the file's syntax") from None
    check(data, schema, f"{kind} {path}", error)
    if data.get("name", path.stem) != path.stem:
        raise error(f"{kind} {path}: field name is {data['name']!r} but the file is {path.name}; make them match")
    return data, hashlib.sha256(raw).hexdigest()


def check(data: Any, schema: Schema, where: str, error: type[EdgeDeployError], prefix: str = "") -> None:
    if not isinstance(data, dict):
        raise error(f"{where}: {prefix.rstrip('.') or 'the top level'} must be a mapping")
    for key in data:
        if key not in schema:
            raise error(f"{where}: unknown field {prefix}{key} (allowed here: {', '.join(schema)})")
    for key, expected in schema.items():
        field = f"{prefix}{key}"
        if key not in data and isinstance(expected, OptionalField):
            continue
        if key not in data:
            raise error(f"{where}: missing field {field}")
        value = data[key]
        expected = expected.schema if isinstance(expected, OptionalField) else expected
        if isinstance(expected, Mapping):
            check(value, expected, where, error, f"{field}.")
        elif not _matches(value, expected):
            names = expected.__name__ if isinstance(expected, type) else " or ".join(t.__name__ for t in expected)
            raise error(f"{where}: field {field} must be {names}, got {value!r}")


def _matches(value: Any, expected: type | tuple[type, ...]) -> bool:
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool):
        return bool in types
    if float in types and isinstance(value, int):
        return True
    return isinstance(value, types)
