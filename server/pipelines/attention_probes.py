"""Attention probes (seed 000): on a few joint-attention blocks of the SD3 / FLUX.1 transformer, per
denoising step, the image-query -> text-key attention entropy and the effective rank of the block's
image-token output (kernels/attention.py); the detectors attention_entropy and attention_rank read
them from the step's TrajectoryStats.

A `ProbeProcessor` wraps the block's own attention processor (JointAttnProcessor2_0,
FluxAttnProcessor) and calls it unchanged, so the pipeline's output is exactly what it was. While it
runs, a TorchFunctionMode watches for the processor's call to scaled_dot_product_attention and keeps
its query and key: the probe reads what the model attended with (FLUX's rotary embedding and the QK
norms included) without re-implementing either processor. It records only on a thread that has
opened a `Recording` (the runner, around one pipeline call), so a transformer shared by several
deployments, or a run without probes, pays one thread-local lookup per probed block.

Attention backends that do not go through scaled_dot_product_attention (diffusers' `flex`, flash,
sage, xformers kernels) leave the probe blind. Then the step has no attention statistics, the log says
why once per block, and the attention detectors fail open with that reason in the report and in
`latentguard_detector_errors_total` (their on_error policy decides): never a silent nothing. Under
torch.compile the probed blocks' attention runs eagerly, so the probes keep recording.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from latentguard.kernels.attention import effective_rank, sample_rows, text_attention_entropy
from latentguard.server.pipelines.families import Pipeline

DEFAULT_BLOCKS = 4
_local = threading.local()
log = logging.getLogger(__name__)


def default_layers(blocks: int) -> list[int]:
    """Up to DEFAULT_BLOCKS joint-attention blocks spread evenly, the first and the last included."""
    if blocks <= DEFAULT_BLOCKS:
        return list(range(blocks))
    return sorted({round(i * (blocks - 1) / (DEFAULT_BLOCKS - 1)) for i in range(DEFAULT_BLOCKS)})


class Recording:
    """One pipeline call's probe inputs: per probed block, the sampled image queries, the text keys
    and the sampled image-token outputs of the step that ran last, over at most `max_tokens` image
    tokens; `take` turns every block's into statistics at once (one softmax and one batch of SVDs per
    step rather than one per block: the per-op cost dominates at these sizes). With
    classifier-free guidance the transformer sees [unconditional; conditional] (2B rows): the
    conditional half is probed, the one the prompt steers."""

    def __init__(self, batch: int, layers: list[int], max_tokens: int):
        self.batch, self.layers, self.max_tokens = batch, layers, max_tokens
        self.values: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, float] | None] = {}

    def rows(self, layer: int, batch: int) -> slice | None:
        """Which rows of a block's batch to probe; None: not this block (a transformer shared with a
        deployment probing other blocks), or not this call (the block already ran this step: FLUX's
        true CFG calls the transformer again for the negative prompt)."""
        if layer not in self.layers or layer in self.values:
            return None
        return slice(self.batch, None) if batch == 2 * self.batch else slice(None)

    def add(
        self, layer: int, query: torch.Tensor, key: torch.Tensor, tokens: torch.Tensor, scale: float
    ) -> None:
        """Query [B, H, Q, D], text keys [B, H, T, D], image-token output [B, N, width] of one block."""
        self.values[layer] = (query, key, tokens, scale)  # on the model's device until `take`

    def blind(self, layer: int) -> None:
        """The block ran but its attention did not go through scaled_dot_product_attention."""
        self.values[layer] = None

    def take(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """([B, L] entropy, [B, L] rank) of the step just run, blocks in `layers` order, then clear;
        None when a probe was blind this step (the attention detectors then fail open)."""
        missing = [i for i in self.layers if i not in self.values]
        if missing:
            raise RuntimeError(f"attention probes: blocks {missing} did not run this step")
        taken = [self.values.pop(i) for i in self.layers]
        if any(v is None for v in taken):
            return None
        query, key, tokens, scale = zip(*taken, strict=True)
        with torch.inference_mode():
            shapes = {(q.shape, k.shape, s) for q, k, s in zip(query, key, scale, strict=True)}
            if len(shapes) == 1:
                entropy = text_attention_entropy(torch.cat(query), torch.cat(key), scale[0])
            else:  # blocks that differ in shape or scale (not in SD3 / FLUX): one at a time
                parts = zip(query, key, scale, strict=True)
                entropy = torch.cat([text_attention_entropy(q, k, s) for q, k, s in parts])
            rank = effective_rank(torch.cat(tokens))
        both = torch.stack([entropy, rank]).view(2, len(self.layers), self.batch).cpu()
        return both[0].t(), both[1].t()  # one copy to the host per step


@contextmanager
def recording(rec: Recording | None) -> Iterator[None]:
    """Probe values of pipeline calls on this thread go to `rec` (None: nothing is recorded)."""
    previous = getattr(_local, "recording", None)
    _local.recording = rec
    try:
        yield
    finally:
        _local.recording = previous


class _AttentionInputs(TorchFunctionMode):
    """Keeps the query, key and scale of the first scaled_dot_product_attention call it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.query: torch.Tensor | None = None
        self.key: torch.Tensor | None = None
        self.scale: float | None = None

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and self.query is None:
            self.query = args[0] if args else kwargs["query"]
            self.key = args[1] if len(args) > 1 else kwargs["key"]
            self.scale = kwargs.get("scale")
        return func(*args, **kwargs)


