"""The batch jobs on a local 2-worker Ray cluster give what a local run gives."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import latentguard.kernels
from latentguard.detectors import Drill
from latentguard.server.offline.calibrate import calibrate_deployment
from latentguard.server.offline.distributed import RayCollector, _leave_checkout, cluster
from latentguard.server.offline.trajectories import LocalCollector, default_prompts, run_grid

pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'latentguard[ray]'")


def test_an_actor_drops_the_checkout_ray_puts_first_on_its_path(monkeypatch):
    """From the repository root, Ray's workers would find kernels/ before Hugging Face's `kernels` (which
    diffusers imports); the actors leave it, and only it."""
    rest = list(sys.path)
    monkeypatch.setattr(sys, "path", [str(Path(latentguard.kernels.__file__).parents[1]), *rest])
    _leave_checkout()
    assert sys.path == rest


@pytest.fixture(scope="module")
def ray_cluster():
    with cluster("local", workers=2) as ray:
        yield ray


def test_sharded_runs_match_a_local_run(ray_cluster, sd3, settings):
    runs = run_grid(default_prompts("calibration")[:20], 2)  # 40 runs: 5 batches, 2 shards of unequal size
    drills = [Drill("grain", step=1, strength=0.2), Drill("blur", step=3, strength=0.5)]
    local = LocalCollector(sd3).collect(runs, drill=drills)
    remote = RayCollector(settings, "tiny-sd3", workers=2)
    assert remote.fingerprint == sd3.fingerprint
    got = remote.collect(runs, drill=drills)
    assert got.sigmas == local.sigmas
    for name, value in local.stats.as_dict().items():
        torch.testing.assert_close(getattr(got.stats, name), value, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow  # about 40 s; test_sharded_runs_match_a_local_run stays in `make test`
def test_the_same_profile_from_a_local_run_and_from_ray(ray_cluster, sd3, settings, tmp_path):
    prompts = default_prompts("calibration")[:60]
    common = {"prompts": prompts, "seeds_per_prompt": 2, "fpr": 0.2}
    local = calibrate_deployment(LocalCollector(sd3), out=tmp_path / "local.json", **common)
    remote = calibrate_deployment(
        RayCollector(settings, "tiny-sd3", workers=2), out=tmp_path / "ray.json", **common
    )
    assert remote.report.calibration_runs == local.report.calibration_runs == 80
    for name, state in local.detectors.items():
        assert remote.detectors[name]["threshold"] == pytest.approx(state["threshold"], rel=1e-3, abs=1e-3), (
            name
        )
    a, b = (json.loads((tmp_path / f).read_text())["report"] for f in ("local.json", "ray.json"))
    assert a["calibration_fpr"] == b["calibration_fpr"]
