"""The one place where a backend for `trajectory_stats` is chosen."""

from __future__ import annotations

import logging
import os
from typing import Literal

import torch

from latentguard.kernels.reference import trajectory_stats_reference
from latentguard.kernels.stats import TrajectoryStats

Backend = Literal["auto", "triton", "reference"]
log = logging.getLogger(__name__)


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here."""


def triton_available(device: torch.device) -> bool:
    if os.environ.get("TRITON_INTERPRET") == "1":
        return _has_triton_kernel()
    return device.type == "cuda" and torch.cuda.is_available() and _has_triton_kernel()


def _has_triton_kernel() -> bool:
    # The fused kernel is its own issue; until it lands the Triton backend is unavailable everywhere.
    return False


def resolve_backend(backend: Backend, device: torch.device) -> Literal["triton", "reference"]:
    if backend == "reference":
        return "reference"
    if backend == "triton":
        if not triton_available(device):
            raise BackendUnavailableError(
                f"backend='triton' requested but no Triton kernel can run on {device} "
                "(needs CUDA with triton, or TRITON_INTERPRET=1)"
            )
        return "triton"
    if backend != "auto":
        raise ValueError(f"unknown backend {backend!r}; expected 'auto', 'triton' or 'reference'")
    return "triton" if triton_available(device) else "reference"


def trajectory_stats(latents: torch.Tensor, backend: Backend = "auto") -> TrajectoryStats:
    """Per-(batch, channel) statistics of a [B, C, H, W] tensor in one pass; see TrajectoryStats."""
    chosen = resolve_backend(backend, latents.device)
    if chosen == "triton":  # pragma: no cover - lands with the fused-kernel issue
        raise BackendUnavailableError("Triton kernel not built")
    return trajectory_stats_reference(latents)
