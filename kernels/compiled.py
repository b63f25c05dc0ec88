"""The torch path's epilogue compiled by inductor's C++ backend: optional, compiled ahead of use.

Everything `trajectory_stats_torch` does after its rfft2 (`stats_epilogue`: about thirty passes
over the planes and their spectrum in eager mode) fuses into a few loops: at two threads the
statistics take 1.2-2x less time; at one thread (Inspect's) no less (docs/benchmarks.md).
Compiling takes tens of seconds per plane size, so nothing compiles while a request waits:
`warm_up_compiled(H, W)` compiles for planes of that size (any batch) at the calling thread's torch
thread count, and `epilogue` uses the compiled code only where it was warmed up; everywhere else,
and wherever compiling or running it fails (no C++ compiler, say: logged once, listed by
`dispatch.fallbacks()`), it runs `stats_epilogue` eagerly, the tested reference. The thread count
is part of the key because inductor builds it into the code: side threads that run torch with one
OpenMP thread (server/core/threads.py) get code without an OpenMP team of its own.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch

from latentguard.kernels.torch_stats import spectrum_geometry, stats_epilogue

log = logging.getLogger(__name__)
#: (torch threads, H, W, with_change) -> the compiled epilogue for float32 CPU planes of that size
_READY: dict[tuple[int, int, int, bool], Callable[..., tuple[torch.Tensor, ...]]] = {}
#: why compiled code is not used (reason -> "eager"), for dispatch.fallbacks()
FAILED: dict[str, str] = {}


@functools.cache
def _compiler(threads: int) -> Callable[..., tuple[torch.Tensor, ...]]:
    return torch.compile(stats_epilogue, options={"cpp.threads": threads})


def _fail(reason: str, exc: BaseException) -> None:
    if reason not in FAILED:
        FAILED[reason] = "eager"
        log.error(
            "trajectory_stats: %s (%s: %s); using the eager torch path", reason, type(exc).__name__, exc
        )


def warm_up_compiled(h: int, w: int) -> bool:
    """Compile (or load from inductor's on-disk cache) the epilogue for CPU planes of H x W at this
    thread's torch thread count, with and without a change half. False where it cannot (logged)."""
    threads = torch.get_num_threads()
    compiled = _compiler(threads)
    geometry = spectrum_geometry(h, w, "cpu")
    try:
        # the batch is dynamic (any B x C); H and W stay static even after another size compiled
        # (dynamo would otherwise make them symbolic, and the code generic and slower)
        with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
            for with_change in (False, True):
                planes = torch.randn(4 if with_change else 2, h, w)
                spectrum = torch.view_as_real(torch.fft.rfft2(planes))
                torch._dynamo.mark_dynamic(planes, 0)
                torch._dynamo.mark_dynamic(spectrum, 0)
                compiled(planes, spectrum, with_change, *geometry)
                _READY[(threads, h, w, with_change)] = compiled
    except Exception as exc:  # no C++ compiler, an inductor error: serve on, eagerly
        _fail(f"the compiled torch path failed to build for {h}x{w} at {threads} threads", exc)
        return False
    log.info("trajectory_stats: compiled torch path ready for %dx%d at %d threads", h, w, threads)
    return True


def epilogue(
    planes: torch.Tensor, spectrum: torch.Tensor, with_change: bool, *geometry: object
) -> tuple[torch.Tensor, ...]:
    """`stats_epilogue`, compiled where `warm_up_compiled` built it for these planes and this thread."""
    if _READY and planes.device.type == "cpu":
        key = (torch.get_num_threads(), planes.shape[-2], planes.shape[-1], with_change)
        compiled = _READY.get(key)
        if compiled is not None:
            try:
                return compiled(planes, spectrum, with_change, *geometry)
            except Exception as exc:  # never fail a request over the faster path
                _READY.pop(key, None)
                _fail(f"the compiled torch path failed for {key[1]}x{key[2]} at {key[0]} threads", exc)
    return stats_epilogue(planes, spectrum, with_change, *geometry)


def reset() -> None:
    """Forget every compiled epilogue (tests)."""
    _READY.clear()
    FAILED.clear()
