"""Synthetic LoRA adapters for a deployment's denoiser (drift evaluation, attribution tests): peft
adds rank-r adapters to the attention projections, B is drawn at random instead of peft's zeros, and
the weights are written in diffusers' LoRA layout, loadable by `DeploymentConfig.adapters`."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict

from latentguard.server.pipelines.deployments import Deployment

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # attention projections of SD3 and FLUX blocks


def random_lora(dep: Deployment, out: str | Path, rank: int = 4, std: float = 0.05, seed: int = 0) -> Path:
    """A rank-`rank` adapter whose delta B A has entries of about std * |A| (A: peft's init); returns
    the .safetensors path."""
    transformer = copy.deepcopy(dep.pipe.transformer)
    torch.manual_seed(seed)  # peft draws A from the global generator
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS))
    generator = torch.Generator().manual_seed(seed)
    layers = {
        k: torch.randn(v.shape, generator=generator, dtype=torch.float32).to(v.dtype) * std
        if "lora_B" in k
        else v
        for k, v in get_peft_model_state_dict(transformer).items()
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    type(dep.pipe).save_lora_weights(str(out), transformer_lora_layers=layers)
    return out / "pytorch_lora_weights.safetensors"
