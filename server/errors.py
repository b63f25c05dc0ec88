"""Typed domain errors. The gRPC layer maps each class to one status code, in one place."""

from __future__ import annotations


class LatentguardError(Exception):
    """Base of every error a caller may see."""


class InvalidArgument(LatentguardError):
    pass


class NotFound(LatentguardError):
    @classmethod
    def deployment(cls, name: str, known: list[str]) -> NotFound:
        """The one message for an unknown deployment name, wherever it is looked up."""
        return cls(f"unknown deployment {name!r}; serving: {', '.join(known) or 'none'}")


class FailedPrecondition(LatentguardError):
    """The request is valid but the deployment is not set up for it (e.g. no canary reference)."""


class ResourceExhausted(LatentguardError):
    pass


class Unavailable(LatentguardError):
    pass


class DeadlineExceeded(LatentguardError):
    pass


class ModelLoadError(LatentguardError):
    """A deployment's model could not be loaded (missing folder, no network for a hub id, ...)."""
