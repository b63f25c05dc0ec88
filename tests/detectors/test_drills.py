import math

import pytest
import torch

from latentguard.detectors import (
    Drill,
    DrillSpecError,
    TrajectoryMonitor,
    denoised_estimate,
    x0_to_latent_delta,
)
from latentguard.kernels import trajectory_stats


def test_parse_and_print_round_trip():
    d = Drill.parse("aliasing:step=4,strength=0.5,freq=0.25")
    assert (d.kind, d.step, d.strength, d.freq) == ("aliasing", 4, 0.5, 0.25)
    assert Drill.parse(str(d)) == d
    assert Drill.parse("NaN").kind == "nan"


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "melt",
        "blur:step",
        "blur:step=-1",
        "blur:strength=0",
        "blur:x=1",
        "aliasing:strength=inf",
        "collapse:strength=1.5",
        "aliasing:freq=0",
    ],
)
def test_malformed_specs_raise_one_typed_error(spec):
    with pytest.raises(DrillSpecError):
        Drill.parse(spec)


def test_latent_delta_moves_the_monitored_x0_hat_by_exactly_delta():
    g = torch.Generator().manual_seed(0)
    x_t, x_next = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 4, 16, 16, generator=g)
    sigma, sigma_next = 0.8, 0.7
    x0 = denoised_estimate(x_t, x_next, sigma, sigma_next)
    delta = Drill("aliasing", strength=0.5).delta(x0)
    moved = denoised_estimate(x_t, x_next + x0_to_latent_delta(delta, sigma, sigma_next), sigma, sigma_next)
    torch.testing.assert_close(moved, x0 + delta, rtol=1e-4, atol=1e-4)


def test_each_kind_does_what_it_says():
    x0 = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 + 1
    collapsed = x0 + Drill("collapse", strength=0.5).delta(x0)
    torch.testing.assert_close(collapsed.var(dim=(-2, -1)), 0.25 * x0.var(dim=(-2, -1)))
    torch.testing.assert_close(collapsed.mean(dim=(-2, -1)), x0.mean(dim=(-2, -1)))
    blurred = x0 + Drill("blur", strength=1.0).delta(x0)
    assert (blurred.diff(dim=-1).abs().mean() < 0.5 * x0.diff(dim=-1).abs().mean()).item()
    grid = Drill("aliasing", strength=1.0, freq=0.5).delta(
        torch.zeros(1, 1, 4, 4) + torch.arange(16.0).view(1, 1, 4, 4)
    )
    assert grid[0, 0, 0, 0] > 0 and grid[0, 0, 0, 1] < 0 and grid[0, 0, 1, 1] > 0  # checkerboard
    nan = Drill("nan", strength=0.01).delta(x0, torch.Generator().manual_seed(0))
    assert int(torch.isnan(nan).sum()) == round(0.01 * 3 * 32 * 32)


def test_patch_gain_scales_the_prediction_at_one_patch_position_and_trains_nothing():
    """patch_gain multiplies the model's prediction v (not x0) by 1 + strength where i and j are
    both even; every other kind's model-mode prediction is the one whose x0 is T(x0). Held out: the
    classifier's training drills leave it out."""
    from latentguard.server.offline.classifier import TRAINED_KINDS, training_drills

    g = torch.Generator().manual_seed(2)
    x_t, v = torch.randn(1, 2, 6, 6, generator=g), torch.randn(1, 2, 6, 6, generator=g)
    drill = Drill.parse("patch_gain:strength=0.1")
    assert drill.mode == "model" and str(drill) == "patch_gain:step=2,strength=0.1"
    ratio = drill.predict(x_t, v, sigma=0.7) / v
    even = torch.zeros(6, 6, dtype=torch.bool)
    even[::2, ::2] = True
    torch.testing.assert_close(ratio[..., even], torch.full_like(ratio[..., even], 1.1))
    torch.testing.assert_close(ratio[..., ~even], torch.ones_like(ratio[..., ~even]))
    collapse = Drill("collapse", strength=0.5, mode="model")
    x0 = x_t - 0.7 * collapse.predict(x_t, v, sigma=0.7)
    torch.testing.assert_close(x0, collapse.transform(x_t - 0.7 * v))
    assert "patch_gain" not in TRAINED_KINDS and {d.kind for d in training_drills()} == set(TRAINED_KINDS)


def held_tensors(obj, seen=None) -> list[torch.Tensor]:
    """Every tensor reachable from obj's attributes, lists, tuples, dicts and dataclass fields."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, list | tuple):
        children = list(obj)
    elif isinstance(obj, dict):
        children = list(obj.values())
    elif hasattr(obj, "__dict__"):
        children = list(vars(obj).values())
    else:
        return []
    return [t for child in children for t in held_tensors(child, seen)]


def test_monitor_keeps_only_per_step_stats():
    """Per step it keeps statistics ([B, C] and small profiles), never the latents: what it holds of
    latent size is the last step's latents and x0_hat (needed for the next step) and the initial noise,
    however many steps it has seen."""
    g = torch.Generator().manual_seed(5)
    noise = torch.randn(1, 4, 32, 32, generator=g)
    sigmas = torch.linspace(1.0, 0.0, 11).tolist()
    mon = TrajectoryMonitor(noise, sigmas, backend="reference")
    mon.observe(0, noise * 0.9)
    with pytest.raises(ValueError, match="in order"):
        mon.observe(0, noise)
    large = lambda: [t for t in held_tensors(mon) if t.numel() >= noise.numel() // 4]  # noqa: E731
    after_one = len(large())
    for step in range(1, 10):
        mon.observe(step, noise * (0.9 - 0.09 * step) + 0.01 * torch.randn(noise.shape, generator=g))
    assert len(large()) == after_one <= 3
    per_step = [t for stats in mon.series for t in held_tensors(stats)]
    assert per_step and max(t.numel() for t in per_step) < noise.numel() // 4
    stacked = mon.stacked()
    assert stacked.var.shape == (1, 10, 4) and math.isfinite(float(stacked.var.sum()))


def test_monitor_compares_each_estimate_with_the_one_before():
    g = torch.Generator().manual_seed(2)
    latents = [torch.randn(2, 4, 16, 16, generator=g) for _ in range(4)]
    sigmas = [1.0, 0.7, 0.4, 0.0]
    mon = TrajectoryMonitor(latents[0], sigmas, backend="reference")
    previous = latents[0]  # step 0 is compared with the initial latents
    for step in range(3):
        x0 = mon.x0_hat(step, latents[step + 1])
        seen = mon.observe(step, latents[step + 1])
        want = trajectory_stats(x0, backend="reference", previous=previous)
        for change, of_x in (
            ("change_flatness", "hf_flatness"),
            ("change_crest", "crest"),
            ("change_phase_contrast", "phase_contrast"),
        ):
            torch.testing.assert_close(getattr(seen, change), getattr(want, change))
            assert not torch.allclose(getattr(seen, change), getattr(seen, of_x))
        previous = x0
