"""Experiment protocols as ``ml_collections.ConfigDict``s: load one, override fields, save it.

A protocol is one config (as big_vision and scenic keep theirs): ``load`` reads it from a
Python file with ``get_config(variant)`` (``path/to/file.py:variant``), from a variant of the
experiment's own config module (``variant``), or from the ``config.json`` a run wrote beside
its results, so that a run is repeated exactly with ``--config runs/NAME/config.json``.
``override`` applies ``--set a.b=value`` assignments, parsed by the type of the field they
replace, and refuses unknown fields, naming the closest ones.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections


def load(spec: str | None, default: Callable[..., ml_collections.ConfigDict]
         ) -> ml_collections.ConfigDict:
    """The config that ``spec`` names.

    Args:
        spec: ``None`` (the default variant), ``VARIANT``, ``FILE.py[:VARIANT]`` or
            ``FILE.json`` (a saved config).
        default: the experiment's ``get_config(variant=...)``, called without a variant
            for its default one.
    """
    if spec is None:
        return default()
    path, variant = spec, ""
    if ":" in spec and not spec.endswith((".py", ".json")):
        path, variant = spec.rsplit(":", 1)
    if path.endswith(".json"):
        if not os.path.exists(path):
            raise FileNotFoundError(f"--config: no file {path!r}")
        with open(path) as f:
            return ml_collections.ConfigDict(_tuples(json.load(f)))
    if path.endswith(".py"):
        if not os.path.exists(path):
            raise FileNotFoundError(f"--config: no file {path!r}")
        module_spec = importlib.util.spec_from_file_location("_jaxreg_config", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ValueError(f"--config: {path} has no get_config(variant) function")
        return module.get_config(variant) if variant else module.get_config()
    return default(spec)


def _tuples(tree):
    """JSON lists back to the tuples the configs use."""
    if isinstance(tree, dict):
        return {k: _tuples(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return tuple(_tuples(v) for v in tree)
    return tree


def _parse(text: str, like, field: str):
    if isinstance(like, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"--set {field}: expected true or false, got {text!r}")
        return text.lower() in ("true", "1")
    if isinstance(like, tuple):
        items = [t for t in text.split(",") if t != ""]
        element = like[0] if like else (float if "." in text or "e" in text else int)
        element = element if isinstance(element, type) else type(element)
        return tuple(_parse(t, element(), field) for t in items)
    try:
        if isinstance(like, int):
            return int(text)
        if isinstance(like, float):
            return float(text)
    except ValueError:
        kind = "an integer" if isinstance(like, int) else "a number"
        raise ValueError(f"--set {field}: expected {kind}, got {text!r}") from None
    if like is None:  # a field left open: a number if it reads as one
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return None if text.lower() == "none" else text
    return text


def override(config: ml_collections.ConfigDict, assignments: Sequence[str]
             ) -> ml_collections.ConfigDict:
    """``config`` with each ``"a.b=value"`` applied (a copy; lists are comma-separated)."""
    for assignment in assignments:
        field, sep, text = assignment.partition("=")
        if not sep:
            raise ValueError(f"--set expects FIELD=VALUE, got {assignment!r}")
        current = _field(config, field)
        if isinstance(current, ml_collections.ConfigDict):
            raise ValueError(f"--set {field}: {field} is a group of fields; set one of "
                             f"{', '.join(sorted(current))}")
        config = replace(config, {field: _parse(text, current, field)})
    return ml_collections.ConfigDict(config.to_dict())


def _field(config: ml_collections.ConfigDict, field: str):
    """The value at dotted ``field``; unknown fields are named with the closest ones."""
    *parents, name = field.split(".")
    node = config
    for i, part in enumerate(parents):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise KeyError(_unknown(".".join(parents[:i + 1]), part, node))
        node = node[part]
    if name not in node:
        raise KeyError(_unknown(field, name, node))
    return node[name]


def replace(config: ml_collections.ConfigDict, fields: Mapping[str, Any]
            ) -> ml_collections.ConfigDict:
    """``config`` with ``{"a.b": value}`` set (a copy; Python values, for code, where
    :func:`override` parses the command line's text). Unknown fields are refused."""
    config = ml_collections.ConfigDict(config.to_dict())
    for field, value in fields.items():
        _field(config, field)
        *parents, name = field.split(".")
        node = config
        for part in parents:
            node = node[part]
        with node.unlocked():
            node[name] = value
    return config


def _unknown(field: str, name: str, node) -> str:
    close = difflib.get_close_matches(name, list(node.keys()), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"--set: unknown config field {field!r}{hint} (fields here: {', '.join(sorted(node))})"


def save(config: ml_collections.ConfigDict, out_dir: str) -> str:
    """Writes ``config.json`` in ``out_dir`` (``--config`` reads it back); returns its path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "config.json")
    with open(path, "w") as f:
        f.write(config.to_json(indent=1) + "\n")
    return path


def grid_schedule(train: Mapping[str, Any]) -> dict[str, Any]:
    """The ``seeds``, ``epochs`` and ``batch_size`` of ``jaxreg.train.grid`` from a config's
    ``train`` group (``train.grid(..., **grid_schedule(config.train))``), so that every
    experiment reads them under the same field names."""
    missing = [f for f in ("seeds", "epochs", "batch_size") if f not in train]
    if missing:
        raise KeyError(f"the config's train group has no {', '.join(missing)}")
    return {"seeds": [int(s) for s in train["seeds"]], "epochs": int(train["epochs"]),
            "batch_size": int(train["batch_size"])}
