"""The attention-probe statistics on inputs whose answer is known."""

import math

import torch

from latentguard.kernels.attention import effective_rank, sample_rows, text_attention_entropy


def test_entropy_is_one_for_uniform_attention_and_near_zero_for_one_token():
    key = torch.randn(2, 3, 10, 8)
    uniform = text_attention_entropy(torch.zeros(2, 3, 5, 8), key, 0.35)
    assert torch.allclose(uniform, torch.ones(2), atol=1e-6)
    key = torch.zeros(1, 1, 10, 8)
    key[..., 4, 0] = 1.0
    one = text_attention_entropy(torch.full((1, 1, 5, 8), 100.0), key, 1.0)
    assert float(one) < 1e-6


def test_entropy_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 6, 16, generator=g), torch.randn(2, 4, 9, 16, generator=g)
    p = torch.softmax(q @ k.transpose(-1, -2) * 0.25, dim=-1)
    want = (-(p * p.log()).sum(-1) / math.log(9)).mean(dim=(1, 2))
    assert torch.allclose(text_attention_entropy(q, k, 0.25), want, atol=1e-6)


def test_effective_rank_of_identity_rank_one_and_equal_spectra():
    assert torch.allclose(effective_rank(torch.eye(8)[None]), torch.ones(1))
    rank_one = torch.outer(torch.arange(1.0, 7.0), torch.randn(4))[None]
    assert torch.allclose(effective_rank(rank_one), torch.tensor([0.25]), atol=1e-4)
    two = torch.diag(torch.tensor([3.0, 3.0, 0.0, 0.0]))[None]  # two equal singular values of four
    assert torch.allclose(effective_rank(two), torch.tensor([0.5]), atol=1e-5)


def test_sample_rows_is_evenly_spaced_and_stable():
    assert sample_rows(5, 8).tolist() == [0, 1, 2, 3, 4]
    rows = sample_rows(1000, 64)
    assert len(rows) == 64 and rows[0] == 0 and rows[-1] == 999 and bool((rows.diff() > 0).all())
    assert torch.equal(rows, sample_rows(1000, 64))


def test_non_finite_tokens_give_nan_rank_for_that_element_only():
    tokens = torch.randn(2, 6, 4)
    tokens[1, 2, 3] = float("nan")
    rank = effective_rank(tokens)
    assert torch.isfinite(rank[0]) and torch.isnan(rank[1])


def test_effective_rank_is_scale_free_and_survives_huge_finite_values():
    tokens = torch.randn(1, 8, 4)
    assert torch.allclose(effective_rank(tokens * 3e37), effective_rank(tokens), atol=1e-5)
