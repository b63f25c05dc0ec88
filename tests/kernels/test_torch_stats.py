"""The fast torch path of trajectory_stats against the plain float64 full-spectrum oracle (oracle.py)."""

import math

import pytest
import torch

from latentguard.kernels import (
    RADIAL_BINS,
    BackendUnavailableError,
    pack_int4,
    resolve_backend,
    trajectory_stats,
    unpack_int4,
)
from latentguard.kernels.oracle import trajectory_stats_oracle
from latentguard.kernels.torch_stats import trajectory_stats_torch


def oracle(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return trajectory_stats_oracle(x.double()).as_dict()


SHAPES = [(1, 16, 32, 32), (2, 16, 64, 64), (3, 5, 17, 23), (1, 4, 31, 8), (2, 3, 13, 13), (1, 2, 6, 7)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_reference_matches_full_spectrum_oracle(shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g) * 2 + 0.5
    got, want = trajectory_stats(x, backend="reference"), oracle(x)
    for name, expected in want.items():
        actual = getattr(got, name).double()
        tol = 2e-3 if name == "sr_peak" else 1e-4
        torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=tol, atol=tol, msg=name)
    assert got.mean.shape == shape[:2] and got.radial_profile.shape == (*shape[:2], RADIAL_BINS)


def test_periodic_pattern_raises_spectral_residual_peak_at_its_frequency():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 32, 32, generator=g)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    checker = torch.cos(math.pi * yy) * torch.cos(math.pi * xx)  # Nyquist in both axes
    clean, dirty = trajectory_stats(x), trajectory_stats(x + 0.5 * checker)
    assert (dirty.sr_peak > clean.sr_peak + 1.0).all()
    torch.testing.assert_close(dirty.sr_freq, torch.full_like(dirty.sr_freq, math.sqrt(0.5)))


def test_blur_lowers_hf_ratio_and_constant_input_is_finite():
    x = torch.randn(1, 2, 32, 32, generator=torch.Generator().manual_seed(1))
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    assert (trajectory_stats(blurred).hf_ratio < trajectory_stats(x).hf_ratio - 0.3).all()
    const = trajectory_stats(torch.full((1, 2, 8, 8), 3.0))
    for name, v in const.as_dict().items():
        assert torch.isfinite(v.double()).all(), name


def test_non_finite_values_are_counted_and_do_not_poison_the_rest():
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    x[0, 1, 3, 4] = float("nan")
    x[1, 2, 0, 0] = float("inf")
    x[1, 2, 5, 5] = float("-inf")
    s = trajectory_stats(x)
    assert s.nonfinite.tolist() == [[0, 1, 0], [0, 0, 2]]
    for name, v in s.as_dict().items():
        assert torch.isfinite(v.double()).all(), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_low_precision_inputs_equal_the_upcast_values(dtype):
    x = torch.randn(2, 4, 16, 24, generator=torch.Generator().manual_seed(3)).to(dtype)
    got, want = trajectory_stats(x), oracle(x.float())
    torch.testing.assert_close(got.var.double(), want["var"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.hf_ratio.double(), want["hf_ratio"], rtol=1e-4, atol=1e-5)


def test_packed_int4_input_equals_the_oracle_on_its_unpacked_values():
    """Statistics of packed int4 latents are those of the values they stand for: the float64 oracle on
    the dequantized tensor (the one pack/unpack pair, whose nibble order and scales test_packing.py
    checks by hand), and that tensor is the input within int4's quantisation noise."""
    x = torch.randn(2, 4, 16, 24, generator=torch.Generator().manual_seed(4))
    packed = pack_int4(x)
    values = unpack_int4(packed)
    sqnr_db = 10 * torch.log10(x.pow(2).sum() / (x - values).pow(2).sum())
    assert sqnr_db > 15, sqnr_db  # 4 bits with a scale per group: about 20 dB on Gaussian data
    got, want = trajectory_stats(packed), oracle(values)
    for name, expected in want.items():
        actual = getattr(got, name).double()
        tol = 2e-3 if name == "sr_peak" else 1e-4
        torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=tol, atol=tol, msg=name)


