"""benchmarks/gpu_check.py cannot rot before the day a GPU is lent: its smoke mode runs every section
on this CPU (the kernel in the Triton interpreter) and each section either measured or says why not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = [
    "device",
    "kernel_correctness",
    "launches_per_step",
    "kernel_vs_bandwidth_floor",
    "guard_overhead",
    "side_stream_overlap",
    "batching",
    "inspect",
    "canary_tolerance",
    "quantized",
]


def test_the_smoke_run_fills_every_section(tmp_path):
    out = tmp_path / "r.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the script sets it itself
    result = subprocess.run(
        [sys.executable, "-P", "benchmarks/gpu_check.py", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [k for k in report if k != "mode"] == SECTIONS
    assert not [k for k, v in report.items() if "error" in v], report
    assert report["kernel_correctness"]["failed"] == 0 and report["kernel_correctness"]["cases"] == 6
    assert report["side_stream_overlap"]["skipped"].startswith("skipped: no CUDA")
    assert report["guard_overhead"]["sd3"]["guard_overhead_pct"] > 0
    flux = report["guard_overhead"]["flux"]  # full depth: one block + (depth - 1) x the second's cost,
    per_block = max(flux["step_ms_depth2"] - flux["step_ms_depth1"], 0.0)  # 0 below a loaded CPU's noise
    assert flux["full_depth_step_ms"] == pytest.approx(flux["step_ms_depth1"] + (19 + 38 / 2 - 1) * per_block)
    assert report["canary_tolerance"]["within_tolerance"] is True
    assert report["inspect"]["steps"] == 8 and report["inspect"]["p99_ms"] >= report["inspect"]["p50_ms"]
    for variant in ("fp8", "4bit"):
        q = report["quantized"][variant]
        assert 0 < q["x0_rel_l2_vs_base"] < 0.5 and q["stats_finite"], q
    assert (tmp_path / "r.md").read_text().startswith("# GPU check:")
