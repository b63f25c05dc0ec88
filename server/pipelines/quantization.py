"""Quantized variants of a deployment's denoiser (the transformer; text encoders and VAE stay shared).

    fp8   weights in float8 e4m3 with per-channel scales    optimum-quanto qfloat8  (CPU and CUDA)
    int4  weights in int4 with per-group scales             optimum-quanto qint4    (CPU and CUDA)
    nf4   bitsandbytes NF4 through diffusers' PipelineQuantizationConfig at load time (CUDA only,
          model folders and hub ids; see deployments.load_pipeline)

Activations stay in the compute dtype: fp32 on CPU, bf16 on CUDA. diffusers marks its own quanto
backend deprecated, so quanto is applied to the loaded module directly, which is also what lets
several variants share one loaded text stack and VAE.
"""

from __future__ import annotations

import torch

QUANTIZED = ("fp8", "int4", "nf4")
FLOAT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def compute_dtype(variant: str, device: str) -> torch.dtype:
    if variant in FLOAT_DTYPES:
        return FLOAT_DTYPES[variant]
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def quantize_transformer(transformer: torch.nn.Module, variant: str) -> torch.nn.Module:
    """Quantize the weights of `transformer` in place (fp8 | int4) and freeze them."""
    from optimum.quanto import freeze, qfloat8, qint4, quantize

    weights = {"fp8": qfloat8, "int4": qint4}[variant]
    quantize(transformer, weights=weights)
    freeze(transformer)
    return transformer


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of the module's stored state (quantized weights, scales and all)."""
    return sum(t.untyped_storage().nbytes() for t in module.state_dict().values())
