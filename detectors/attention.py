"""attention_entropy and attention_rank: the denoiser's attention, read by the attention probes
(server/pipelines/attention_probes.py) on a few joint-attention blocks, one value per probed block.

attention_entropy: the entropy of image-query -> text-key attention over log(text tokens) (seed 000's
cross-attention entropy). Both tails are risky: collapse (every query reads the same few tokens: a
contaminated or overfitted fine-tune, a trigger token) and diffusion (attention spread evenly, the
prompt no longer steers the image; Bao et al. 2024). The worst block counts.

attention_rank: the effective rank of a block's image-token output (Roy & Vetterli) over
min(tokens, width). Rank collapse (the tokens lose their diversity: a degenerate adapter, broken
numerics in attention) lowers it; lower is riskier and the worst block counts.
"""

from __future__ import annotations

import torch

from latentguard.detectors.base import Detector
from latentguard.kernels import TrajectoryStats

BLIND = (
    "no attention statistics this step: the attention probes saw no scaled_dot_product_attention call "
    "(an attention backend other than native SDPA); the server log names the block"
)


class ProbesUnavailable(RuntimeError):
    """The step's stats carry no attention statistics although this detector was calibrated with them."""


class AttentionEntropy(Detector):
    name = "attention_entropy"
    direction = 0
    reduce = "max"
    requires = ("attn_entropy",)

    def feature(self, stats: TrajectoryStats) -> torch.Tensor:
        if stats.attn_entropy is None:
            raise ProbesUnavailable(BLIND)
        return stats.attn_entropy.double()


class AttentionRank(Detector):
    name = "attention_rank"
    direction = -1
    reduce = "max"
    requires = ("attn_rank",)

    def feature(self, stats: TrajectoryStats) -> torch.Tensor:
        if stats.attn_rank is None:
            raise ProbesUnavailable(BLIND)
        return torch.log(stats.attn_rank.double().clamp_min(1e-12))