class ProbeProcessor:
    """The block's own processor, plus the probe. `text_first`: the joint sequence is [text; image]
    (FLUX) rather than [image; text] (SD3)."""

    def __init__(self, inner: Any, layer: int, text_first: bool):
        self.inner, self.layer, self.text_first = inner, layer, text_first
        self.warned = False  # a blind probe says so once, not every step

    # Under torch.compile the probed blocks' attention runs eagerly (a graph break each): dynamo
    # cannot trace the TorchFunctionMode that watches the call, and a probe that sees nothing is no
    # probe. The rest of the model, the other blocks' attention included, stays compiled.
    @torch.compiler.disable
    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        rec: Recording | None = getattr(_local, "recording", None)
        batch = rec.rows(self.layer, len(hidden_states)) if rec is not None else None
        if rec is None or batch is None or encoder_hidden_states is None:
            return self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)
        with _AttentionInputs() as seen:
            out = self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)
        if seen.query is None or seen.key is None:
            if not self.warned:
                self.warned = True
                log.warning(
                    "attention probe on block %d is blind: %s made no scaled_dot_product_attention call "
                    "(an attention backend other than native SDPA?); attention_entropy and attention_rank "
                    "fail open while it is so",
                    self.layer,
                    type(self.inner).__name__,
                )
            rec.blind(self.layer)
            return out
        images, texts = hidden_states.shape[1], encoder_hidden_states.shape[1]
        first_image = texts if self.text_first else 0
        first_text = 0 if self.text_first else images
        tokens = first_image + sample_rows(images, rec.max_tokens, hidden_states.device)
        query = seen.query[batch, :, tokens]  # [B, H, Q, D]
        key = seen.key[batch, :, first_text : first_text + texts].clone()  # [B, H, T, D], not all keys
        scale = seen.scale if seen.scale is not None else query.shape[-1] ** -0.5
        image_out = (out[0] if isinstance(out, tuple) else out)[batch]  # [B, N, width]
        rec.add(self.layer, query, key, image_out[:, tokens - first_image], scale)
        return out


def install(pipe: Pipeline, family: str, layers: list[int] | None) -> list[int]:
    """Wrap the processors of the chosen joint-attention blocks (once per transformer: blocks already
    probed keep their probe); returns the probed block indices."""
    blocks = pipe.transformer.transformer_blocks
    chosen = default_layers(len(blocks)) if layers is None else sorted(set(layers))
    if not chosen or chosen[0] < 0 or chosen[-1] >= len(blocks):
        raise ValueError(f"attention probe layers {layers} must be in 0..{len(blocks) - 1}")
    for i in chosen:
        attn = blocks[i].attn
        if not isinstance(attn.processor, ProbeProcessor):
            attn.set_processor(ProbeProcessor(attn.processor, i, family == "flux"))
    return chosen
