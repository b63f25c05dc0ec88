"""Settings: one pydantic-settings object, built in main() from a YAML file plus environment overrides.

Environment variables use the prefix LATENTGUARD_ and `__` for nesting, e.g.
LATENTGUARD_LIMITS__MAX_STEPS=50 or LATENTGUARD_PORT=50052.

The config fails closed: every section refuses unknown keys, and a mistake reads as one line per
problem with the file, the key's path and the closest valid name,

    config.yaml: deployments[0].gudance_scale: unknown key (did you mean 'guidance_scale'?)
    tokens.yaml: [0].deployments: required

so that a misspelt key never starts the server with a default that opens access (a TLS section with
`client-ca:` would otherwise serve without mutual TLS). The CLI turns ConfigError into exit code 2.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from latentguard.detectors import DETECTOR_NAMES, Action, OnError, drift
from latentguard.server.errors import NotFound


class StrictModel(BaseModel):
    """Base of every config section: an unknown key is an error, never ignored."""

    model_config = ConfigDict(extra="forbid")


class ConfigError(ValueError):
    """A config file (or tokens file) that does not validate; the message names each bad key."""

    @classmethod
    def from_validation(cls, exc: ValidationError, source: str, model: Any) -> ConfigError:
        lines = [f"{source}: {_describe(err, model)}" for err in exc.errors()]
        return cls("\n".join(lines))


def key_path(loc: tuple[int | str, ...]) -> str:
    """('deployments', 0, 'gudance_scale') -> 'deployments[0].gudance_scale'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(err: Any, model: Any) -> str:
    loc = tuple(err["loc"])
    where = key_path(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        valid = _fields_at(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(sorted(valid))}"
        return f"{where}: unknown key ({hint})"
    if err["type"] == "missing":
        return f"{where}: required"
    return f"{where}: {err['msg']}"


def _fields_at(model: Any, loc: tuple[int | str, ...]) -> list[str]:
    """The keys valid where `loc` points: walk the annotations through models, lists, dicts, Optionals."""
    tp = model
    for key in loc:
        tp = _step(tp, key)
        if tp is None:
            return []
    tp = _strip_optional(tp)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _step(tp: Any, key: int | str) -> Any:
    tp = _strip_optional(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list and isinstance(key, int):
        return args[0]
    if origin is dict:
        return args[1]
    if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(key, str):
        field = tp.model_fields.get(key)
        return field.annotation if field is not None else None
    return None


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return inner[0] if len(inner) == 1 else tp
    return tp


Family = Literal["sd3", "flux"]
Variant = Literal["fp32", "bf16", "fp16", "fp8", "int4", "nf4"]
BUILTIN_MODELS = ("tiny-sd3", "tiny-flux")


class Limits(StrictModel):
    max_steps: int = Field(100, ge=1)
    max_side: int = Field(1024, ge=16)
    max_prompt_chars: int = Field(2000, ge=1)
    max_trajectory_mb: int = Field(48, ge=1)  # return_trajectory responses (below max_message_mb)


class PolicyConfig(StrictModel):
    action: Action = Action.ANNOTATE
    on_error: OnError = OnError.FAIL_OPEN


class AdapterConfig(StrictModel):
    """A LoRA adapter applied to the deployment's denoiser (diffusers `load_lora_weights`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # also the `adapter` metric label
    path: str  # a local .safetensors file in diffusers' LoRA layout, or the folder holding one
    scale: float = 1.0


class AttentionConfig(StrictModel):
    """Attention probes (server/pipelines/attention_probes.py) and the detectors attention_entropy and
    attention_rank that read them. The profile must have been calibrated with the same probes."""

    enabled: bool = True
    # joint-attention blocks (transformer_blocks) to probe; None: up to 4, spread evenly, last included
    layers: list[int] | None = None
    max_tokens: int = Field(64, ge=8, le=4096)  # image tokens sampled per probed block and step


class DriftConfig(StrictModel):
    """Fleet drift of this deployment's requests against its drift reference (server/core/drift.py)."""

    enabled: bool = True  # needs a reference; without one the deployment logs that drift is off
    reference: str | None = None  # default: next to the profile (`latentguard drift-reference` writes it)
    every: int = Field(drift.EVERY, ge=1)  # re-score the window after this many new comparable requests
    permutations: int = Field(2000, ge=99, le=100_000)  # MMD permutation p-value


class CanaryPrompt(StrictModel):
    prompt: str = Field(min_length=1)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    steps: int | None = Field(None, ge=1)  # None: the deployment's default


def default_canaries() -> list[CanaryPrompt]:
    return [
        CanaryPrompt(prompt="a red circle on a blue background", seed=1),
        CanaryPrompt(prompt="two yellow squares on a white background", seed=2),
        CanaryPrompt(prompt="a large green triangle at the top left on a black background", seed=3),
    ]


class CanaryConfig(StrictModel):
    """Control-prompt canaries (server/core/canaries.py): fixed prompts and seeds whose trajectories
    are recorded once (`latentguard canary-reference`) and compared when the server is idle."""

    enabled: bool = True  # needs a reference; without one the deployment logs that canaries are off
    prompts: list[CanaryPrompt] = Field(default_factory=default_canaries)  # what canary-reference records
    reference: str | None = None  # default: next to the profile, NAME.canaries.safetensors
    interval_seconds: float = Field(300.0, gt=0)  # a round of canaries at most this often
    max_wait_seconds: float = Field(60.0, ge=0)  # for the server to be idle; then the round is skipped
    # divergence above which the model no longer matches its reference: CPU runs are deterministic
    # (0 measured); GPU kernels are not bitwise reproducible across batch shapes and libraries, so
    # raise it there after measuring an unchanged model (README, "Canaries")
    tolerance: float = Field(1e-3, gt=0)


class CompileConfig(StrictModel):
    """torch.compile of the deployment's transformer, at load (the first requests pay the compile)."""

    model_config = ConfigDict(extra="forbid", frozen=True)  # hashable: part of the loaded model's key

    mode: Literal["off", "full", "regional"] = "off"  # regional: each repeated transformer block
    backend: str = "inductor"  # torch.compile backend (tests use "eager": the graph capture alone)


def default_state_dir() -> str:
    """Where a server keeps what it learns while serving ($XDG_STATE_HOME/latentguard)."""
    import os

    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "latentguard")


class LiveCalibrationConfig(StrictModel):
    """Calibrate a deployment without a profile from the requests it serves (core/live_calibration.py):
    annotate-only with non_finite until enough requests at the deployment's defaults have run, then
    the detectors are fitted and thresholded jointly as `latentguard calibrate` does and go live.
    `live_calibration: true` takes every default."""

    state_dir: str = Field(default_factory=default_state_dir)  # collected runs and the fitted profiles
    fpr: float = Field(0.01, gt=0, lt=1)  # per-request false-positive rate of the profile
    confidence: float = Field(0.9, gt=0, lt=1)
    held_out_runs: int | None = Field(None, ge=1)  # None: the fewest the detectors need at fpr
    checkpoint_every: int = Field(16, ge=1)  # persist the collected runs every this many


class EvidenceConfig(StrictModel):
    """Evidence bundles (server/evidence/): what a flagged or aborted request looked like, kept for a
    person to look at (`latentguard evidence ls|show|export`). Written off the request path; a store
    that fails never fails or delays a request (latentguard_evidence_writes_total{outcome="error"})."""

    store: str = Field(min_length=1)  # file:///dir or any fsspec URL (s3://bucket/prefix needs s3fs)
    storage_options: dict[str, Any] = Field(default_factory=dict)  # passed to fsspec (endpoint_url, ...)
    sample_passing: float = Field(0.0, ge=0, le=1)  # share of passing requests kept too, for contrast
    max_bundles: int = Field(1000, ge=1)  # then the oldest are deleted
    max_megabytes: float = Field(1024.0, gt=0)
    max_pending: int = Field(32, ge=1)  # bundles waiting to be written; more are dropped (counted)
    # the prompt is kept only as HMAC-SHA256 under this key unless store_prompts; without a key file a
    # random key per process (hashes then compare only within one process's bundles)
    store_prompts: bool = False
    prompt_key_file: str | None = None


class DeploymentConfig(StrictModel):
    name: str
    model: str  # "tiny-sd3" | "tiny-flux" | a local diffusers folder | a hub id
    family: Family
    variant: Variant = "fp32"
    steps: int = Field(12, ge=1)
    width: int = 256
    height: int = 256
    guidance_scale: float = 4.5
    # FLUX only: classifier-free guidance against an empty negative prompt (diffusers' true_cfg_scale:
    # a second transformer call per step), for FLUX models trained with caption dropout and without a
    # guidance embedding, such as tiny-flux; a guidance-distilled FLUX.1-dev takes guidance_scale. 1: off
    true_cfg_scale: float = Field(1.0, ge=1.0)
    max_sequence_length: int | None = None  # T5 tokens; None: the pipeline's default
    max_queue: int = Field(8, ge=0)  # requests waiting beyond the one running; more are refused
    # dynamic batching (core/batching.py): up to max_batch_size admitted requests of the same steps,
    # size and guidance run as one pipeline call; a lone request waits at most max_batch_delay_ms
    max_batch_size: int = Field(8, ge=1, le=64)
    max_batch_delay_ms: float = Field(5.0, ge=0, le=1000)
    profile: str | None = None  # calibration profile path; built-in models ship their own
    baseline: str | None = None  # for a quantized candidate: the 16-bit deployment it may replace
    policies: dict[str, PolicyConfig] = Field(default_factory=dict)
    adapters: list[AdapterConfig] = Field(default_factory=list)
    # replay a flagged request with the adapters disabled and say in its report whether the artifact
    # goes away (costs a second run per flagged request)
    attribution: bool = False
    attention: AttentionConfig = Field(default_factory=AttentionConfig)
    # diffusers' attention backend for the transformer (set_attention_backend: native, _native_math,
    # flash, sage, xformers, flex, ...); None: the model's default. The probes read backends that call
    # scaled_dot_product_attention; with others the attention detectors fail open (logged, counted)
    attention_backend: str | None = None
    compile: CompileConfig = Field(default_factory=lambda: CompileConfig())
    drift: DriftConfig = Field(default_factory=DriftConfig)
    canaries: CanaryConfig = Field(default_factory=CanaryConfig)
    evidence: EvidenceConfig | None = None  # None: no bundles kept
    live_calibration: LiveCalibrationConfig | None = None  # true: calibrate from served traffic

    @field_validator("live_calibration", mode="before")
    @classmethod
    def _live_calibration_flag(cls, value: Any) -> Any:
        return {} if value is True else (None if value is False else value)

    @model_validator(mode="after")
    def _known_detectors(self) -> DeploymentConfig:
        if self.live_calibration is not None and self.profile is not None:
            raise ValueError("live_calibration calibrates a deployment without a profile: remove `profile`")
        names = [a.name for a in self.adapters]
        if len(set(names)) != len(names):
            raise ValueError(f"adapter names must be unique, got {names}")
        if self.adapters and self.variant not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"adapters need a 16/32-bit variant (fp32, bf16, fp16), not {self.variant}")
        if self.attribution and not self.adapters:
            raise ValueError("attribution replays requests without the adapters: list at least one adapter")
        if self.true_cfg_scale > 1 and self.family != "flux":
            raise ValueError("true_cfg_scale is FLUX's; SD3 pipelines guide with guidance_scale")
        if self.attention_backend is not None:
            from diffusers.models.attention_dispatch import AttentionBackendName

            known = [b.value for b in AttentionBackendName]
            if self.attention_backend not in known:
                raise ValueError(f"attention_backend {self.attention_backend!r} is not one of {known}")
        unknown = set(self.policies) - set(DETECTOR_NAMES)
        if unknown:
            raise ValueError(
                f"unknown detector(s) in policies: {sorted(unknown)}; known: {list(DETECTOR_NAMES)}"
            )
        return self


