"""Loading a study config: from a YAML file, a bundled preset or a dict, with ``--set``
overrides, and every validation error turned into one line naming the key and what is allowed."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from spaces.config import PRESETS_DIR, StudyConfig
from spaces.values import FORM_TAGS, ConfigError


def presets() -> dict[str, str]:
    """Preset name -> its one-line description."""
    out = {}
    for path in sorted(PRESETS_DIR.glob("*.yaml")):
        description = str((yaml.safe_load(path.read_text()) or {}).get("description", ""))
        out[path.stem] = description.strip().split("\n")[0]
    return out


def _read_yaml(source: str) -> tuple[dict[str, Any], str]:
    path = Path(source).expanduser()
    if not path.exists() and (PRESETS_DIR / f"{source}.yaml").is_file() and "/" not in source:
        path = PRESETS_DIR / f"{source}.yaml"
    if not path.exists():
        raise ConfigError(
            f"config: {source!r} is neither a file nor a preset; presets: {', '.join(presets())}"
        )
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config: cannot read {str(path)!r}: {exc.__class__.__name__}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config: broken YAML in {path.name}{where}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config: {path.name} must hold a mapping of keys, not a {type(raw).__name__}"
        )
    return raw, path.stem


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one ``key.path=value`` override (value parsed as YAML) to the raw config dict."""
    key, sep, value = override.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
        raise ConfigError(f"--set: {override!r} must look like key.path=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: cannot parse value {value!r}") from None
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = parsed


def format_validation_error(exc: ValidationError, prefix: str = "config") -> str:
    """One line: every error's key path and message, the first first."""
    parts = []
    for err in exc.errors():
        loc = ".".join(
            str(p)
            for p in err["loc"]
            if not str(p).startswith(("function-", "union")) and p not in FORM_TAGS
        )
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "literal_error":
            msg = msg.replace("Input should be", "allowed:")
        parts.append(f"{loc}: {msg}" if loc else msg)
    unique = list(dict.fromkeys(parts))
    return (
        f"{prefix}: "
        + "; ".join(unique[:3])
        + (f" (+{len(unique) - 3} more)" if len(unique) > 3 else "")
    )


def load_config(
    source: str | Path | dict[str, Any], overrides: tuple[str, ...] | list[str] = ()
) -> StudyConfig:
    """Load a study config from a YAML path, a preset name or a dict, then apply overrides.

    Raises :class:`ConfigError` with one line naming the bad key and what is allowed.
    """
    if isinstance(source, dict):
        raw, stem = copy.deepcopy(source), "study"
    else:
        raw, stem = _read_yaml(str(source))
    raw.setdefault("name", stem)
    for override in overrides:
        apply_override(raw, override)
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
