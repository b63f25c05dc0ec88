"""Deployments: a pipeline (built-in tiny, local diffusers folder, or hub id) + its calibration profile."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from latentguard.detectors import (
    CalibrationProfile,
    Detector,
    DetectorPolicy,
    build_detectors,
    default_policies,
)
from latentguard.server.config import BUILTIN_MODELS, DeploymentConfig
from latentguard.server.errors import ModelLoadError
from latentguard.server.families import FAMILIES, FamilyOps, Pipeline

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_pipeline(config: DeploymentConfig) -> Pipeline:
    family = FAMILIES[config.family]
    if config.variant not in DTYPES:
        raise ModelLoadError(
            f"{config.name}: variant {config.variant!r} is not supported yet (fp32, bf16, fp16)"
        )
    if config.model in BUILTIN_MODELS:
        from latentguard.server import tiny

        expected = "sd3" if config.model == "tiny-sd3" else "flux"
        if config.family != expected:
            raise ModelLoadError(
                f"{config.name}: model {config.model} is family {expected}, not {config.family}"
            )
        pipe = tiny.tiny_sd3() if expected == "sd3" else tiny.tiny_flux()
        if DTYPES[config.variant] != torch.float32:
            pipe = pipe.to(dtype=DTYPES[config.variant])
    else:
        local = Path(config.model).expanduser()
        is_local = local.exists()
        if is_local and not (local / "model_index.json").is_file():
            raise ModelLoadError(f"{config.name}: {local} is not a diffusers folder (no model_index.json)")
        try:
            pipe = family.pipeline_class.from_pretrained(
                str(local) if is_local else config.model,
                torch_dtype=DTYPES[config.variant],
                use_safetensors=True,
                local_files_only=is_local,
            )
        except (OSError, ValueError) as exc:
            where = (
                "local folder" if is_local else "hub id (needs network access and the weights as safetensors)"
            )
            raise ModelLoadError(f"{config.name}: cannot load {config.model!r} as a {where}: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe


def fingerprint(pipe: Pipeline) -> str:
    """Cheap identity of the denoiser: every parameter's name, shape and first values (not all bytes)."""
    h = hashlib.sha256()
    for name, p in pipe.transformer.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(p.detach().flatten()[:64].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def builtin_profile_path(model: str) -> Path:
    return Path(__file__).parent / "profiles" / f"{model}.json"


@dataclass
class Deployment:
    config: DeploymentConfig
    pipe: Pipeline
    family: FamilyOps
    fingerprint: str
    profile: CalibrationProfile | None = None
    detectors: dict[str, Detector] = field(default_factory=dict)
    policies: dict[str, DetectorPolicy] = field(default_factory=default_policies)

    @property
    def name(self) -> str:
        return self.config.name


def load_deployment(config: DeploymentConfig, device: str = "cpu", with_profile: bool = True) -> Deployment:
    pipe = load_pipeline(config).to(device)
    dep = Deployment(config=config, pipe=pipe, family=FAMILIES[config.family], fingerprint=fingerprint(pipe))
    policies = default_policies()
    for name, pol in config.policies.items():
        policies[name] = DetectorPolicy(pol.action, pol.on_error)
    dep.policies = policies
    if with_profile:
        attach_profile(dep)
    return dep


def attach_profile(dep: Deployment) -> None:
    path = dep.config.profile
    if path is None and dep.config.model in BUILTIN_MODELS:
        candidate = builtin_profile_path(dep.config.model)
        path = str(candidate) if candidate.is_file() else None
    if path is None:
        log.warning(
            "%s: no calibration profile; only non_finite is active (run `latentguard calibrate`)", dep.name
        )
        dep.detectors = {"non_finite": build_detectors()["non_finite"]}
        return
    profile = CalibrationProfile.load(path)
    if profile.fingerprint != dep.fingerprint:
        log.warning(
            "%s: profile %s was calibrated on model %s but this model is %s; thresholds may not hold",
            dep.name,
            path,
            profile.fingerprint,
            dep.fingerprint,
        )
    dep.profile = profile
    dep.detectors = profile.build()
