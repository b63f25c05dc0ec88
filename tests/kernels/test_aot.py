"""The Triton kernel compiled here for the GPUs we target fits each one's per-block limits.

No GPU needed: triton ships ptxas (see kernels/aot.py). It runs in a subprocess because the test
session runs Triton in interpreter mode, which cannot compile. 96 x 96 latents pad to the 128 x 128
kernel (the grid prints both); `make kernels-aot` is the same grid.
"""

import os
import subprocess
import sys

import pytest
import triton  # noqa: F401  # `make test` installs it: missing, these tests fail, never skip

from latentguard.kernels import aot


@pytest.mark.slow  # about 70 s on a cold cache: `make test-slow` and `make kernels-aot`
def test_every_kernel_fits_every_target_architecture():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-P", "-W", "ignore", "-m", "latentguard.kernels.aot"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("sm_")]
    assert len(rows) == len(aot.ARCHS) * len(aot.SIZES) * len(aot.DTYPES)
    assert all(row.endswith(" ok") for row in rows)
    assert "every kernel fits its architecture" in run.stdout


def test_a_kernel_over_a_limit_is_reported():
    fits = aot.Report(arch=89, size=128, dtype="bf16", shared_bytes=36_864, registers=249, spill_bytes=0,
                      shared_limit=101_376, threads=128)  # fmt: skip
    assert fits.fits and fits.row().endswith(" ok")
    too_much_shared = aot.Report(**{**fits.__dict__, "shared_bytes": 131_072})  # the old whole-plane kernel
    assert not too_much_shared.fits and "OVER LIMIT" in too_much_shared.row()
    too_many_registers = aot.Report(**{**fits.__dict__, "threads": 512, "registers": 255})
    assert not too_many_registers.fits
