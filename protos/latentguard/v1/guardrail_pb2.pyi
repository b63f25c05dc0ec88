from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("deployment", "prompt", "seed", "steps", "width", "height", "guidance_scale", "drill", "skip_image", "return_trajectory")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    DRILL_FIELD_NUMBER: _ClassVar[int]
    SKIP_IMAGE_FIELD_NUMBER: _ClassVar[int]
    RETURN_TRAJECTORY_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    prompt: str
    seed: int
    steps: int
    width: int
    height: int
    guidance_scale: float
    drill: str
    skip_image: bool
    return_trajectory: bool
    def __init__(self, deployment: _Optional[str] = ..., prompt: _Optional[str] = ..., seed: _Optional[int] = ..., steps: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., drill: _Optional[str] = ..., skip_image: bool = ..., return_trajectory: bool = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("data", "dtype", "shape")
    DATA_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, data: _Optional[bytes] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class Trajectory(_message.Message):
    __slots__ = ("sigmas", "latents")
    SIGMAS_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    sigmas: _containers.RepeatedScalarFieldContainer[float]
    latents: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, sigmas: _Optional[_Iterable[float]] = ..., latents: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class DetectorResult(_message.Message):
    __slots__ = ("name", "score", "threshold", "flagged", "first_step", "error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    FIRST_STEP_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    score: float
    threshold: float
    flagged: bool
    first_step: int
    error: str
    def __init__(self, name: _Optional[str] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., flagged: bool = ..., first_step: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class StepReport(_message.Message):
    __slots__ = ("step", "sigma", "scores", "mean", "var", "hf_ratio", "sr_peak", "nonfinite", "guard_seconds", "attention_entropy", "attention_rank")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STEP_FIELD_NUMBER: _ClassVar[int]
    SIGMA_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    VAR_FIELD_NUMBER: _ClassVar[int]
    HF_RATIO_FIELD_NUMBER: _ClassVar[int]
    SR_PEAK_FIELD_NUMBER: _ClassVar[int]
    NONFINITE_FIELD_NUMBER: _ClassVar[int]
    GUARD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_RANK_FIELD_NUMBER: _ClassVar[int]
    step: int
    sigma: float
    scores: _containers.ScalarMap[str, float]
    mean: float
    var: float
    hf_ratio: float
    sr_peak: float
    nonfinite: int
    guard_seconds: float
    attention_entropy: float
    attention_rank: float
    def __init__(self, step: _Optional[int] = ..., sigma: _Optional[float] = ..., scores: _Optional[_Mapping[str, float]] = ..., mean: _Optional[float] = ..., var: _Optional[float] = ..., hf_ratio: _Optional[float] = ..., sr_peak: _Optional[float] = ..., nonfinite: _Optional[int] = ..., guard_seconds: _Optional[float] = ..., attention_entropy: _Optional[float] = ..., attention_rank: _Optional[float] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("total_seconds", "guard_seconds", "guard_seconds_per_step")
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GUARD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GUARD_SECONDS_PER_STEP_FIELD_NUMBER: _ClassVar[int]
    total_seconds: float
    guard_seconds: float
    guard_seconds_per_step: float
    def __init__(self, total_seconds: _Optional[float] = ..., guard_seconds: _Optional[float] = ..., guard_seconds_per_step: _Optional[float] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("verdict", "deployment", "family", "variant", "seed", "steps_requested", "steps_run", "aborted_at_step", "drill", "detectors", "steps", "timings", "profile", "profile_exact", "attribution", "request_id", "trace_id", "calibration")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STEPS_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    STEPS_RUN_FIELD_NUMBER: _ClassVar[int]
    ABORTED_AT_STEP_FIELD_NUMBER: _ClassVar[int]
    DRILL_FIELD_NUMBER: _ClassVar[int]
    DETECTORS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    PROFILE_EXACT_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    verdict: str
    deployment: str
    family: str
    variant: str
    seed: int
    steps_requested: int
    steps_run: int
    aborted_at_step: int
    drill: str
    detectors: _containers.RepeatedCompositeFieldContainer[DetectorResult]
    steps: _containers.RepeatedCompositeFieldContainer[StepReport]
    timings: Timings
    profile: str
    profile_exact: bool
    attribution: Attribution
    request_id: str
    trace_id: str
    calibration: str
    def __init__(self, verdict: _Optional[str] = ..., deployment: _Optional[str] = ..., family: _Optional[str] = ..., variant: _Optional[str] = ..., seed: _Optional[int] = ..., steps_requested: _Optional[int] = ..., steps_run: _Optional[int] = ..., aborted_at_step: _Optional[int] = ..., drill: _Optional[str] = ..., detectors: _Optional[_Iterable[_Union[DetectorResult, _Mapping]]] = ..., steps: _Optional[_Iterable[_Union[StepReport, _Mapping]]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., profile: _Optional[str] = ..., profile_exact: bool = ..., attribution: _Optional[_Union[Attribution, _Mapping]] = ..., request_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., calibration: _Optional[str] = ...) -> None: ...

class Attribution(_message.Message):
    __slots__ = ("adapters", "verdict_without_adapters", "flagged_without_adapters", "adapters_caused")
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    VERDICT_WITHOUT_ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_WITHOUT_ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_CAUSED_FIELD_NUMBER: _ClassVar[int]
    adapters: _containers.RepeatedScalarFieldContainer[str]
    verdict_without_adapters: str
    flagged_without_adapters: _containers.RepeatedScalarFieldContainer[str]
    adapters_caused: bool
    def __init__(self, adapters: _Optional[_Iterable[str]] = ..., verdict_without_adapters: _Optional[str] = ..., flagged_without_adapters: _Optional[_Iterable[str]] = ..., adapters_caused: bool = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("image_png", "report", "trajectory")
    IMAGE_PNG_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORY_FIELD_NUMBER: _ClassVar[int]
    image_png: bytes
    report: Report
    trajectory: Trajectory
    def __init__(self, image_png: _Optional[bytes] = ..., report: _Optional[_Union[Report, _Mapping]] = ..., trajectory: _Optional[_Union[Trajectory, _Mapping]] = ...) -> None: ...

class StepEvent(_message.Message):
    __slots__ = ("step", "total_steps", "scores", "flagged", "verdict")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    scores: _containers.ScalarMap[str, float]
    flagged: _containers.RepeatedScalarFieldContainer[str]
    verdict: str
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., scores: _Optional[_Mapping[str, float]] = ..., flagged: _Optional[_Iterable[str]] = ..., verdict: _Optional[str] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("step", "result")
    STEP_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    step: StepEvent
    result: GenerateResponse
    def __init__(self, step: _Optional[_Union[StepEvent, _Mapping]] = ..., result: _Optional[_Union[GenerateResponse, _Mapping]] = ...) -> None: ...

class InspectFrame(_message.Message):
    __slots__ = ("deployment", "sigmas", "step", "latents", "dtype", "shape")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    SIGMAS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    sigmas: _containers.RepeatedScalarFieldContainer[float]
    step: int
    latents: bytes
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, deployment: _Optional[str] = ..., sigmas: _Optional[_Iterable[float]] = ..., step: _Optional[int] = ..., latents: _Optional[bytes] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class InspectVerdict(_message.Message):
    __slots__ = ("step", "verdict", "flagged", "scores", "report", "total_steps")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STEP_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    step: int
    verdict: str
    flagged: _containers.RepeatedScalarFieldContainer[str]
    scores: _containers.ScalarMap[str, float]
    report: Report
    total_steps: int
    def __init__(self, step: _Optional[int] = ..., verdict: _Optional[str] = ..., flagged: _Optional[_Iterable[str]] = ..., scores: _Optional[_Mapping[str, float]] = ..., report: _Optional[_Union[Report, _Mapping]] = ..., total_steps: _Optional[int] = ...) -> None: ...

class ListDeploymentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeploymentInfo(_message.Message):
    __slots__ = ("name", "family", "variant", "model", "default_steps", "default_width", "default_height", "profile", "detectors", "transformer_bytes", "adapters", "attribution", "drift", "canaries", "attention_probes", "calibration", "calibration_runs", "calibration_runs_needed")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_STEPS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    DETECTORS_FIELD_NUMBER: _ClassVar[int]
    TRANSFORMER_BYTES_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    CANARIES_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_PROBES_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_RUNS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_RUNS_NEEDED_FIELD_NUMBER: _ClassVar[int]
    name: str
    family: str
    variant: str
    model: str
    default_steps: int
    default_width: int
    default_height: int
    profile: str
    detectors: _containers.RepeatedScalarFieldContainer[str]
    transformer_bytes: int
    adapters: _containers.RepeatedCompositeFieldContainer[Adapter]
    attribution: bool
    drift: bool
    canaries: int
    attention_probes: _containers.RepeatedScalarFieldContainer[int]
    calibration: str
    calibration_runs: int
    calibration_runs_needed: int
    def __init__(self, name: _Optional[str] = ..., family: _Optional[str] = ..., variant: _Optional[str] = ..., model: _Optional[str] = ..., default_steps: _Optional[int] = ..., default_width: _Optional[int] = ..., default_height: _Optional[int] = ..., profile: _Optional[str] = ..., detectors: _Optional[_Iterable[str]] = ..., transformer_bytes: _Optional[int] = ..., adapters: _Optional[_Iterable[_Union[Adapter, _Mapping]]] = ..., attribution: bool = ..., drift: bool = ..., canaries: _Optional[int] = ..., attention_probes: _Optional[_Iterable[int]] = ..., calibration: _Optional[str] = ..., calibration_runs: _Optional[int] = ..., calibration_runs_needed: _Optional[int] = ...) -> None: ...

class Adapter(_message.Message):
    __slots__ = ("name", "scale")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    name: str
    scale: float
    def __init__(self, name: _Optional[str] = ..., scale: _Optional[float] = ...) -> None: ...

class ListDeploymentsResponse(_message.Message):
    __slots__ = ("deployments",)
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[DeploymentInfo]
    def __init__(self, deployments: _Optional[_Iterable[_Union[DeploymentInfo, _Mapping]]] = ...) -> None: ...

class RunCanariesRequest(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    def __init__(self, deployment: _Optional[str] = ...) -> None: ...

class CanaryResult(_message.Message):
    __slots__ = ("prompt", "seed", "steps", "divergence", "first_divergent_step")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    DIVERGENCE_FIELD_NUMBER: _ClassVar[int]
    FIRST_DIVERGENT_STEP_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    seed: int
    steps: int
    divergence: float
    first_divergent_step: int
    def __init__(self, prompt: _Optional[str] = ..., seed: _Optional[int] = ..., steps: _Optional[int] = ..., divergence: _Optional[float] = ..., first_divergent_step: _Optional[int] = ...) -> None: ...

class RunCanariesResponse(_message.Message):
    __slots__ = ("deployment", "canaries", "divergence", "tolerance", "changed")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    CANARIES_FIELD_NUMBER: _ClassVar[int]
    DIVERGENCE_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    canaries: _containers.RepeatedCompositeFieldContainer[CanaryResult]
    divergence: float
    tolerance: float
    changed: bool
    def __init__(self, deployment: _Optional[str] = ..., canaries: _Optional[_Iterable[_Union[CanaryResult, _Mapping]]] = ..., divergence: _Optional[float] = ..., tolerance: _Optional[float] = ..., changed: bool = ...) -> None: ...
