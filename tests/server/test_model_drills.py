"""Model-fault drills: a forward hook on the denoiser rewrites its prediction from the onset on,
for the request's own thread only, and is gone after the run."""

from __future__ import annotations

import threading

import torch

from latentguard.detectors import Drill
from latentguard.kernels import trajectory_stats
from latentguard.server.pipelines.callbacks import DrillCallback
from latentguard.server.pipelines.requests import GenerateRequest, resolve
from latentguard.server.pipelines.runner import PipelineRunner, initial_noise

PROMPT = "two yellow squares on a white background"


def trajectory(dep, settings, drill: str = ""):
    req = GenerateRequest(dep.name, PROMPT, seed=4, steps=8, drill=drill, return_trajectory=True)
    return PipelineRunner(dep).generate(resolve(req, dep, settings.limits), decode=False).trajectory


def test_a_model_fault_starts_at_its_onset_and_persists(deployments, settings):
    for dep in (deployments["tiny-sd3"], deployments["tiny-flux"]):
        clean = trajectory(dep, settings)
        faulty = trajectory(dep, settings, "checkerboard:step=3,strength=0.2")
        same = [torch.equal(a, b) for a, b in zip(clean.latents, faulty.latents, strict=True)]
        assert same == [True] * 4 + [False] * 5, dep.name  # noise, x1..x3 untouched; x4 on differ
        imbalance = [
            tuple(float(trajectory_stats(t.x0_hat(i)).phase_imbalance.mean()) for t in (clean, faulty))
            for i in range(3, 8)
        ]
        # at every step from the onset on (benign images of the trained models have a phase
        # imbalance of 0.15-0.25 of their own; strength 0.2 adds 40-150% to it)
        assert all(b > 1.3 * a for a, b in imbalance), (dep.name, imbalance)
        assert not dep.pipe.transformer._forward_hooks, "the hook must be removed after the run"


def test_the_fault_hook_leaves_other_threads_alone(deployments, settings):
    dep = deployments["tiny-sd3"]
    reference = trajectory(dep, settings)
    noise = initial_noise(dep, [0], 256, 256)
    fault = DrillCallback(dep.family, 256, 256, Drill("grain", step=0, strength=1.0), noise, 0, dep.pipe)
    try:
        seen: list = []
        other = threading.Thread(target=lambda: seen.append(trajectory(dep, settings)))
        other.start()
        other.join()
        assert all(torch.equal(a, b) for a, b in zip(reference.latents, seen[0].latents, strict=True))
    finally:
        fault.close()
    assert not dep.pipe.transformer._forward_hooks
