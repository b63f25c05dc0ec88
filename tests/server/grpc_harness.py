"""Settings for a real latentguard gRPC server on loopback (ephemeral ports)."""

from __future__ import annotations

from latentguard.server.background import BackgroundServer as ServerThread
from latentguard.server.config import Settings, builtin_deployments

__all__ = ["ServerThread", "make_settings"]


def make_settings(**overrides) -> Settings:
    deployments = builtin_deployments()
    deployments[0] = deployments[0].model_copy(update={"max_queue": 1})
    return Settings(
        deployments=deployments, host="127.0.0.1", port=0, metrics_port=0, grace_seconds=20, **overrides
    )
