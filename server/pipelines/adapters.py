"""LoRA adapters on a deployment's denoiser: loaded with diffusers' `load_lora_weights` (peft
underneath), set to their configured scales, and switched off for attribution replays.

An adapted deployment gets a transformer of its own (adapters would otherwise reach every deployment
that shares the base model's weights)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from latentguard.server.config import AdapterConfig
from latentguard.server.errors import ModelLoadError
from latentguard.server.pipelines.families import Pipeline


def apply_adapters(pipe: Pipeline, adapters: list[AdapterConfig], deployment: str) -> None:
    for adapter in adapters:
        path = Path(adapter.path).expanduser()
        if not path.exists():
            raise ModelLoadError(f"{deployment}: adapter {adapter.name}: {path} does not exist")
        folder, weight_name = (path, None) if path.is_dir() else (path.parent, path.name)
        if weight_name is not None and not weight_name.endswith(".safetensors"):
            raise ModelLoadError(f"{deployment}: adapter {adapter.name}: weights load as .safetensors only")
        try:
            pipe.load_lora_weights(
                str(folder), weight_name=weight_name, adapter_name=adapter.name, use_safetensors=True
            )
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelLoadError(
                f"{deployment}: cannot load adapter {adapter.name} from {path}: {exc}"
            ) from exc
    if adapters:
        pipe.set_adapters([a.name for a in adapters], adapter_weights=[a.scale for a in adapters])


@contextmanager
def adapters_disabled(pipe: Pipeline) -> Iterator[None]:
    """The base model alone for the duration (the caller owns the pipeline: its worker thread)."""
    pipe.disable_lora()
    try:
        yield
    finally:
        pipe.enable_lora()