def test_backend_choice_is_explicit(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(BackendUnavailableError, match="triton"):
        trajectory_stats(x, backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # tests may use the interpreter; 'auto' never does
    assert resolve_backend("auto", x.device) == "reference"
    assert resolve_backend("triton", x.device) == "triton"
    with pytest.raises(ValueError, match="unknown backend"):
        trajectory_stats(x, backend="cuda")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        trajectory_stats(torch.randn(8, 8))


def test_auto_falls_back_to_the_torch_path_once_and_says_so(monkeypatch, caplog):
    from latentguard.kernels import dispatch

    monkeypatch.setattr(dispatch, "_triton_installed", lambda: False)
    monkeypatch.setattr(dispatch, "_FALLBACKS", {})
    cuda = torch.device("cuda")
    with caplog.at_level("WARNING", logger="latentguard.kernels.dispatch"):
        assert [resolve_backend("auto", cuda) for _ in range(3)] == ["reference"] * 3
    assert len(caplog.records) == 1 and "triton is not installed" in caplog.records[0].getMessage()
    assert dispatch.fallbacks() == {"triton is not installed for CUDA tensors": "reference"}
    assert resolve_backend("auto", torch.device("cpu")) == "reference"  # the designed path, not a fallback
    assert len(dispatch.fallbacks()) == 1


def test_a_failed_kernel_launch_falls_back_for_that_kernel_and_keeps_serving(monkeypatch, caplog):
    from triton.runtime.errors import OutOfResources

    from latentguard.kernels import dispatch, triton_stats

    monkeypatch.setattr(dispatch, "_FALLBACKS", {})
    monkeypatch.setattr(dispatch, "resolve_backend", lambda backend, device: "triton")  # as on a GPU
    launches = []

    def out_of_shared_memory(x):
        launches.append(tuple(x.shape))
        raise OutOfResources(262_144, 232_448, "shared memory")

    monkeypatch.setattr(triton_stats, "trajectory_stats_triton", out_of_shared_memory)
    x = torch.randn(2, 4, 24, 24)
    with caplog.at_level("WARNING", logger="latentguard.kernels.dispatch"):
        for _ in range(3):
            torch.testing.assert_close(trajectory_stats(x).var, trajectory_stats_torch(x).var)
    assert launches == [(2, 4, 24, 24)]  # tried once; that kernel is not retried
    assert list(dispatch.fallbacks()) == ["the Triton kernel failed to launch for cpu float32 32x32"]
    assert sum("torch path" in r.getMessage() for r in caplog.records) == 1
    trajectory_stats(torch.randn(1, 1, 8, 8))  # another padded size is another kernel: tried
    assert len(launches) == 2 and len(dispatch.fallbacks()) == 2
    with pytest.raises(OutOfResources):  # an explicit backend fails loudly
        trajectory_stats(x, backend="triton")


def test_warm_up_compiles_every_padded_size_a_deployment_can_need_once(monkeypatch):
    from latentguard.kernels import dispatch, triton_stats

    launched = []
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(dispatch, "_FALLBACKS", {})
    monkeypatch.setattr(triton_stats, "trajectory_stats_triton", lambda x: launched.append(x.shape[-2:]))
    assert dispatch.warm_up(torch.device("cpu"), 16, 128, 40) == []  # the torch path compiles nothing
    monkeypatch.setattr(dispatch, "resolve_backend", lambda backend, device: "triton")  # as on a GPU
    warmed = dispatch.warm_up(torch.device("cpu"), 16, 128, 40)  # latents up to 128 x 40
    assert [tuple(s) for s in launched] == [(h, w) for h in (16, 32, 64, 128) for w in (16, 32, 64)]
    assert warmed[0] == "cpu float32 16x16" and warmed[-1] == "cpu float32 128x64"


#: the fields `previous` sets, and the field of x each equals without one
CHANGE_FIELDS = {
    "change_flatness": "hf_flatness",
    "change_crest": "crest",
    "change_phase_contrast": "phase_contrast",
}


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_previous_sets_the_change_fields_and_leaves_the_rest(backend):
    g = torch.Generator().manual_seed(3)
    previous = torch.nn.functional.avg_pool2d(torch.randn(2, 3, 17, 24, generator=g), 3, 1, 1)
    x = (previous * 1.1 + 0.2).to(torch.bfloat16)
    got = trajectory_stats(x, backend=backend, previous=previous)
    alone = trajectory_stats(x, backend=backend)
    want = trajectory_stats_oracle(x.double(), previous=previous.double())
    for name in CHANGE_FIELDS:
        torch.testing.assert_close(getattr(got, name).double(), getattr(want, name), rtol=1e-4, atol=1e-4)
    for name, value in alone.as_dict().items():  # the other fields: those of x alone
        if name not in CHANGE_FIELDS:
            torch.testing.assert_close(getattr(got, name), value, rtol=1e-6, atol=1e-6, msg=name)
    for name, of_x in CHANGE_FIELDS.items():  # previous = 0
        torch.testing.assert_close(getattr(alone, name), getattr(alone, of_x))


def test_change_flatness_sees_fresh_noise_that_content_hides():
    """Smooth content that moves a little between steps changes smoothly; fresh noise does not."""
    g = torch.Generator().manual_seed(4)
    content = torch.nn.functional.avg_pool2d(torch.randn(1, 4, 32, 32, generator=g), 5, 1, 2)
    step = content + 0.05 * torch.nn.functional.avg_pool2d(torch.randn(1, 4, 32, 32, generator=g), 5, 1, 2)
    noisy = step + 0.02 * content.std() * torch.randn(1, 4, 32, 32, generator=g)
    clean, grain = trajectory_stats(step, previous=content), trajectory_stats(noisy, previous=content)
    assert (grain.change_flatness > 2 * clean.change_flatness).all()
    assert (grain.hf_flatness < 2 * clean.hf_flatness).all()  # x itself barely shows it


def test_change_crest_sees_a_jump_that_the_scene_hides():
    """A small bright object on a flat background has a high crest of its own; a value that jumps
    by less than that between two steps is invisible in x's crest and stands out in the change's."""
    g = torch.Generator().manual_seed(5)
    scene = 0.05 * torch.randn(1, 4, 32, 32, generator=g)
    scene[..., 10:12, 20:22] += 3.0  # the object: crest about 20
    step = scene + 0.01 * torch.randn(1, 4, 32, 32, generator=g)  # a small change everywhere
    jumped = step.clone()
    jumped[..., 3, 5] += 1.0  # one value per plane, a third of the object's height
    clean, spike = trajectory_stats(step, previous=scene), trajectory_stats(jumped, previous=scene)
    assert (spike.crest < 1.01 * clean.crest).all()
    assert (spike.change_crest > 3 * clean.change_crest).all()


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_isolation_finds_a_stuck_value_that_the_scene_hides(backend):
    """A small bright object in two of four channels is the scene's extreme (crest) but smooth, as
    content is in a latent; a stuck value of half its height is alone among its neighbours: the most
    isolated value of every channel, at the same place. In the clean scene the channels' most
    isolated values sit in different places."""
    g = torch.Generator().manual_seed(6)
    scene = 0.05 * torch.randn(1, 4, 32, 32, generator=g)
    i, j = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    scene[:, :2] += 3.0 * torch.exp(-((i - 10) ** 2 + (j - 20) ** 2) / (2 * 1.5**2))  # the object
    stuck = scene.clone()
    stuck[..., 3, 5] += 1.5
    clean, bad = trajectory_stats(scene, backend=backend), trajectory_stats(stuck, backend=backend)
    assert (bad.crest[:, :2] < 1.01 * clean.crest[:, :2]).all()  # the object stays the extreme
    assert bad.isolation_at.tolist() == [[3 * 32 + 5] * 4]
    assert (bad.isolation > 1.2 * clean.isolation).all()
    assert len(set(clean.isolation_at.flatten().tolist())) >= 3


def test_previous_must_match_and_be_a_float_tensor():
    x = torch.zeros(1, 2, 8, 8)
    with pytest.raises(ValueError, match="shape"):
        trajectory_stats(x, previous=torch.zeros(1, 2, 8, 9))
    with pytest.raises(TypeError, match="PackedInt4"):
        trajectory_stats(pack_int4(x), previous=x)