class ShadowConfig(StrictModel):
    """Mirror a fraction of `baseline`'s Generate requests to `candidate` with the same prompt and seed."""

    baseline: str
    candidate: str
    fraction: float = Field(0.1, ge=0, le=1)
    max_pending: int = Field(1, ge=1)  # shadow runs waiting or running at once; more are skipped
    max_wait_seconds: float = Field(10.0, ge=0)  # for the server to be idle; then the run is skipped


class TlsConfig(StrictModel):
    """TLS for the gRPC port (and, with `metrics`, the /metrics port). Files are PEM; certificate and
    key are read again when they change (checked at each new connection), so a rotated certificate
    needs no restart."""

    cert: str  # certificate chain
    key: str
    client_ca: str | None = None  # set: mutual TLS, clients must present a certificate signed by it
    metrics: bool = True  # serve /metrics over TLS with the same certificate (scrapers then need the CA)


class TokenConfig(StrictModel):
    """One bearer token, stored as its SHA-256 (`latentguard token-hash` prints the entry)."""

    name: str  # for the logs; never a metric label
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    # no default: a token's rights are written down, never implied ("*" says every deployment)
    deployments: list[str] = Field(min_length=1)
    inspect: bool = False  # may call Inspect (sidecar mode)


class AuthConfig(StrictModel):
    """Bearer tokens in the `authorization` metadata, checked by one interceptor. With no tokens (and
    no tokens_file) authentication is off."""

    tokens: list[TokenConfig] = Field(default_factory=list)
    tokens_file: str | None = None  # YAML or JSON list of token entries, read at start
    open_services: list[str] = Field(
        default_factory=lambda: ["grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"]
    )

    def all_tokens(self) -> list[TokenConfig]:
        """The inline tokens and those of tokens_file, each entry validated (ConfigError naming the file)."""
        if self.tokens_file is None:
            return list(self.tokens)
        loaded = yaml.safe_load(Path(self.tokens_file).read_text()) or []
        if not isinstance(loaded, list):
            raise ConfigError(f"{self.tokens_file}: expected a list of token entries")
        try:
            from_file = _TOKEN_LIST.validate_python(loaded)
        except ValidationError as exc:
            raise ConfigError.from_validation(exc, self.tokens_file, list[TokenConfig]) from None
        return [*self.tokens, *from_file]

    @property
    def enabled(self) -> bool:
        return bool(self.tokens) or self.tokens_file is not None


