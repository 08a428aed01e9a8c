"""Reading YAML config files into typed dataclasses, with one kind of error for every loader.

    doc = load_yaml(path, default_path="dags/x.yaml")       # {} when the optional default is absent
    check_keys(doc, {"engine", "stages"}, where=str(path))   # a typo is an error, never ignored
    cfg = fill_dataclass(EngineConfig, doc.get("engine"), str(path), "engine")

Every problem raises ConfigError (a ValueError) whose message is one line naming the file and the
dotted key, e.g. "dags/curate.yaml: unknown key faces.params.strid (known: backend, ...)", so a CLI
prints it as is and exits 2.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file, section or key that cannot be used; the message is one line naming the file."""


def load_yaml(path: str | Path | None, default_path: str | Path | None = None) -> dict:
    """The mapping at the top of a YAML file.

    path None or "": the default file if given and present, else {}. A missing `path` is an error
    unless it is the default file itself (a defaults file is optional; a file the user named is
    not). An empty file is {}. Malformed YAML or a top level that is not a mapping: ConfigError.
    """
    import yaml

    if not path:
        if default_path is None or not Path(default_path).is_file():
            return {}
        path = default_path
    p = Path(path)
    if not p.is_file():
        if default_path is not None and p == Path(default_path):
            return {}
        raise ConfigError(f"config file not found: {p}")
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}: malformed YAML{line}: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read: {e}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(doc).__name__}")
    return doc


def _dotted(section: str, key: object) -> str:
    return f"{section}.{key}" if section else str(key)


def check_keys(raw: Any, known: Iterable[str], where: str, section: str = "") -> None:
    """raw must be a mapping whose keys are all in `known`, else ConfigError
    "<where>: unknown key <section>.<k> (known: a, b)" (every unknown key named, sorted)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: {section or 'top level'} must be a mapping, got {type(raw).__name__}")
    known = set(known)
    unknown = sorted((str(k) for k in raw if k not in known))
    if unknown:
        keys = ", ".join(_dotted(section, k) for k in unknown)
        raise ConfigError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {keys} "
                          f"(known: {', '.join(sorted(known)) or 'none'})")


def coerce(name: str, value: Any, current: Any) -> Any:
    """Cast a YAML/CLI value to the type of the default it replaces (`current`); refuse nonsense with
    a ConfigError naming the key. A mapping default takes a mapping as it is."""
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(current):
            raise ConfigError(f"{name}: expected a list of {len(current)} numbers, got {value!r}")
        return tuple(float(v) for v in value)
    if isinstance(current, dict):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return dict(value)
    try:
        return type(current)(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected {type(current).__name__}, got {value!r}") from None


def fill_dataclass(dc_type: type[T], raw: Mapping[str, Any] | None, where: str, section: str = "") -> T:
    """dc_type(**raw) after check_keys; None means all defaults. An int where the default is a float
    becomes a float (YAML reads 3600 for 3600.0; config fingerprints must not change with that)."""
    raw = {} if raw is None else raw
    fields = dataclasses.fields(dc_type)
    check_keys(raw, (f.name for f in fields), where, section)
    defaults = dc_type()
    kw = {}
    for k, v in raw.items():
        if isinstance(getattr(defaults, k), float) and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        kw[k] = v
    try:
        return dc_type(**kw)
    except (TypeError, ValueError) as e:      # a dataclass's own __post_init__ check
        raise ConfigError(f"{where}: {section or dc_type.__name__}: {e}") from None
