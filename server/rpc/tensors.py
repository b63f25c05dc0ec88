"""Tensors on the wire (Inspect frames, returned trajectories): raw little-endian bytes + dtype + shape.

One encoder and one validating decoder, shared by the client and the server. A decoded tensor is a
read-only view of the message's bytes (no copy): whatever reads it must not write into it.
"""

from __future__ import annotations

import math
import warnings

import torch

from latentguard.server.errors import InvalidArgument

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
NAMES = {v: k for k, v in DTYPES.items()}


def encode(t: torch.Tensor) -> tuple[bytes, str, list[int]]:
    """(bytes, dtype name, shape); dtypes other than fp32/fp16/bf16 are sent as float32."""
    t = t.detach().contiguous().cpu()
    if t.dtype not in NAMES:
        t = t.float()
    raw = t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
    return raw, NAMES[t.dtype], list(t.shape)


def decode(data: bytes, dtype: str, shape: list[int], ndim: int = 4) -> torch.Tensor:
    if dtype not in DTYPES:
        raise InvalidArgument(f"unsupported latents dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    if len(shape) != ndim or any(s <= 0 for s in shape):
        raise InvalidArgument(f"latents shape must be [B, C, H, W] with positive sizes, got {list(shape)}")
    tdtype = DTYPES[dtype]
    expected = math.prod(shape) * torch.empty((), dtype=tdtype).element_size()
    if len(data) != expected:
        raise InvalidArgument(f"latents have {len(data)} bytes; {dtype} {list(shape)} needs {expected}")
    with warnings.catch_warnings():  # the message's bytes are read-only: nothing writes into them
        warnings.filterwarnings("ignore", "The given buffer is not writable", UserWarning)
        return torch.frombuffer(data, dtype=tdtype).reshape(shape)  # no copy: a view of the message