_TOKEN_LIST = TypeAdapter(list[TokenConfig])


class ConnectionLimits(StrictModel):
    """What one client can hold: sessions that send nothing, streams per connection, connections that
    live forever, pings that flood."""

    inspect_idle_seconds: float = Field(30.0, gt=0)  # an Inspect stream silent this long is closed
    max_concurrent_streams: int = Field(32, ge=1)  # per connection
    max_connection_idle_seconds: float = Field(300.0, gt=0)
    max_connection_age_seconds: float = Field(3600.0, gt=0)  # then GOAWAY: clients reconnect, balance
    max_connection_age_grace_seconds: float = Field(60.0, ge=0)
    min_ping_interval_seconds: float = Field(10.0, gt=0)  # clients pinging more often are cut off

    def grpc_options(self) -> list[tuple[str, int]]:
        ms = lambda seconds: int(seconds * 1000)  # noqa: E731
        return [
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.max_connection_idle_ms", ms(self.max_connection_idle_seconds)),
            ("grpc.max_connection_age_ms", ms(self.max_connection_age_seconds)),
            ("grpc.max_connection_age_grace_ms", ms(self.max_connection_age_grace_seconds)),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", ms(self.min_ping_interval_seconds)),
            ("grpc.http2.max_ping_strikes", 2),
            ("grpc.keepalive_permit_without_calls", 0),
        ]


