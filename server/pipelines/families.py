"""What differs between SD3 and FLUX.1 pipelines, in one small table of functions.

The monitor always sees latents as [B, C, H, W]; FLUX carries them packed as
[B, (H/2)(W/2), 4C] and is unpacked/packed here with the pipeline's own helpers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline

# diffusers pipelines expose their components dynamically; typing them as Any is the honest choice.
Pipeline = Any


@dataclass(frozen=True)
class FamilyOps:
    name: str
    pipeline_class: Any  # the diffusers pipeline class

    def size_multiple(self, pipe: Pipeline) -> int:
        """Width and height must be multiples of this: the VAE's factor times the transformer's patch
        (SD3's patch_size, which the pipeline reads from its transformer; FLUX packs 2 x 2)."""
        patch = 2 if self.name == "flux" else int(pipe.patch_size)
        return int(pipe.vae_scale_factor) * patch

    def latent_shape(self, pipe: Pipeline, batch: int, height: int, width: int) -> tuple[int, ...]:
        f = int(pipe.vae_scale_factor)
        return (batch, int(pipe.vae.config.latent_channels), height // f, width // f)

    def to_pipeline(self, latents: torch.Tensor) -> torch.Tensor:
        if self.name == "flux":
            b, c, h, w = latents.shape
            return FluxPipeline._pack_latents(latents, b, c, h, w)
        return latents

    def from_pipeline(self, latents: torch.Tensor, pipe: Pipeline, height: int, width: int) -> torch.Tensor:
        """[B, C, H, W] from the pipeline's layout (latents already [B, C, H, W] are returned as they are)."""
        if self.name == "flux" and latents.ndim == 3:
            return FluxPipeline._unpack_latents(latents, height, width, pipe.vae_scale_factor)
        return latents

    def decode(self, pipe: Pipeline, latents: torch.Tensor) -> list:
        """[B, C, H, W] latents to PIL images, as the pipeline itself would."""
        latents = latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        with torch.inference_mode():
            image = pipe.vae.decode(latents, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil")

    @staticmethod
    def interrupt(pipe: Pipeline) -> None:
        """Skip the remaining denoising steps (the one place that touches the private flag)."""
        pipe._interrupt = True


FAMILIES = {
    "sd3": FamilyOps("sd3", StableDiffusion3Pipeline),
    "flux": FamilyOps("flux", FluxPipeline),
}


def family_of(pipe: Pipeline) -> FamilyOps:
    """The family of a diffusers pipeline object (a subclass counts as its family)."""
    for ops in FAMILIES.values():
        if isinstance(pipe, ops.pipeline_class):
            return ops
    raise ValueError(f"{type(pipe).__name__} is neither an SD3 nor a FLUX.1 pipeline")
