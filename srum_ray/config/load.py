"""Load, validate and override configs.

YAML is read with ``yaml.safe_load``; a file may name ``defaults: [other.yaml, ...]`` (paths
relative to it) whose contents it overrides. ``key.path=value`` overrides (values parsed as
YAML scalars/lists) apply last. Every problem raises :class:`ConfigError` with the key path
and the allowed values, before any model is built.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

from srum_ray.config.schema import SrumConfig


class ConfigError(ValueError):
    """A config problem; the message names the key path and what is allowed."""


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Raw mapping of a YAML config with its ``defaults`` chain merged in."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"config defaults form a cycle through {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    defaults = data.pop("defaults", [])
    if isinstance(defaults, str):
        defaults = [defaults]
    merged: dict = {}
    for d in defaults:
        merged = _merge(merged, read_yaml(path.parent / d, _seen + (path.resolve(),)))
    return _merge(merged, data)


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Set ``a.b.c=value`` pairs on a raw mapping (values parsed with ``yaml.safe_load``)."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not p for p in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            child = node.get(p)
            child = dict(child) if isinstance(child, dict) else {}
            node[p] = child
            node = child
        node[parts[-1]] = value
    return data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_range(path: str, value: Any, meta: dict) -> None:
    bounds = [(">=", "ge", lambda a, b: a >= b), (">", "gt", lambda a, b: a > b),
              ("<=", "le", lambda a, b: a <= b), ("<", "lt", lambda a, b: a < b)]
    for sym, key, ok in bounds:
        if key in meta and not ok(value, meta[key]):
            allowed = " and ".join(f"{s} {meta[k]}" for s, k, _ in bounds if k in meta)
            raise ConfigError(f"{path} = {value!r} is out of range (allowed: {allowed})")


def _coerce(path: str, tp: Any, value: Any, meta: dict) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{path} must not be null")
        inner = [a for a in args if a is not type(None)]
        return _coerce(path, inner[0], value, meta)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
        return _build(tp, value, path)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{path} keys must be strings, got {k!r}")
            out[k] = _coerce(f"{path}.{k}", args[1], v, meta)
        return out
    if origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        if "len" in meta and len(value) != meta["len"]:
            raise ConfigError(f"{path} must have {meta['len']} items, got {len(value)}")
        item_meta = {k: v for k, v in meta.items() if k != "len"}
        return [_coerce(f"{path}[{i}]", args[0], v, item_meta) for i, v in enumerate(value)]
    if value is None:
        raise ConfigError(f"{path} must not be null (expected {_type_name(tp)})")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} = {value!r} must be true or false")
        out = value
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} = {value!r} must be an integer")
        out = value
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-15" as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{path} = {value!r} must be a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} = {value!r} must be a number")
        out = float(value)
    elif tp is str:
        if isinstance(value, (dict, list)) or isinstance(value, bool):
            raise ConfigError(f"{path} = {value!r} must be a string")
        out = str(value)
    else:  # pragma: no cover - schema uses only the types above
        raise ConfigError(f"{path}: unsupported type {tp}")
    if "choices" in meta and out not in meta["choices"]:
        allowed = ", ".join(str(c) for c in meta["choices"])
        raise ConfigError(f"{path} = {out!r} is not allowed (allowed: {allowed})")
    _check_range(path, out, meta)
    return out


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"unknown key {where} (allowed: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            path = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _coerce(path, hints[name], data[name], dict(f.metadata))
    return cls(**kwargs)


def config_from_dict(data: dict) -> SrumConfig:
    """Validated :class:`SrumConfig` from a raw mapping."""
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping, got {type(data).__name__}")
    return _build(SrumConfig, data)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> SrumConfig:
    """Read ``path`` (or start from the built-in defaults), apply overrides, validate."""
    data = read_yaml(path) if path is not None else {}
    return config_from_dict(apply_overrides(data, overrides))


def config_to_dict(cfg: Any) -> dict:
    """Plain mapping of a config (round-trips through :func:`config_from_dict`)."""
    return dataclasses.asdict(cfg)


def dump_config(cfg: SrumConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
