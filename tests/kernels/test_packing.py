"""The packed 4-bit trajectory format: one pack/unpack pair, exact on its own grid."""

import pytest
import torch

from latentguard.kernels import pack_int4, unpack_int4


@pytest.mark.parametrize("shape", [(1, 16, 16, 16), (2, 3, 7, 9), (1, 1, 1, 3)])
def test_round_trip_error_is_within_half_a_step_of_each_group(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 3
    packed = pack_int4(x, group_size=8)
    y = unpack_int4(packed)
    assert y.shape == x.shape and y.dtype == torch.float32
    step = packed.scales.float()  # one quantisation step per group
    err = (y - x).abs().reshape(shape[0], shape[1], -1)
    n = x[0, 0].numel()
    groups = torch.arange(n) // 8
    assert (err <= 0.5 * step[..., groups] * 1.01 + 1e-6).all()


def test_packing_is_idempotent_and_compact():
    x = torch.randn(2, 16, 32, 32, generator=torch.Generator().manual_seed(1))
    once = unpack_int4(pack_int4(x))
    twice = unpack_int4(pack_int4(once))
    torch.testing.assert_close(twice, once, rtol=0, atol=1e-3)  # fp16 scales re-round only
    assert pack_int4(x).nbytes * 3.7 < x.to(torch.bfloat16).numel() * 2


def test_zero_plane_and_bad_input():
    assert unpack_int4(pack_int4(torch.zeros(1, 1, 4, 4))).abs().max() == 0
    with pytest.raises(ValueError, match="NaN or Inf"):
        pack_int4(torch.tensor([[[[1.0, float("nan")]]]]))
    with pytest.raises(ValueError, match="overflows"):
        pack_int4(torch.full((1, 1, 2, 2), 1e6))
    with pytest.raises(ValueError, match="even"):
        pack_int4(torch.zeros(1, 1, 2, 2), group_size=3)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        pack_int4(torch.zeros(4, 4))
