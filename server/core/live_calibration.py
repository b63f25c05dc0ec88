"""Calibration from live traffic: a deployment without a profile calibrates on the requests it serves.

Until it has enough, the deployment serves with non_finite only (annotate) and every report says
`calibration: "collecting"`, never a pass by the full guard. Each request that ran its whole
trajectory, undrilled, at the deployment's default steps, size and guidance adds its per-step
statistics, to the fit set or the held-out set by a hash of its prompt (a third of the prompts fit
the envelopes, the rest set the thresholds: the split `latentguard calibrate` makes, so that held-out
runs are of prompts the envelopes never saw). The prompts themselves are not kept.

Once the held-out set has the runs the detectors need at the target rate (`runs_needed`, as
`latentguard init` says) and the fit set half as many, the detectors are fitted and thresholded
jointly by the same function as offline calibration (`calibrate_detectors`) on the worker thread,
the profile is saved next to the collected runs (versioned by time, fingerprinted to the weights)
and goes live from the next request. Collected runs are checkpointed every `checkpoint_every`
requests, so a restart resumes; a restart after activation loads the newest live profile of these
weights.

The guarantee is offline calibration's, on the traffic's own prompt distribution, under one
assumption: the requests after activation are exchangeable with those collected (same prompt mix,
same sizes). A shift of the traffic after calibration (a new client, a new prompt style), or a
calibration window filled by one client's burst, breaks it; so does adversarial traffic during the
window (whoever sends the calibration requests sets the thresholds). Recalibrate by deleting the live
profile (or run `latentguard calibrate` on representative prompts).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from latentguard.detectors import CalibrationProfile, calibrate_detectors
from latentguard.detectors.calibration import runs_needed
from latentguard.detectors.registry import DETECTORS
from latentguard.kernels import TrajectoryStats
from latentguard.kernels.stats import LATENT_FIELDS
from latentguard.server.config import LiveCalibrationConfig
from latentguard.server.metrics import Metrics
from latentguard.server.pipelines.deployments import Deployment, activate_profile, new_profile

log = logging.getLogger(__name__)
FIT_SHARE = 3  # one prompt in FIT_SHARE fits the envelopes (latentguard calibrate: a third)


def is_fit_prompt(prompt: str) -> bool:
    """Which side of the split a prompt's runs go to: the same prompt always to the same side."""
    return int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) % FIT_SHARE == 0


def detectors_to_threshold(dep: Deployment) -> int:
    """How many detectors calibration will threshold jointly (not non_finite; the attention ones only
    when the deployment probes: a backend that blinds the probes leaves fewer, so this is an upper
    bound and the runs it asks for are enough)."""
    return sum(
        name != "non_finite" and (bool(dep.probe_layers) or not cls.requires)
        for name, cls in DETECTORS.items()
    )


