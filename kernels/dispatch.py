"""The one place where a backend for `trajectory_stats` is chosen."""

from __future__ import annotations

import importlib.util
import os
from typing import Literal

import torch

from latentguard.kernels.packing import PackedInt4
from latentguard.kernels.reference import trajectory_stats_reference
from latentguard.kernels.stats import TrajectoryStats

Backend = Literal["auto", "triton", "reference"]


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here."""


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_available(device: torch.device) -> bool:
    """CUDA tensors with Triton installed, or any tensor under the Triton interpreter (tests)."""
    if not _triton_installed():
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    return device.type == "cuda" and torch.cuda.is_available()


def resolve_backend(backend: Backend, device: torch.device) -> Literal["triton", "reference"]:
    if backend == "reference":
        return "reference"
    if backend == "triton":
        if not triton_available(device):
            raise BackendUnavailableError(
                f"backend='triton' requested but no Triton kernel can run on {device} "
                "(needs a CUDA device with triton installed, or TRITON_INTERPRET=1)"
            )
        return "triton"
    if backend != "auto":
        raise ValueError(f"unknown backend {backend!r}; expected 'auto', 'triton' or 'reference'")
    # the interpreter is for tests: 'auto' never picks it for CPU tensors
    return "triton" if device.type == "cuda" and triton_available(device) else "reference"


def trajectory_stats(latents: torch.Tensor | PackedInt4, backend: Backend = "auto") -> TrajectoryStats:
    """Per-(batch, channel) statistics of a [B, C, H, W] tensor (or PackedInt4) in one pass.

    See TrajectoryStats for the fields. 'auto' runs the fused Triton kernel on CUDA and the fast
    torch path elsewhere; both follow the definitions in naive.py.
    """
    if resolve_backend(backend, latents.device) == "triton":
        from latentguard.kernels.triton_stats import trajectory_stats_triton  # imports triton

        return trajectory_stats_triton(latents)
    return trajectory_stats_reference(latents)