def builtin_deployments() -> list[DeploymentConfig]:
    """tiny-sd3 and tiny-flux, plus FP8 and int4 candidates of tiny-sd3 (sharing its encoders and VAE)."""
    sd3 = DeploymentConfig(name="tiny-sd3", model="tiny-sd3", family="sd3", max_sequence_length=32)
    return [
        sd3,
        DeploymentConfig(
            name="tiny-flux",
            model="tiny-flux",
            family="flux",
            guidance_scale=3.5,
            true_cfg_scale=3.0,  # chosen on calibration prompts (README, Built-in models)
            max_sequence_length=32,
        ),
        sd3.model_copy(update={"name": "tiny-sd3-fp8", "variant": "fp8", "baseline": "tiny-sd3"}),
        sd3.model_copy(update={"name": "tiny-sd3-int4", "variant": "int4", "baseline": "tiny-sd3"}),
    ]


class TracingConfig(StrictModel):
    """OpenTelemetry tracing (needs the `tracing` extra): one span per request, an event per detector's
    first flagged step; the trace id goes into the report, the evidence and the metrics' exemplars."""

    otlp_endpoint: str = Field(min_length=1)  # OTLP/HTTP, e.g. http://otel-collector:4318/v1/traces
    service_name: str = "latentguard"
    sample_ratio: float = Field(1.0, ge=0, le=1)  # share of requests traced (parent-based ratio)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LATENTGUARD_", env_nested_delimiter="__", extra="forbid")

    deployments: list[DeploymentConfig] = Field(default_factory=builtin_deployments)
    shadow: list[ShadowConfig] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    backend: Literal["auto", "triton", "reference"] = "auto"
    # CPU only: compile the torch path's statistics with inductor (a C++ compiler) for each
    # deployment's default latent size at start (40-80 s each cold; cached on disk): 1.2-2x faster at
    # two threads, not at Inspect's one (docs/benchmarks.md); other sizes and failures run eager
    compile_stats: bool = False
    device: str = "cpu"
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 9464
    max_message_mb: int = Field(64, ge=1)  # images and latents; 16x128x128 fp32 latents are 1 MiB
    max_inspect_sessions: int = Field(16, ge=1)
    grace_seconds: float = Field(30.0, ge=0)  # SIGTERM: how long requests in flight may finish
    warmup: bool = True  # one short generation per deployment before reporting SERVING
    tls: TlsConfig | None = None  # None: plaintext (loopback, or behind a TLS-terminating mesh)
    health_port: int | None = None  # a plaintext port with grpc.health.v1 only, for kubelet's gRPC probes
    auth: AuthConfig = Field(default_factory=AuthConfig)
    connections: ConnectionLimits = Field(default_factory=ConnectionLimits)
    tracing: TracingConfig | None = None  # None: no spans

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        names = [d.name for d in self.deployments]
        if len(set(names)) != len(names):
            raise ValueError(f"deployment names must be unique, got {names}")
        for d in self.deployments:
            if d.baseline is not None and (d.baseline not in names or d.baseline == d.name):
                raise ValueError(f"deployment {d.name}: baseline {d.baseline!r} must name another deployment")
        for s in self.shadow:
            if s.baseline not in names or s.candidate not in names or s.baseline == s.candidate:
                raise ValueError(
                    f"shadow {s.baseline} -> {s.candidate}: both must be configured deployments, and differ"
                )
        return self

    def missing_files(self) -> list[tuple[str, str]]:
        """(key path, file) for each file the config names that does not exist (`config check`)."""
        named: list[tuple[str, str | None]] = [("auth.tokens_file", self.auth.tokens_file)]
        if self.tls is not None:
            named += [("tls.cert", self.tls.cert), ("tls.key", self.tls.key)]
            named += [("tls.client_ca", self.tls.client_ca)]
        for i, d in enumerate(self.deployments):
            at = f"deployments[{i}]"
            named += [(f"{at}.profile", d.profile), (f"{at}.drift.reference", d.drift.reference)]
            named += [(f"{at}.canaries.reference", d.canaries.reference)]
            named += [(f"{at}.adapters[{j}].path", a.path) for j, a in enumerate(d.adapters)]
            if d.evidence is not None:
                named += [(f"{at}.evidence.prompt_key_file", d.evidence.prompt_key_file)]
        return [(key, path) for key, path in named if path is not None and not Path(path).exists()]

    def deployment(self, name: str) -> DeploymentConfig:
        """The configured deployment of that name (NotFound otherwise)."""
        for cfg in self.deployments:
            if cfg.name == name:
                return cfg
        raise NotFound.deployment(name, [d.name for d in self.deployments])

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # environment beats the YAML file (passed as init kwargs) beats defaults
        return env_settings, init_settings

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> Settings:
        """Defaults < YAML file < environment < `overrides` (command-line flags; None means unset).

        Raises ConfigError (a ValueError) naming the file and each bad key's path. The tokens file is
        read where it is used (`serve` at start, before any model loads; `config check`), so offline
        commands run with a production config on a machine without its secrets."""
        data: dict[str, Any] = {}
        source = str(path) if path is not None else "settings"
        if path is not None:
            try:
                loaded = yaml.safe_load(Path(path).read_text()) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: not valid YAML: {exc}") from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"{path}: expected a mapping at the top level")
            data.update(loaded)
        flags = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(flags) - set(cls.model_fields)
        if unknown:
            raise ConfigError(f"unknown setting(s): {sorted(unknown)}")
        try:
            settings = cls(**data)
        except ValidationError as exc:
            raise ConfigError.from_validation(exc, source, cls) from None
        return settings.model_copy(update=flags) if flags else settings


SECRET_KEYS = frozenset({"sha256"})  # redacted wherever they appear in printed settings


def effective_settings(settings: Settings) -> dict[str, Any]:
    """The settings as plain data with every default filled in and secrets redacted (`config check`);
    the tokens file's entries are shown under auth.tokens_file_entries."""
    data = settings.model_dump(mode="json")
    if settings.auth.tokens_file is not None:
        from_file = settings.auth.all_tokens()[len(settings.auth.tokens) :]
        data["auth"]["tokens_file_entries"] = [t.model_dump(mode="json") for t in from_file]
    return _redact(data)


def _redact(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: "<redacted>" if k in SECRET_KEYS else _redact(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_redact(v) for v in node]
    return node
