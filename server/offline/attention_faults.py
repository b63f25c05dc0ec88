"""Attention faults for the evaluation and the tests: model faults no drill injects and nothing was
trained or calibrated on, applied with forward hooks on every joint-attention block (any variant,
quantized included), removed on exit.

- `text_key_scale` (strength s > 1): the text keys of every joint block scaled by s, as a fine-tune that
  sharpened cross-attention or an overflowing QK product would: image queries attend to a few prompt
  tokens (attention collapse; the low tail of attention_entropy).
- `prompt_fade` (strength s in (0, 1]): the prompt embedding that enters the transformer scaled by
  1 - s, as a broken text encoder or an adapter that drowns the prompt: attention spreads over the
  text (the high tail) and the picture stops following the prompt.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from latentguard.server.pipelines.deployments import Deployment

KINDS = ("text_key_scale", "prompt_fade")


@contextmanager
def attention_fault(dep: Deployment, kind: str, strength: float) -> Iterator[None]:
    transformer = dep.pipe.transformer
    if kind == "text_key_scale":
        # after the QK norm where the block has one (FLUX, SD3.5), which would undo the scale
        attns = [block.attn for block in transformer.transformer_blocks]
        modules = [a.norm_added_k if a.norm_added_k is not None else a.add_k_proj for a in attns]
        factor = strength
    elif kind == "prompt_fade":
        modules, factor = [transformer.context_embedder], 1.0 - strength
    else:
        raise ValueError(f"unknown attention fault {kind!r}; known: {KINDS}")

    def scale(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        return output * factor

    handles = [m.register_forward_hook(scale) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
