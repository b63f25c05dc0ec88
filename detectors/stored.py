"""Reference files (drift references, canaries): named numpy arrays in a safetensors file, with a
JSON header that names the file's kind, so that one kind is never read as another."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file


def save_arrays(path: str | Path, kind: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    header = json.dumps({"format": kind, **meta})
    save_file(
        {k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path), metadata={"latentguard": header}
    )


def load_arrays(path: str | Path, kind: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(meta, arrays) of a file written by `save_arrays` with the same kind (ValueError otherwise)."""
    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads((f.metadata() or {}).get("latentguard", "{}"))
    if meta.pop("format", None) != kind:
        raise ValueError(f"{path}: not a {kind} file")
    return meta, load_file(str(path))
