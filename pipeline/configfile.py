"""Reading YAML config files into typed dataclasses, with one kind of error for every loader.

    doc = load_yaml(path, default_path="dags/x.yaml")       # {} when the optional default is absent
    check_keys(doc, {"engine", "stages"}, where=str(path))   # a typo is an error, never ignored
    cfg = fill_dataclass(EngineConfig, doc.get("engine"), str(path), "engine")

Every value is checked against its dataclass field's type (`check_type`: strict, `stride: "eight"` is
an error, not a string in an int field). Every problem raises ConfigError (a ValueError) whose message
is one line naming the file and the dotted key, e.g. "dags/curate.yaml: unknown key faces.params.strid
(known: backend, ...)" or "dags/curate.yaml: faces.params.stride: expected int, got 'eight'", so a CLI
prints it as is and exits 2.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
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


_KEY_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """A command-line override "section.key=value" -> (["section", "key"], value), the value read as
    YAML (`[0.35, 0.65]` is a list, `8` an int, `cuda` a string). ConfigError, one line, for anything else."""
    import yaml

    key, sep, raw = str(text).partition("=")
    key = key.strip()
    if not sep or not _KEY_PATH.fullmatch(key):
        raise ConfigError(f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. faces.stride=4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: value {raw!r} is not YAML ({getattr(e, 'problem', None) or e})") from None
    if value is None:
        raise ConfigError(f"--set {key}: no value given")
    return key.split("."), value


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


# YAML 1.1 (PyYAML) reads 1e-4 as a string (it wants a dot before the e): a float key takes it.
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?(inf|nan)", re.IGNORECASE)


def _label(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_type(name: str, value: Any, tp: Any) -> Any:
    """`value` as type `tp` (a dataclass field's annotation), or ConfigError "<name>: expected <type>, got
    <value>". Strict: a bool is no number, 2.5 is no int, 5 is no str; the only conversions are an int
    to a float, a numeric string to a float (YAML's 1e-4) and a list to a tuple. Unknown types pass."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for alt in (a for a in args if a is not type(None)):
            try:
                return check_type(name, value, alt)
            except ConfigError:
                pass
        raise ConfigError(f"{name}: expected {_label(tp)}, got {value!r}")
    if tp is bool or tp is int or tp is str:
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"{name}: expected {'true/false' if tp is bool else tp.__name__}, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)
        raise ConfigError(f"{name}: expected float, got {value!r}")
    if tp in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{name}: expected a list of {len(args)} values, got {value!r}")
            return tuple(check_type(f"{name}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
        items = [check_type(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value)] if args else list(value)
        return tuple(items) if (origin or tp) is tuple else items
    if tp is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        if not args:
            return dict(value)
        return {check_type(f"{name} key", k, args[0]): check_type(f"{name}.{k}", v, args[1]) for k, v in value.items()}
    return value


def field_types(dc_type: type) -> dict[str, Any]:
    """Field name -> resolved annotation (string annotations resolved in the dataclass's module)."""
    try:
        hints = typing.get_type_hints(dc_type)
    except Exception:   # an annotation that cannot be resolved at run time: fall back to the default's type
        hints = {}
    out = {}
    for f in dataclasses.fields(dc_type):
        if f.name in hints:
            out[f.name] = hints[f.name]
        elif f.default is not dataclasses.MISSING and f.default is not None:
            out[f.name] = type(f.default)
        else:
            out[f.name] = Any
    return out


def set_fields(obj: Any, raw: Any, where: str, section: str = "") -> Any:
    """Type-check `raw` (a mapping) against the fields of dataclass instance `obj` and set them; an
    unknown key or a mistyped value is a ConfigError naming the file and the dotted key. Returns obj."""
    check_keys(raw, (f.name for f in dataclasses.fields(obj)), where, section)
    types_ = field_types(type(obj))
    for k, v in raw.items():
        setattr(obj, k, check_type(f"{where}: {_dotted(section, k)}", v, types_[k]))
    return obj


def coerce(name: str, value: Any, current: Any) -> Any:
    """check_type against the type of the default `value` replaces (for keys kept in a plain dict)."""
    if isinstance(current, tuple):
        return check_type(name, value, tuple[tuple(type(c) for c in current)])
    return check_type(name, value, type(current))


def fill_dataclass(dc_type: type[T], raw: Mapping[str, Any] | None, where: str, section: str = "") -> T:
    """dc_type(**raw) after check_keys and check_type of every value against its field's annotation;
    None means all defaults. An int where a float is wanted becomes a float (YAML reads 3600 for 3600.0;
    config fingerprints must not change with that)."""
    raw = {} if raw is None else raw
    check_keys(raw, (f.name for f in dataclasses.fields(dc_type)), where, section)
    types_ = field_types(dc_type)
    kw = {k: check_type(f"{where}: {_dotted(section, k)}", v, types_[k]) for k, v in raw.items()}
    try:
        return dc_type(**kw)
    except (TypeError, ValueError) as e:      # a dataclass's own __post_init__ check
        raise ConfigError(f"{where}: {section or dc_type.__name__}: {e}") from None
