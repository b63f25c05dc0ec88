"""Per-step trajectory statistics: fused Triton kernel, fast torch path, and the one dispatch point.

Imports nothing from the rest of latentguard.
"""

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
