"""Per-step trajectory statistics: torch reference (runtime fallback) and backend dispatch.

Imports nothing from the rest of latentguard.
"""

from latentguard.kernels.dispatch import Backend, BackendUnavailableError, resolve_backend, trajectory_stats
from latentguard.kernels.stats import HF_CUTOFF, RADIAL_BINS, TrajectoryStats

__all__ = [
    "HF_CUTOFF",
    "RADIAL_BINS",
    "Backend",
    "BackendUnavailableError",
    "TrajectoryStats",
    "resolve_backend",
    "trajectory_stats",
]