class LiveCalibration:
    """One deployment's calibration from its own traffic."""

    def __init__(
        self, dep: Deployment, cfg: LiveCalibrationConfig, metrics: Metrics, executor: ThreadPoolExecutor
    ):
        self.dep, self.cfg, self.metrics, self.executor = dep, cfg, metrics, executor
        self.dir = Path(cfg.state_dir)
        self.state = self.dir / f"{dep.name}.{dep.fingerprint}.live.safetensors"
        self.fit: list[TrajectoryStats] = []
        self.held: list[TrajectoryStats] = []
        self.sigmas: list[float] = []
        self.since_checkpoint = 0
        self.fitting = False
        held = cfg.held_out_runs or runs_needed(detectors_to_threshold(dep), cfg.fpr, cfg.confidence)
        self.needed = (math.ceil(held / (FIT_SHARE - 1)), held)  # (fit, held-out) runs
        self.task: asyncio.Future[None] | None = None

    # --- start ------------------------------------------------------------------------------------
    def resume(self) -> None:
        """At start (off the event loop): the newest live profile of these weights goes live; else the
        runs collected before a restart are read back and collection goes on."""
        profiles = sorted(self.dir.glob(f"{self.dep.name}.{self.dep.fingerprint}.live-*.profile.json"))
        if profiles:
            activate_profile(self.dep, CalibrationProfile.load(profiles[-1]), str(profiles[-1]))
            log.info("%s: live-calibrated profile %s active", self.dep.name, profiles[-1])
            return
        if self.state.is_file():
            tensors = load_file(str(self.state))
            self.sigmas = tensors.pop("sigmas").tolist()
            for side, runs in (("fit", self.fit), ("held", self.held)):
                fields = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{side}.")}
                missing = set(LATENT_FIELDS) - set(fields) if fields else set()
                if missing:  # collected by an older version
                    log.warning("%s: collected runs lack %s: collecting anew", self.dep.name, sorted(missing))
                    self.fit.clear()
                    self.held.clear()
                    break
                if fields:
                    stats = TrajectoryStats(**fields)
                    runs.extend(stats.index(slice(i, i + 1)) for i in range(stats.mean.shape[0]))
        self.dep.calibrating = True
        self._publish()
        log.info(
            "%s: calibrating from live traffic (%d of %d runs so far; non_finite only until then)",
            self.dep.name,
            len(self.fit) + len(self.held),
            sum(self.needed),
        )

    def _publish(self) -> None:
        collected = len(self.fit) + len(self.held)
        self.dep.calibration_runs = (collected, sum(self.needed))
        self.metrics.set_calibration_runs(self.dep.name, *self.dep.calibration_runs)

    # --- serving ------------------------------------------------------------------------------------
    def add(self, prompt: str, stats: TrajectoryStats, sigmas: list[float]) -> None:
        """A finished request's run (on the event loop); fits once there are enough."""
        if not self.dep.calibrating or self.fitting:
            return
        self.sigmas = sigmas
        (self.fit if is_fit_prompt(prompt) else self.held).append(stats)
        self._publish()
        self.since_checkpoint += 1
        if len(self.fit) >= self.needed[0] and len(self.held) >= self.needed[1]:
            self.fitting = True
            self.task = asyncio.ensure_future(self._fit())
        elif self.since_checkpoint >= self.cfg.checkpoint_every:
            self.since_checkpoint = 0
            fit, held = list(self.fit), list(self.held)
            asyncio.get_running_loop().run_in_executor(self.executor, self._checkpoint, fit, held)

    def _checkpoint(self, fit: list[TrajectoryStats], held: list[TrajectoryStats]) -> None:
        tensors = {"sigmas": torch.tensor(self.sigmas, dtype=torch.float64)}
        for side, runs in (("fit", fit), ("held", held)):
            if runs:
                tensors |= {
                    f"{side}.{k}": v.contiguous() for k, v in TrajectoryStats.cat(runs).as_dict().items()
                }
        self.dir.mkdir(parents=True, exist_ok=True)
        partial = self.state.with_suffix(".partial")
        save_file(tensors, str(partial))
        partial.replace(self.state)  # a crash mid-write leaves the previous checkpoint

    async def _fit(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            # on the deployment's worker: between two pipeline calls, so no request sees half a swap
            path = await loop.run_in_executor(self.executor, self._calibrate_and_activate)
            log.info(
                "%s: calibrated from %d live requests; profile %s active",
                self.dep.name,
                len(self.fit) + len(self.held),
                path,
            )
        except Exception:
            log.exception("%s: live calibration failed; still collecting", self.dep.name)
            self.fitting = False

    def _calibrate_and_activate(self) -> Path:
        self._checkpoint(self.fit, self.held)
        fit, held = TrajectoryStats.cat(self.fit), TrajectoryStats.cat(self.held)
        detectors, report = calibrate_detectors(
            fit, held, self.sigmas, self.cfg.fpr, None, self.cfg.confidence
        )
        notes = {
            "source": "live traffic",
            "requests": len(self.fit) + len(self.held),
            "assumption": "requests after activation exchangeable with the calibration window's",
        }
        profile = new_profile(self.dep.config, self.dep.fingerprint, self.sigmas, detectors, report, notes)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = self.dir / f"{self.dep.name}.{self.dep.fingerprint}.live-{stamp}.profile.json"
        profile.save(path)
        activate_profile(self.dep, CalibrationProfile.load(path), str(path))
        self.dep.calibrating = False
        return path


class LiveCalibrations:
    """Every live-calibrating deployment of the server."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.watched: dict[str, LiveCalibration] = {}

    def watch(self, dep: Deployment, cfg: LiveCalibrationConfig, executor: ThreadPoolExecutor) -> None:
        live = LiveCalibration(dep, cfg, self.metrics, executor)
        live.resume()
        self.watched[dep.name] = live

    def add(self, deployment: str, prompt: str, run: tuple[TrajectoryStats, list[float]]) -> None:
        live = self.watched.get(deployment)
        if live is not None:
            live.add(prompt, *run)
