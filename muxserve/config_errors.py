"""Config errors as one line: the dotted key, what was expected, and for a typo the closest valid key.

    unknown key `worker.engine.blok_size` (did you mean `worker.engine.block_size`?)
    `router.port`: Input should be a valid integer, unable to parse string as an integer (got 'abc')
"""

from __future__ import annotations

import difflib
import types
import typing

from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """The config is malformed; the message (one line) names the key."""


def dotted(loc: tuple) -> str:
    """('models', 0, 'name') -> 'models[0].name'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _unwrap(ann):
    """The model (or container) type inside Optional[...] / Annotated[...]."""
    while typing.get_origin(ann) in (typing.Union, types.UnionType, typing.Annotated):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        ann = args[0]
    return ann


def _descend(ann, part):
    ann = _unwrap(ann)
    origin = typing.get_origin(ann)
    if origin in (list, tuple):
        return typing.get_args(ann)[0]
    if origin is dict:
        return typing.get_args(ann)[1]
    if isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(part, str) and part in ann.model_fields:
        return ann.model_fields[part].annotation
    return None


def keys_at(root: type[BaseModel], loc: tuple) -> list[str]:
    """The valid keys of the section at `loc` (a pydantic error location without its last part)."""
    ann = root
    for part in loc:
        ann = _descend(ann, part)
        if ann is None:
            return []
    ann = _unwrap(ann)
    return list(ann.model_fields) if isinstance(ann, type) and issubclass(ann, BaseModel) else []


def closest(word: str, valid: list[str]) -> str | None:
    """The valid key `word` most likely meant: difflib's closest, else one it abbreviates (chunk ->
    chunk_token_blocks)."""
    close = difflib.get_close_matches(word, valid, n=1)
    if close:
        return close[0]
    return next((k for k in valid if k.startswith(word) or word in k.split("_")), None) if word else None


def _one(err: dict, root: type[BaseModel], prefix: tuple) -> str:
    loc = tuple(err["loc"])
    path = dotted(prefix + loc)
    if err["type"] == "extra_forbidden":
        valid = keys_at(root, loc[:-1])
        close = closest(str(loc[-1]), valid)
        parent = dotted(prefix + loc[:-1])
        if close:
            return f"unknown key `{path}` (did you mean `{parent + '.' if parent else ''}{close}`?)"
        return f"unknown key `{path}` (valid keys: {', '.join(valid)})"
    if err["type"] == "missing":
        return f"`{path}` is required"
    msg = err["msg"].removeprefix("Value error, ")
    if not path:
        return msg
    value = err.get("input")
    if isinstance(value, (dict, list)):
        return f"`{path}`: {msg}"
    got = repr(value)
    return f"`{path}`: {msg} (got {got if len(got) <= 60 else got[:57] + '...'})"


def describe(error: ValidationError, root: type[BaseModel], prefix: tuple = ()) -> str:
    """A ValidationError of `root` (validated at `prefix` within the mesh config) as one line."""
    parts = [_one(e, root, prefix) for e in error.errors()]
    return "; ".join(dict.fromkeys(parts)).replace("\n", " ")
