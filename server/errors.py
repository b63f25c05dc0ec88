"""Typed domain errors. The gRPC layer maps each class to one status code, in one place."""

from __future__ import annotations


class LatentguardError(Exception):
    """Base of every error a caller may see."""


class InvalidArgument(LatentguardError):
    pass


class NotFound(LatentguardError):
    pass


class ResourceExhausted(LatentguardError):
    pass


class Unavailable(LatentguardError):
    pass


class DeadlineExceeded(LatentguardError):
    pass


class ModelLoadError(LatentguardError):
    """A deployment's model could not be loaded (missing folder, no network for a hub id, ...)."""
