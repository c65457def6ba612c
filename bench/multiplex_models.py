"""bench/multiplex.py's two models: their shapes (the big one's settable, `--big`), their checkpoints and the cost
table this engine measures for them (`muxserve profile`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MODELS = {  # name -> tiny-checkpoint shape (head_dim 64 both, so they can share one pool)
    "big": dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=8, intermediate_size=1408, seed=1),
    "small": dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=4, intermediate_size=704, seed=2),
}
SHAPE_KEYS = {"hidden_size": "hidden_size", "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
              "num_kv_heads": "num_key_value_heads", "intermediate_size": "intermediate_size"}  # -> config.json


def model_shapes(big: str = "") -> dict[str, dict]:
    """MODELS, with `big` ("KEY=VALUE,...", keys of SHAPE_KEYS) over the big model's shape."""
    shapes = {name: dict(shape) for name, shape in MODELS.items()}
    for item in filter(None, (x.strip() for x in big.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in SHAPE_KEYS or not value.isdigit():
            raise SystemExit(f"--big {item!r}: expected KEY=INTEGER with KEY one of {', '.join(SHAPE_KEYS)}")
        shapes["big"][key] = int(value)
    return shapes


def prepare_models(work: Path, cost: Path | None, shapes: dict[str, dict] = MODELS) -> Path:
    """Write the checkpoints (once) and measure their cost table with this engine (muxserve profile). A work
    folder that already holds a checkpoint of another shape is refused (its cost table is that model's)."""
    from muxserve.tiny import write_tiny_checkpoint

    for name, shape in shapes.items():
        found = work / name / "config.json"
        if not found.exists():
            write_tiny_checkpoint(work / name, "llama", **shape)
        elif any(json.loads(found.read_text())[k] != shape[s] for s, k in SHAPE_KEYS.items()):
            raise SystemExit(f"{work / name} holds another shape than {shape}: use a new --work folder")
    if cost is not None:
        return cost
    cost = work / "cost.json"
    if not cost.exists():
        for name in MODELS:
            subprocess.run([sys.executable, "-m", "muxserve.cli", "profile", "--model", str(work / name),
                            "--name", name, "--out", str(cost), "--devices", "1,2", "--shares", "50,100",
                            "--batches", "1,4,8", "--seqs", "32,64,128,256", "--reps", "2"], check=True)
    return cost
