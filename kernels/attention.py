"""Statistics of one attention call, for the attention probes (server/pipelines/attention_probes.py).

Plain torch on the device the attention ran on: a probed block costs one [Q, T] softmax per head and
one SVD of a [N, D] token matrix per batch element, with Q and N capped by `sample_rows`.
"""

from __future__ import annotations

import math

import torch

_TINY = 1e-30


def sample_rows(n: int, at_most: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """At most `at_most` of n row indices, evenly spaced and always the same for the same n (so the
    statistics of different requests and steps are comparable)."""
    if n <= at_most:
        return torch.arange(n, device=device)
    return torch.linspace(0, n - 1, at_most, device=device).round().long()


def text_attention_entropy(query: torch.Tensor, key: torch.Tensor, scale: float) -> torch.Tensor:
    """[B]: entropy of the attention of image queries [B, H, Q, D] over text keys [B, H, T, D]
    (softmax of scale * q.k over the T text keys), divided by log T and averaged over heads and
    queries. 1: every query spreads evenly over the prompt; 0: every query reads one token."""
    logits = torch.einsum("bhqd,bhtd->bhqt", query.float(), key.float()) * scale
    logp = logits.log_softmax(dim=-1)
    entropy = -(logp.exp() * logp).sum(dim=-1)
    return entropy.mean(dim=(1, 2)) / max(math.log(key.shape[2]), _TINY)


def effective_rank(tokens: torch.Tensor) -> torch.Tensor:
    """[B]: effective rank (Roy & Vetterli 2007) of each [N, D] token matrix of tokens [B, N, D], the
    exponential of the entropy of its normalised singular values, divided by min(N, D): 1 when every
    direction carries the same energy, 1 / min(N, D) when the tokens collapse onto one direction;
    NaN for a matrix with a non-finite value (non_finite reports those)."""
    tokens = tokens.float()
    finite = torch.isfinite(tokens).all(dim=-1).all(dim=-1)
    tokens = torch.where(finite[:, None, None], tokens, 0)  # the SVD needs finite input
    # the rank is scale-free: dividing by the largest value keeps huge finite values from overflowing
    s = torch.linalg.svdvals(tokens / tokens.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(_TINY))
    p = s / s.sum(dim=-1, keepdim=True).clamp_min(_TINY)
    entropy = -(p * p.clamp_min(_TINY).log()).sum(dim=-1)
    return torch.where(finite, entropy.exp() / min(tokens.shape[-2:]), torch.nan)
