"""Ahead-of-time check of the Triton kernel for the GPUs we target, on a machine without one.

Triton ships ptxas, so `triton.compile` builds the cubin for any NVIDIA architecture here. For each
(architecture, latent size, input dtype) this compiles `_trajectory_stats_kernel` exactly as a launch
would (same constants and warps), reads its shared memory from the compiled metadata and its
registers and spills from `ptxas -v`, and checks them against the architecture's per-block limits.
A kernel over a limit would fail to launch on that GPU (dispatch.py then falls back to the torch
path); this check is what keeps that from happening on the GPUs below.

    python -m latentguard.kernels.aot                  # the whole grid, a table, exit 1 on a failure
    python -m latentguard.kernels.aot --arch 90 --size 128 --dtype bf16
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource

from latentguard.kernels import triton_stats
from latentguard.kernels.stats import interpreted

#: (name, max dynamic shared memory per block in bytes (opt-in), registers per SM) per compute capability
ARCHS: dict[int, tuple[str, int, int]] = {
    80: ("A100", 166_912, 65_536),
    86: ("A10 / RTX 30", 101_376, 65_536),
    89: ("L4 / L40S / RTX 40", 101_376, 65_536),
    90: ("H100 / H200", 232_448, 65_536),
}
#: latent side lengths: SD3/FLUX at 512, 768 and 1024 pixels
SIZES = (64, 96, 128)
DTYPES = triton_stats.INPUT_KINDS
_TRITON_TYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_TRITON_TYPE |= {torch.float8_e4m3fn: "u8", torch.float8_e5m2: "u8"}  # read as bytes, decoded in the kernel
_MAX_REGISTERS = 255


@dataclass(frozen=True)
class Report:
    arch: int
    size: int
    dtype: str
    shared_bytes: int
    registers: int
    spill_bytes: int
    shared_limit: int
    threads: int

    @property
    def fits(self) -> bool:
        return self.shared_bytes <= self.shared_limit and self.registers * self.threads <= ARCHS[self.arch][2]

    def row(self) -> str:
        verdict = "ok" if self.fits else "OVER LIMIT"
        return (
            f"sm_{self.arch:<3} {self.size:>4}x{self.size:<4} {self.dtype:<9} "
            f"shared {self.shared_bytes:>7} / {self.shared_limit:>7} B  "
            f"registers {self.registers:>3}  spills {self.spill_bytes:>5} B  {verdict}"
        )


def _signature(dtype: torch.dtype | None) -> dict[str, str]:
    kernel = triton_stats._trajectory_stats_kernel
    data = "u8" if dtype is None else _TRITON_TYPE[dtype]
    types = {"x_ptr": f"*{data}", "scale_ptr": "*fp16"}
    return {n: types.get(n, "*fp32") if n.endswith("_ptr") else "i32" for n in kernel.arg_names}


def _ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    """(registers per thread, spill store + load bytes) from `ptxas -v` on the kernel's PTX."""
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        log = subprocess.run(
            [
                get_ptxas(arch).path,
                "-v",
                f"--gpu-name={gpu}",
                str(src),
                "-o",
                str(Path(tmp) / "kernel.cubin"),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    registers = int(re.search(r"Used (\d+) registers", log).group(1))  # type: ignore[union-attr]
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", log))
    return registers, spills


def check(arch: int, size: int, dtype: str) -> Report:
    """Compile the kernel for one (architecture, latent side, input dtype) and measure it."""
    torch_dtype = DTYPES[dtype]
    kernel = triton_stats._trajectory_stats_kernel
    constants = triton_stats.launch_constants(size, size, torch_dtype, group=64)  # pack_int4's default
    constants["PRECISION"] = "tf32x3"  # what a CUDA launch uses, also when this runs under the interpreter
    signature = _signature(torch_dtype) | {name: "constexpr" for name in constants}
    source = ASTSource(
        kernel, signature, constexprs={(kernel.arg_names.index(n),): v for n, v in constants.items()}
    )
    compiled = triton.compile(
        source, target=GPUTarget("cuda", arch, 32), options={"num_warps": triton_stats.NUM_WARPS}
    )
    registers, spills = _ptxas_usage(compiled.asm["ptx"], arch)
    return Report(
        arch=arch,
        size=size,
        dtype=dtype,
        shared_bytes=compiled.metadata.shared,
        registers=registers,
        spill_bytes=spills,
        shared_limit=ARCHS[arch][1],
        threads=32 * triton_stats.NUM_WARPS,
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, action="append", choices=sorted(ARCHS))
    parser.add_argument("--size", type=int, action="append")
    parser.add_argument("--dtype", action="append", choices=sorted(DTYPES))
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="compiles in parallel")
    args = parser.parse_args(argv)
    if interpreted():
        parser.error("TRITON_INTERPRET=1 runs kernels on the CPU and cannot compile them: unset it")
    grid = [(a, s, d) for a in args.arch or ARCHS for s in args.size or SIZES for d in args.dtype or DTYPES]
    failed = 0
    with ProcessPoolExecutor(args.jobs) as pool:  # each compile runs on one core
        for report in pool.map(check, *zip(*grid, strict=True)):
            print(report.row(), flush=True)
            failed += not report.fits
    print(f"{failed} over a limit" if failed else "every kernel fits its architecture")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
