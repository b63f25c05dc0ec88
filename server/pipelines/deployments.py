"""Deployments: a pipeline (built-in tiny, local diffusers folder, or hub id) + its calibration profile."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from latentguard.detectors import (
    CalibrationProfile,
    Detector,
    DetectorPolicy,
    build_detectors,
    default_policies,
)
from latentguard.detectors.calibration import CalibrationReport
from latentguard.detectors.drift import DriftReference
from latentguard.detectors.registry import latent_only
from latentguard.server.config import BUILTIN_MODELS, CompileConfig, DeploymentConfig
from latentguard.server.errors import ModelLoadError
from latentguard.server.pipelines import attention_probes
from latentguard.server.pipelines.adapters import apply_adapters
from latentguard.server.pipelines.canaries import CanarySet
from latentguard.server.pipelines.families import FAMILIES, FamilyOps, Pipeline
from latentguard.server.pipelines.quantization import (
    QUANTIZED,
    compute_dtype,
    quantize_transformer,
    weight_bytes,
)

log = logging.getLogger(__name__)

# loaded components, shared by variants: (model, device, dtype, attention backend, compile)
_BASES: dict[tuple[str, str, torch.dtype, str | None, CompileConfig], Pipeline] = {}
_BASES_LOCK = threading.Lock()


BUILTIN_DIR = Path(__file__).parent / "builtin"


def builtin_folder(model: str) -> Path:
    """The shipped diffusers folder of a built-in model (trained here: training/train.py)."""
    return BUILTIN_DIR / model


def _builtin_family(config: DeploymentConfig) -> str:
    expected = "sd3" if config.model == "tiny-sd3" else "flux"
    if config.family != expected:
        raise ModelLoadError(f"{config.name}: model {config.model} is family {expected}, not {config.family}")
    return expected


def _load_base(config: DeploymentConfig, device: str, dtype: torch.dtype) -> Pipeline:
    """Built-in models load from their shipped folder through the same path as any checkpoint."""
    source = config.model
    if config.model in BUILTIN_MODELS:
        _builtin_family(config)
        source = str(builtin_folder(config.model))
    return _from_pretrained(config, source, FAMILIES[config.family].pipeline_class, dtype).to(device)


def _from_pretrained(
    config: DeploymentConfig, source: str, pipeline_class, dtype: torch.dtype, **kwargs
) -> Pipeline:
    local = Path(source).expanduser()
    is_local = local.exists()
    if is_local and not (local / "model_index.json").is_file():
        raise ModelLoadError(f"{config.name}: {local} is not a diffusers folder (no model_index.json)")
    try:
        pipe = pipeline_class.from_pretrained(
            str(local) if is_local else source,
            dtype=dtype,
            use_safetensors=True,
            local_files_only=is_local,
            **kwargs,
        )
    except (OSError, ValueError) as exc:
        where = "local folder" if is_local else "hub id (needs network access and the weights as safetensors)"
        raise ModelLoadError(f"{config.name}: cannot load {source!r} as a {where}: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_nf4(config: DeploymentConfig, device: str) -> Pipeline:
    """bitsandbytes NF4 needs CUDA and quantizes while loading, so it gets no shared components."""
    if not device.startswith("cuda") or importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(
            f"{config.name}: variant nf4 needs a CUDA device and bitsandbytes; on CPU use variant int4"
        )
    if config.model in BUILTIN_MODELS:
        raise ModelLoadError(f"{config.name}: nf4 loads model folders or hub ids; use int4 for built-ins")
    from diffusers import PipelineQuantizationConfig

    quant = PipelineQuantizationConfig(
        quant_backend="bitsandbytes_4bit",
        quant_kwargs={
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_compute_dtype": "bfloat16",
        },
        components_to_quantize=["transformer"],
    )
    pipeline_class = FAMILIES[config.family].pipeline_class
    return _from_pretrained(
        config, config.model, pipeline_class, torch.bfloat16, quantization_config=quant
    ).to(device)


def load_pipeline(config: DeploymentConfig, device: str = "cpu") -> Pipeline:
    """A pipeline of its own (scheduler, tokenizers, interrupt flag) over components shared with other
    variants of the same model: the text encoders and VAE always, the transformer too for 16/32-bit
    variants."""
    if config.variant == "nf4":
        pipe = _load_nf4(config, device)
        apply_runtime(pipe.transformer, config)
    else:
        dtype = compute_dtype(config.variant, device)
        if config.model in BUILTIN_MODELS:
            _builtin_family(config)  # also when the model is already loaded for another deployment
        with _BASES_LOCK:  # attention backend and compile change the transformer: part of the key
            key = (config.model, device, dtype, config.attention_backend, config.compile)
            if key not in _BASES:
                _BASES[key] = _load_base(config, device, dtype)
            base = _BASES[key]
        transformer = base.transformer
        if config.variant in QUANTIZED:
            transformer = quantize_transformer(copy.deepcopy(base.transformer), config.variant)
        elif config.adapters:
            transformer = copy.deepcopy(base.transformer)
        apply_runtime(transformer, config)
        cls = FAMILIES[config.family].pipeline_class
        names = [k for k in inspect.signature(cls.__init__).parameters if k != "self"]
        shared = {k: getattr(base, k, None) for k in names}
        # a fast tokenizer keeps its padding setting between calls (each call sets it, then encodes):
        # two deployments' threads calling one tokenizer swap each other's padding, and a prompt comes
        # out unpadded beside its padded negative. Tokenizers are small; each pipeline gets its own.
        own = {k: copy.deepcopy(v) for k, v in shared.items() if k.startswith("tokenizer") and v is not None}
        own |= {"transformer": transformer, "scheduler": copy.deepcopy(base.scheduler)}
        pipe = cls(**{**shared, **own})
        apply_adapters(pipe, config.adapters, config.name)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def apply_runtime(transformer: torch.nn.Module, config: DeploymentConfig) -> None:
    """The deployment's attention backend and torch.compile, once per loaded transformer (the loaded
    bases are keyed by both, so deployments that differ in them never share one). Compiling is in
    place (`Module.compile`), so the state_dict, the fingerprint and the attention probes see the same
    module; it happens lazily, at the first request (the warm-up's, when on)."""
    wanted = (config.attention_backend, config.compile.mode, config.compile.backend)
    model: Any = transformer  # a diffusers ModelMixin: set_attention_backend, compile_repeated_blocks
    if getattr(model, "_latentguard_runtime", None) == wanted:
        return
    if config.attention_backend is not None:
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry as registry

        # set_attention_backend sets each processor's backend and also makes it the process-wide
        # default of every other model; the other deployments keep theirs
        active, _ = registry.get_active_backend()
        model.set_attention_backend(config.attention_backend)
        registry.set_active_backend(active)
    if config.compile.mode == "full":
        model.compile(backend=config.compile.backend)
    elif config.compile.mode == "regional":
        if getattr(model, "_repeated_blocks", None):  # diffusers' regional compilation (FLUX)
            model.compile_repeated_blocks(backend=config.compile.backend)
        else:  # models that declare no repeated blocks (SD3): each transformer block on its own
            for block in model.transformer_blocks:
                block.compile(backend=config.compile.backend)
    model._latentguard_runtime = wanted


def fingerprint(pipe: Pipeline) -> str:
    """Cheap identity of the denoiser: every parameter's name, shape and first values (not all bytes)."""
    h = hashlib.sha256()
    for name, p in pipe.transformer.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(p.detach().flatten()[:64].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def builtin_profile_path(model: str, variant: str = "fp32") -> Path:
    """Shipped profiles: `tiny-sd3.json` for the fp32 model, `tiny-sd3-int4.json` for a variant."""
    name = model if variant == "fp32" else f"{model}-{variant}"
    return Path(__file__).parent / "profiles" / f"{name}.json"


def drift_reference_path(profile: str | Path) -> Path:
    """A profile's fleet-drift reference lives next to it: tiny-sd3.json -> tiny-sd3.drift.safetensors."""
    return Path(profile).with_suffix(".drift.safetensors")


def canary_reference_path(profile: str | Path) -> Path:
    """A profile's canaries live next to it: tiny-sd3.json -> tiny-sd3.canaries.safetensors."""
    return Path(profile).with_suffix(".canaries.safetensors")


@dataclass
class Deployment:
    config: DeploymentConfig
    pipe: Pipeline
    family: FamilyOps
    fingerprint: str
    weight_bytes: int = 0  # stored size of the transformer's state (smaller for quantized variants)
    profile: CalibrationProfile | None = None
    detectors: dict[str, Detector] = field(default_factory=dict)
    policies: dict[str, DetectorPolicy] = field(default_factory=default_policies)
    drift: DriftReference | None = None  # what fleet drift compares this deployment's traffic with
    canaries: CanarySet | None = None  # recorded control-prompt canaries
    probe_layers: list[int] = field(default_factory=list)  # attention-probed blocks; [] when off
    # live calibration (core/live_calibration.py): collecting the served requests' statistics, and
    # (runs collected, runs needed) so far
    calibrating: bool = False
    calibration_runs: tuple[int, int] = (0, 0)

    @property
    def calibration(self) -> str:
        """What the report says of the guard: profile (calibrated), collecting (live calibration under
        way: non_finite only) or none (uncalibrated: non_finite only)."""
        return "profile" if self.profile is not None else ("collecting" if self.calibrating else "none")

    @property
    def name(self) -> str:
        return self.config.name


def quiet_library_logs() -> None:
    """diffusers and transformers log the text of a prompt they truncate (and loading chatter);
    prompts must never reach the logs, so their loggers only pass errors."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def load_deployment(config: DeploymentConfig, device: str = "cpu", with_profile: bool = True) -> Deployment:
    quiet_library_logs()
    pipe = load_pipeline(config, device)
    dep = Deployment(
        config=config,
        pipe=pipe,
        family=FAMILIES[config.family],
        fingerprint=fingerprint(pipe),
        weight_bytes=weight_bytes(pipe.transformer),
    )
    policies = default_policies()
    for name, pol in config.policies.items():
        policies[name] = DetectorPolicy(pol.action, pol.on_error)
    dep.policies = policies
    if config.attention.enabled:
        try:
            dep.probe_layers = attention_probes.install(pipe, config.family, config.attention.layers)
        except ValueError as exc:
            raise ModelLoadError(f"{config.name}: {exc}") from exc
    if with_profile:
        attach_profile(dep)
        attach_references(dep)
    return dep


def profile_path(config: DeploymentConfig) -> str | None:
    """The configured profile, or the one a built-in model ships (None: uncalibrated)."""
    if config.profile is None and config.model in BUILTIN_MODELS:
        candidate = builtin_profile_path(config.model, config.variant)
        return str(candidate) if candidate.is_file() else None
    return config.profile


def _load_reference(
    dep: Deployment,
    what: str,
    enabled: bool,
    configured: str | None,
    default: Path | None,
    load: Callable[[Path], Any],
) -> Any:
    """A drift or canary reference: the configured file (which must exist), else the one next to the
    profile if there is one; None when disabled or absent (logged)."""
    if not enabled:
        return None
    if configured is not None and not Path(configured).is_file():
        raise ModelLoadError(f"{dep.name}: {what} {configured} does not exist")
    path = Path(configured) if configured is not None else default
    if path is None or not path.is_file():
        log.warning("%s: no %s; it is off (run `latentguard %s`)", dep.name, what, what.replace(" ", "-"))
        return None
    try:
        reference = load(path)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelLoadError(f"{dep.name}: cannot read {what} {path}: {exc}") from exc
    if reference.fingerprint != dep.fingerprint:
        log.warning(
            "%s: %s %s was recorded on model %s but this model is %s; it will show the change",
            dep.name,
            what,
            path,
            reference.fingerprint,
            dep.fingerprint,
        )
    return reference


def attach_references(dep: Deployment) -> None:
    """The fleet-drift reference and the canaries, next to the profile unless configured."""
    cfg, profile = dep.config, profile_path(dep.config)
    drift_default = drift_reference_path(profile) if profile else None
    canary_default = canary_reference_path(profile) if profile else None
    dep.drift = _load_reference(
        dep, "drift reference", cfg.drift.enabled, cfg.drift.reference, drift_default, DriftReference.load
    )
    dep.canaries = _load_reference(
        dep, "canary reference", cfg.canaries.enabled, cfg.canaries.reference, canary_default, CanarySet.load
    )


def attach_profile(dep: Deployment) -> None:
    """The configured (or shipped) profile; a deployment calibrating from live traffic starts without
    one (core/live_calibration.py attaches its own)."""
    path = None if dep.config.live_calibration is not None else profile_path(dep.config)
    if path is None:
        if dep.config.live_calibration is None:
            log.warning(
                "%s: no calibration profile; only non_finite is active (run `latentguard calibrate`)",
                dep.name,
            )
        dep.detectors = {"non_finite": build_detectors()["non_finite"]}
        return
    activate_profile(dep, CalibrationProfile.load(path), path)


def activate_profile(dep: Deployment, profile: CalibrationProfile, path: str) -> None:
    """Score the deployment's requests with this profile's detectors from its next request on."""
    if profile.fingerprint != dep.fingerprint:
        log.warning(
            "%s: profile %s was calibrated on model %s but this model is %s; thresholds may not hold",
            dep.name,
            path,
            profile.fingerprint,
            dep.fingerprint,
        )
    detectors = profile.build()
    dep.profile, dep.detectors = profile, detectors
    _match_probes(dep, profile, path)


def new_profile(
    cfg: DeploymentConfig,
    fingerprint: str,
    sigmas: list[float],
    detectors: dict[str, Detector],
    report: CalibrationReport,
    notes: dict[str, Any],
) -> CalibrationProfile:
    """The profile of detectors calibrated for a deployment (of weights `fingerprint`) at its default
    schedule and size (`latentguard calibrate` and live calibration alike)."""
    return CalibrationProfile(
        deployment=cfg.name,
        fingerprint=fingerprint,
        steps=cfg.steps,
        height=cfg.height,
        width=cfg.width,
        guidance_scale=cfg.guidance_scale,
        sigmas=sigmas,
        detectors={name: det.state_dict() for name, det in detectors.items()},
        report=report,
        notes={**notes, "attention": probe_settings(cfg)},
    )


def probe_settings(config: DeploymentConfig) -> dict[str, Any] | None:
    """What a profile records of the attention probes it was calibrated with (None: without)."""
    att = config.attention
    return {"layers": att.layers, "max_tokens": att.max_tokens} if att.enabled else None


def _match_probes(dep: Deployment, profile: CalibrationProfile, path: str) -> None:
    """The attention detectors run only when this deployment probes what its profile was calibrated
    with; otherwise they are dropped (and the probes idle), with the reason in the log."""
    latent = latent_only(dep.detectors)
    calibrated = profile.notes.get("attention") == probe_settings(dep.config) and latent != dep.detectors
    if dep.probe_layers and calibrated:
        return
    if dep.probe_layers:
        log.warning(
            "%s: profile %s was not calibrated with these attention probes (%s); attention detectors "
            "are off (re-run `latentguard calibrate`)",
            dep.name,
            path,
            probe_settings(dep.config),
        )
    dep.probe_layers, dep.detectors = [], latent
