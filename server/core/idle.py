"""Waiting for the server to be idle: background model work (shadow runs, canaries) starts only once
no primary request is admitted anywhere, so that it never delays one by more than a denoising step."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

IDLE_POLL = 0.05  # seconds


async def until_idle(primary_busy: Callable[[], bool], max_wait: float, closing: Callable[[], bool]) -> bool:
    """True once `primary_busy()` is false (checked every IDLE_POLL seconds, from IDLE_POLL on, since
    a client's next request usually follows its answer within milliseconds); False when that takes
    over `max_wait` seconds or `closing()` (draining)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_wait
    await asyncio.sleep(IDLE_POLL)
    while primary_busy():
        if closing() or loop.time() >= deadline:
            return False
        await asyncio.sleep(IDLE_POLL)
    return not closing()
