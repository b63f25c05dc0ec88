"""The one place where a backend for `trajectory_stats` is chosen.

Backends: "triton" (the fused kernel, triton_stats.py) and "reference" (the fast torch path,
torch_stats.py; the name is the design contract's). "auto" picks Triton for CUDA tensors and the
torch path for everything else. Where "auto" would have picked Triton but cannot (a CUDA tensor
without triton installed, or a launch that fails: out of shared memory or registers on an
architecture the AOT check (aot.py) does not cover, a compiler error), it falls back to the torch path
for that input kind (dtype and padded plane size) from then on: said once in the log per reason, and
listed by `fallbacks()` (the server exports it as a gauge). An explicitly requested backend that
cannot run fails loudly instead.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from typing import Literal

import torch

from latentguard.kernels import compiled
from latentguard.kernels.packing import PackedInt4
from latentguard.kernels.stats import TrajectoryStats, check_shape, interpreted, padded_side
from latentguard.kernels.torch_stats import trajectory_stats_torch

Backend = Literal["auto", "triton", "reference"]
log = logging.getLogger(__name__)
_FALLBACKS: dict[str, str] = {}  # reason -> the backend used instead; grows once per reason


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here."""


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_available(device: torch.device) -> bool:
    """CUDA tensors with Triton installed, or any tensor under the Triton interpreter (tests)."""
    if not _triton_installed():
        return False
    if interpreted():
        return True
    return device.type == "cuda" and torch.cuda.is_available()


def fallbacks() -> dict[str, str]:
    """Why 'auto' ran another backend than the one it wanted, or the torch path ran eagerly where it
    was compiled to run (reason -> what ran instead), so far."""
    return _FALLBACKS | compiled.FAILED


def _fall_back(reason: str) -> Literal["reference"]:
    if reason not in _FALLBACKS:
        _FALLBACKS[reason] = "reference"
        log.warning("trajectory_stats: %s; using the torch path (backend 'reference') instead", reason)
    return "reference"


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
    if device.type != "cuda":  # the designed path off-GPU (the interpreter is for tests only)
        return "reference"
    if not triton_available(device):
        return _fall_back("triton is not installed for CUDA tensors")
    return "triton"


def kernel_key(latents: torch.Tensor | PackedInt4) -> str:
    """What one compiled kernel covers: device type, input dtype, plane size padded to powers of two."""
    dtype = "int4" if isinstance(latents, PackedInt4) else str(latents.dtype).removeprefix("torch.")
    h, w = (padded_side(n) for n in latents.shape[-2:])
    return f"{latents.device.type} {dtype} {h}x{w}"


def trajectory_stats(
    latents: torch.Tensor | PackedInt4,
    backend: Backend = "auto",
    previous: torch.Tensor | None = None,
) -> TrajectoryStats:
    """Per-(batch, channel) statistics of a [B, C, H, W] tensor (or PackedInt4) in one pass.

    See TrajectoryStats for the fields. Every backend follows the definitions in oracle.py.
    `previous` (same shape; the previous step's estimate) sets `change_flatness`, `change_crest` and
    `change_phase_contrast`, the high-band flatness, crest and phase contrasts of latents - previous:
    on the Triton path the batch is doubled to [latents, latents - previous] (float32) and goes
    through the same single launch; the torch path stacks the difference the same way (one rfft2)
    and keeps only those three. Without it, previous is 0 and they are x's own.
    """
    check_shape(tuple(latents.shape))
    if previous is None:
        return _backend_stats(latents, backend)
    if isinstance(latents, PackedInt4):
        raise TypeError("trajectory_stats: `previous` needs float latents, not PackedInt4")
    if previous.shape != latents.shape:
        raise ValueError(f"previous has shape {tuple(previous.shape)}, latents {tuple(latents.shape)}")
    if resolve_backend(backend, latents.device) == "reference":
        return trajectory_stats_torch(latents, previous.to(latents.device), compiled.epilogue)
    x = latents.float()
    both = _backend_stats(torch.cat([x, x - previous.to(x.device, torch.float32)]), backend)
    b = latents.shape[0]
    return dataclasses.replace(
        both.index(slice(0, b)),
        change_flatness=both.hf_flatness[b:],
        change_crest=both.crest[b:],
        change_phase_contrast=both.phase_contrast[b:],
    )


def _backend_stats(latents: torch.Tensor | PackedInt4, backend: Backend) -> TrajectoryStats:
    if resolve_backend(backend, latents.device) == "triton":
        from latentguard.kernels.triton_stats import trajectory_stats_triton  # imports triton

        if backend == "triton":
            return trajectory_stats_triton(latents)
        failed = f"the Triton kernel failed to launch for {kernel_key(latents)}"
        if failed not in _FALLBACKS:
            try:
                return trajectory_stats_triton(latents)
            except Exception as exc:  # out of resources, a compiler error: serve on, on the torch path
                log.error("trajectory_stats: %s: %s: %s", failed, type(exc).__name__, exc)
                _fall_back(failed)
    return trajectory_stats_torch(latents, epilogue=compiled.epilogue)


def warm_up(
    device: torch.device, channels: int, max_h: int, max_w: int, backend: Backend = "auto"
) -> list[str]:
    """Compile (or load from Triton's on-disk cache) every kernel a [B, channels, <=max_h, <=max_w]
    float32 input on `device` can need, so no request pays for a compile. Returns the kernel keys
    warmed on the Triton path (none where the backend resolves to the torch path, or under the
    interpreter, which compiles nothing)."""
    if resolve_backend(backend, device) != "triton" or interpreted():
        return []
    warmed = []
    for h in sorted({padded_side(n) for n in range(1, max_h + 1)}):
        for w in sorted({padded_side(n) for n in range(1, max_w + 1)}):
            x = torch.zeros(1, channels, h, w, device=device)
            trajectory_stats(x, backend)
            warmed.append(kernel_key(x))
            log.info("trajectory_stats: kernel ready for %s", warmed[-1])
    return warmed
