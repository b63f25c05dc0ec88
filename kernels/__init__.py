"""Per-step trajectory statistics: fused Triton kernel, fast torch path, and the one dispatch point.

Imports nothing from the rest of latentguard.
"""

if __name__ != "latentguard.kernels":  # a plain `import kernels` found this folder, not Hugging Face's
    raise ImportError(
        f"{__file__} is latentguard's kernels package (latentguard.kernels), found by `import {__name__}` "
        "because the repository root is on sys.path. Hugging Face's `kernels` package has the same name "
        "and transformers / diffusers import it: run Python with -P (python -P -m ...), from outside the "
        "repository, or through the `latentguard` command."
    )

from latentguard.kernels.dispatch import Backend, BackendUnavailableError, resolve_backend, trajectory_stats
from latentguard.kernels.packing import PackedInt4, pack_int4, unpack_int4
from latentguard.kernels.stats import HF_CUTOFF, RADIAL_BINS, TrajectoryStats

__all__ = [
    "HF_CUTOFF",
    "RADIAL_BINS",
    "Backend",
    "BackendUnavailableError",
    "PackedInt4",
    "TrajectoryStats",
    "pack_int4",
    "resolve_backend",
    "trajectory_stats",
    "unpack_int4",
]
