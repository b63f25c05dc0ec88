"""Run a latentguard `Server` on its own event-loop thread (embedding, tests, benchmarks)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from latentguard.server.config import Settings
from latentguard.server.rpc.server import Server

T = TypeVar("T")


class BackgroundServer:
    def __init__(self, settings: Settings):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="latentguard-loop", daemon=True)
        self.thread.start()
        self.server: Server = self.call(self._make(settings))
        self.target = f"{settings.host}:{self.server.port}"

    @staticmethod
    async def _make(settings: Settings) -> Server:
        return Server(settings)  # grpc.aio objects must be created on their loop

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 300) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, warm: bool = True) -> BackgroundServer:
        self.call(self.server.start())
        if warm:
            self.call(self.server.warm())
        return self

    def stop(self, grace: float = 5) -> None:
        self.call(self.server.stop(grace=grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
