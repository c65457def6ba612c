"""`muxserve config`: print every key of the mesh config with its default and meaning, as YAML.

    muxserve config --print-defaults          the whole default config (loads back as it is)
    muxserve config --check FILE              validate FILE (exit 2 with one line when it is wrong)

The text comes from muxserve/settings.py: each key's default is its value, its description a comment.
"""

from __future__ import annotations

import argparse
import typing

import yaml
from pydantic import BaseModel

from muxserve.settings import ENGINE_DOCS, Engine, MeshSettings

EXAMPLE_MODELS = [{"name": "tiny-llama", "path": "models/tiny-llama", "rate": 1.0}]


def _scalar(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _model_class(annotation):
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    cls = args[0]
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _lines(model: type[BaseModel], indent: int) -> list[str]:
    out, pad = [], "  " * indent
    for name, f in model.model_fields.items():
        doc = f.description or (ENGINE_DOCS.get(name, "") if model is Engine else "")
        nested = _model_class(f.annotation)
        if nested is not None and not f.is_required() and f.default_factory is not None:
            out.append(f"{pad}{name}:" + (f"  # {doc}" if doc else ""))
            out.extend(_lines(nested, indent + 1))
            continue
        if name == "models" and model is MeshSettings:
            value = EXAMPLE_MODELS
        else:
            value = f.get_default(call_default_factory=True)
        value = value.model_dump() if isinstance(value, BaseModel) else value
        out.append(f"{pad}{name}: {_scalar(value)}" + (f"  # {doc}" if doc else ""))
    return out


def defaults_yaml() -> str:
    """The whole default config as commented YAML (models: one example entry, the only required key)."""
    head = ["# muxserve mesh config: every key with its default (muxserve/settings.py).",
            "# Environment: MUXSERVE_<SECTION>__<KEY>=value overrides any key (muxserve/config.py)."]
    return "\n".join(head + _lines(MeshSettings, 0)) + "\n"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="muxserve config", description="the mesh config's keys and defaults")
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--print-defaults", action="store_true", help="print every key with its default as YAML")
    group.add_argument("--check", metavar="FILE", help="validate FILE (and the MUXSERVE_* environment)")
    args = ap.parse_args(argv)
    if args.print_defaults:
        print(defaults_yaml(), end="")
        return 0
    from muxserve import config

    config.load(args.check)
    print(f"{args.check}: OK")
    return 0
