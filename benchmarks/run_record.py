"""Where a benchmark ran and how its results are kept: one CSV row per run, with device, commit, date."""

from __future__ import annotations

import csv
import datetime
import platform
import subprocess
from pathlib import Path

import torch


def device_name(device: str | None = None) -> str:
    """The GPU's name when `device` is a CUDA device (default: when CUDA is present), else the CPU's."""
    on_gpu = torch.cuda.is_available() if device is None else device.startswith("cuda")
    return (
        torch.cuda.get_device_name()
        if on_gpu
        else f"cpu ({platform.processor() or 'x86_64'}, {torch.get_num_threads()} threads)"
    )


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def append_row(path: Path, results: dict[str, float | str], device: str | None = None) -> None:
    row = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "device": device_name(device),
        **{k: f"{v:.4f}" if isinstance(v, float) else v for k, v in results.items()},
    }
    rows = list(csv.DictReader(path.open())) if path.exists() else []
    fields = list(dict.fromkeys(k for r in [*rows, row] for k in r))
    with path.open("w", newline="") as f:  # columns grow as benchmarks do; old rows keep theirs
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows([*rows, row])
    print(f"appended to {path}")
