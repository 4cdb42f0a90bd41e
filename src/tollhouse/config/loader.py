"""Reading a config file: YAML, ``${ENV}`` interpolation, and errors that name the field.

The environment is injected (``environ=``) so tests never touch ``os.environ``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tollhouse.config.defaults import DEFAULT_CONFIG
from tollhouse.config.schema import Config

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A config that cannot be used; ``problems`` holds one line per field."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems


def _interpolate(value: Any, environ: Mapping[str, str], path: str, missing: list[str]) -> Any:
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            missing.append(f"{path}: environment variable {name} is not set")
            return ""

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {
            k: _interpolate(v, environ, f"{path}.{k}" if path else str(k), missing)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_interpolate(v, environ, f"{path}[{i}]", missing) for i, v in enumerate(value)]
    return value


def _describe(err: ValidationError) -> list[str]:
    problems = []
    for item in err.errors():
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in item["loc"]).lstrip(
            "."
        )
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown field (not part of the config schema)"
        elif item["type"] == "missing":
            msg = "required field is missing"
        elif item["type"] == "value_error" and not where:
            # Config's checks across sections: one problem per line, each already named.
            msg = msg.removeprefix("Value error, ")
            problems += [f"<top level>: {line}" for line in msg.splitlines()]
            continue
        problems.append(f"{where or '<top level>'}: {msg}")
    return problems


def parse_config(
    raw: Any, *, source: str = "<config>", environ: Mapping[str, str] | None = None
) -> Config:
    """Validate an already-loaded mapping; raise ``ConfigError`` naming each bad field."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, ["<top level>: must be a mapping of sections"])
    missing: list[str] = []
    data = _interpolate(raw, os.environ if environ is None else environ, "", missing)
    if missing:
        raise ConfigError(source, missing)
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(source, _describe(err)) from None


def load_config(path: str | Path | None, *, environ: Mapping[str, str] | None = None) -> Config:
    """Load ``path``, or the embedded defaults when ``path`` is ``None``."""
    if path is None:
        return parse_config(DEFAULT_CONFIG, source="<embedded defaults>", environ=environ)
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(source, [f"cannot read file: {err.strerror}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(
            source, [f"{where}invalid YAML ({getattr(err, 'problem', err)})"]
        ) from None
    return parse_config(raw, source=source, environ=environ)
