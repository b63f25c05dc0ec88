"""The plain request object and its validation (one typed error, with a clear message, per problem)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from latentguard.detectors import Drill, DrillSpecError
from latentguard.server.config import Limits
from latentguard.server.errors import InvalidArgument
from latentguard.server.pipelines.deployments import Deployment

MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class GenerateRequest:
    deployment: str
    prompt: str
    seed: int = 0
    steps: int = 0  # 0: the deployment's default
    width: int = 0
    height: int = 0
    guidance_scale: float | None = None
    drill: str = ""  # KIND[:step=N,strength=X]; empty for none
    return_trajectory: bool = False  # also return every step's latents (A/B comparisons)


@dataclass(frozen=True)
class ResolvedRequest:
    """A validated request with the deployment's defaults filled in."""

    deployment: str
    prompt: str
    seed: int
    steps: int
    width: int
    height: int
    guidance_scale: float
    drill: Drill | None
    return_trajectory: bool = False


def parse_drill(spec: str) -> Drill | None:
    if not spec:
        return None
    try:
        return Drill.parse(spec)
    except DrillSpecError as exc:
        raise InvalidArgument(f"malformed drill spec: {exc}") from None


def resolve(req: GenerateRequest, dep: Deployment, limits: Limits) -> ResolvedRequest:
    cfg = dep.config
    if not req.prompt.strip():
        raise InvalidArgument("prompt is empty")
    if len(req.prompt) > limits.max_prompt_chars:
        raise InvalidArgument(
            f"prompt has {len(req.prompt)} characters; the limit is {limits.max_prompt_chars}"
        )
    if not 0 <= req.seed <= MAX_SEED:
        raise InvalidArgument(f"seed must be in [0, 2^63 - 1], got {req.seed}")
    steps = req.steps or cfg.steps
    if req.steps < 0 or not 1 <= steps <= limits.max_steps:
        raise InvalidArgument(f"steps must be in [1, {limits.max_steps}], got {req.steps}")
    width, height = req.width or cfg.width, req.height or cfg.height
    multiple = dep.family.size_multiple(dep.pipe)
    for label, value in (("width", width), ("height", height)):
        if value <= 0:
            raise InvalidArgument(f"{label} must be positive, got {value}")
        if value % multiple:
            raise InvalidArgument(f"{label} must be a multiple of {multiple} for {dep.name}, got {value}")
        if value > limits.max_side:
            raise InvalidArgument(f"{label} {value} is above the limit of {limits.max_side}")
    guidance = cfg.guidance_scale if req.guidance_scale is None else req.guidance_scale
    if not 0 <= guidance <= 30:
        raise InvalidArgument(f"guidance_scale must be in [0, 30], got {guidance}")
    drill = parse_drill(req.drill)
    if drill is not None and drill.step >= steps:
        raise InvalidArgument(f"drill step {drill.step} is beyond the last step ({steps - 1})")
    if req.return_trajectory:
        per_step = 4 * math.prod(dep.family.latent_shape(dep.pipe, 1, height, width))
        megabytes = (steps + 1) * per_step / 2**20
        if megabytes > limits.max_trajectory_mb:
            raise InvalidArgument(
                f"the trajectory of {steps} steps at {width}x{height} is {megabytes:.0f} MiB; "
                f"the limit is {limits.max_trajectory_mb} MiB"
            )
    return ResolvedRequest(
        req.deployment, req.prompt, req.seed, steps, width, height, guidance, drill, req.return_trajectory
    )
