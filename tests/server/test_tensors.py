"""Tensors on the wire: lossless both ways, decoded without a copy on the server, and rejected clearly."""

import ctypes
import warnings

import pytest
import torch

from latentguard.server.errors import InvalidArgument
from latentguard.server.rpc import convert, tensors


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_is_exact_and_the_server_side_decode_copies_nothing(dtype):
    t = torch.randn(2, 16, 8, 12).to(dtype)
    raw, name, shape = tensors.encode(t)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the read-only buffer is expected, not warned about
        back = tensors.decode(raw, name, shape)
    assert back.dtype == dtype and torch.equal(back, t)
    address = ctypes.cast(ctypes.c_char_p(raw), ctypes.c_void_p).value
    assert back.untyped_storage().data_ptr() == address  # a view of the message's bytes


def test_the_client_gets_a_tensor_of_its_own():
    t = torch.randn(1, 4, 8, 8)
    msg = convert.tensor_to_proto(t)
    mine = convert.tensor_from_proto(msg)
    mine += 1  # writable, and the message is unchanged
    assert torch.equal(convert.tensor_from_proto(msg), t)


def test_bad_frames_are_invalid_arguments():
    raw, _, _ = tensors.encode(torch.zeros(1, 2, 4, 4))
    with pytest.raises(InvalidArgument, match="unsupported latents dtype"):
        tensors.decode(raw, "int8", [1, 2, 4, 4])
    with pytest.raises(InvalidArgument, match=r"have 132 bytes; float32 \[1, 2, 4, 4\] needs 128"):
        tensors.decode(raw + b"0000", "float32", [1, 2, 4, 4])
    with pytest.raises(InvalidArgument, match=r"\[B, C, H, W\]"):
        tensors.decode(raw, "float32", [2, 4, 4])
