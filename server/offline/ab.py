"""`latentguard ab`: the same (prompt, seed) pairs through a baseline and a candidate deployment.

Runs come from a `Source` (ab_sources.py: in process or over gRPC), as `RunRecord`s. `compare` turns
the paired records into the
report: per-step divergence of latents and x0_hat, per-detector score deltas with Wilcoxon p-values,
flag rates with McNemar's exact test, PSNR / SSIM of the final images, wall time and memory per
variant, and a verdict against the gates. ab_report.py writes it out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from latentguard.server.offline import ab_stats
from latentguard.server.offline.ab_sources import RunRecord, Source, VariantInfo


class Gates(BaseModel):
    """What a candidate must meet to be judged acceptable against its baseline."""

    max_x0_divergence: float = Field(0.25, gt=0)  # mean relative L2 of the final step's x0_hat
    min_psnr_db: float = 20.0  # mean PSNR of the final images
    min_ssim: float = Field(0.8, le=1)  # mean SSIM of the final images
    max_flag_rate_increase: float = Field(0.05, ge=0)  # candidate - baseline, any detector
    max_score_shift: float = Field(1.0, gt=0)  # |median per-detector score delta| ...
    alpha: float = Field(0.05, gt=0, lt=1)  # ... that is significant at this level (Wilcoxon)


@dataclass(frozen=True)
class StepDivergence:
    sigma: float
    latents_rel_l2: float
    latents_cosine: float
    x0_rel_l2: float
    x0_cosine: float


@dataclass
class Pair:
    """Two runs of one (prompt, seed). Their trajectories are reduced to per-step divergence as soon as
    the pair is complete and then dropped, so memory does not grow with the number of pairs."""

    prompt: str
    seed: int
    baseline: RunRecord
    candidate: RunRecord
    steps: list[StepDivergence] = field(default_factory=list)

    @classmethod
    def of(cls, prompt: str, seed: int, baseline: RunRecord, candidate: RunRecord) -> Pair:
        b, c = baseline.trajectory, candidate.trajectory
        assert b is not None and c is not None
        steps = []
        for i in range(min(baseline.steps_run, candidate.steps_run)):
            c_x0, b_x0 = c.x0_hat(i), b.x0_hat(i)
            steps.append(
                StepDivergence(
                    sigma=b.sigmas[i],
                    latents_rel_l2=ab_stats.relative_l2(c.latents[i + 1], b.latents[i + 1]),
                    latents_cosine=ab_stats.cosine(c.latents[i + 1], b.latents[i + 1]),
                    x0_rel_l2=ab_stats.relative_l2(c_x0, b_x0),
                    x0_cosine=ab_stats.cosine(c_x0, b_x0),
                )
            )
        baseline.trajectory = candidate.trajectory = None
        return cls(prompt, seed, baseline, candidate, steps)


@dataclass
class AbReport:
    baseline: VariantInfo
    candidate: VariantInfo
    pairs: int
    drill: str
    divergence: list[dict[str, Any]]  # per step
    detectors: dict[str, dict[str, Any]]  # score deltas and flag rates per detector, and "any"
    images: dict[str, Any]
    cost: dict[str, dict[str, float | None]]
    gates: list[dict[str, Any]]
    acceptable: bool
    gate_config: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return _finite(asdict(self))


def _finite(obj: Any) -> Any:
    """JSON has no inf / nan: write them as null (PSNR of identical images is inf)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def pair_grid(prompts: list[str], seeds: int) -> list[tuple[str, int]]:
    """Each prompt with seeds 0..seeds-1 (the same seeds on both sides of every pair)."""
    return [(prompt, seed) for prompt in prompts for seed in range(seeds)]


def run_pairs(
    source: Source,
    baseline: str,
    candidate: str,
    items: list[tuple[str, int]],
    candidate_drill: str = "",
    on_run: Callable[[], None] | None = None,
) -> list[Pair]:
    """Each (prompt, seed) through both deployments (baseline first, then candidate)."""
    pairs = []
    for prompt, seed in items:
        base = source.run(baseline, prompt, seed, "")
        if on_run:
            on_run()
        cand = source.run(candidate, prompt, seed, candidate_drill)
        if on_run:
            on_run()
        pairs.append(Pair.of(prompt, seed, base, cand))
    return pairs


def _divergence(pairs: list[Pair]) -> list[dict[str, Any]]:
    """Per step, the spread over the pairs that ran it on both sides."""
    out = []
    for i in range(max((len(p.steps) for p in pairs), default=0)):
        at = [p.steps[i] for p in pairs if len(p.steps) > i]
        out.append(
            {
                "step": i,
                "sigma": at[0].sigma,
                **{
                    key: ab_stats.spread([getattr(s, key) for s in at])
                    for key in ("latents_rel_l2", "latents_cosine", "x0_rel_l2", "x0_cosine")
                },
            }
        )
    return out


def _detectors(pairs: list[Pair]) -> dict[str, dict[str, Any]]:
    names = sorted({n for p in pairs for n in p.baseline.flagged})
    out: dict[str, dict[str, Any]] = {}
    for name in [*names, "any"]:
        if name == "any":
            base_flags = [p.baseline.verdict != "pass" for p in pairs]
            cand_flags = [p.candidate.verdict != "pass" for p in pairs]
            deltas: list[float] = []
        else:
            base_flags = [p.baseline.flagged.get(name, False) for p in pairs]
            cand_flags = [p.candidate.flagged.get(name, False) for p in pairs]
            scored = [p for p in pairs if name in p.baseline.scores and name in p.candidate.scores]
            deltas = [p.candidate.scores[name] - p.baseline.scores[name] for p in scored]
            deltas = [d for d in deltas if math.isfinite(d)]
        b_only = sum(b and not c for b, c in zip(base_flags, cand_flags, strict=True))
        c_only = sum(c and not b for b, c in zip(base_flags, cand_flags, strict=True))
        out[name] = {
            "baseline_flag_rate": float(np.mean(base_flags)) if pairs else math.nan,
            "candidate_flag_rate": float(np.mean(cand_flags)) if pairs else math.nan,
            "baseline_only": b_only,
            "candidate_only": c_only,
            "mcnemar_p": ab_stats.mcnemar_exact_p(b_only, c_only),
        }
        if name != "any":
            out[name] |= {
                "score_delta": ab_stats.spread(deltas),
                "score_delta_median": float(np.median(deltas)) if deltas else math.nan,
                "wilcoxon_p": ab_stats.wilcoxon_p(deltas),
            }
    return out


def _images(pairs: list[Pair]) -> dict[str, Any]:
    both = [p for p in pairs if p.baseline.image is not None and p.candidate.image is not None]
    psnrs = [ab_stats.psnr(p.candidate.image, p.baseline.image) for p in both]
    ssims = [ab_stats.ssim(p.candidate.image, p.baseline.image) for p in both]
    finite = [x for x in psnrs if math.isfinite(x)]
    return {
        "compared": len(both),
        "skipped_aborted": len(pairs) - len(both),
        "identical": len(psnrs) - len(finite),
        "psnr_db": ab_stats.spread(finite) if finite else {"n": len(psnrs), "mean": math.inf},
        "ssim": ab_stats.spread(ssims),
    }


def _cost(pairs: list[Pair], info: VariantInfo, side: str) -> dict[str, float | None]:
    runs = [getattr(p, side) for p in pairs]
    peaks = [r.peak_rss_mb for r in runs if r.peak_rss_mb is not None]
    return {
        "seconds_per_run": float(np.mean([r.seconds for r in runs])),
        "peak_memory_mb": max(peaks) if peaks else None,
        "transformer_weights_mb": info.weight_mb,
    }


def compare(
    pairs: list[Pair], baseline: VariantInfo, candidate: VariantInfo, gates: Gates, drill: str = ""
) -> AbReport:
    if not pairs:
        raise ValueError("no pairs to compare")
    divergence = _divergence(pairs)
    detectors = _detectors(pairs)
    images = _images(pairs)
    final_x0 = divergence[-1]["x0_rel_l2"]["mean"] if divergence else math.inf
    if images["compared"]:
        psnr_mean, ssim_mean = images["psnr_db"]["mean"], images["ssim"]["mean"]
    else:
        psnr_mean, ssim_mean = -math.inf, -math.inf  # every pair aborted on one side: no images to judge
    flag_increase = detectors["any"]["candidate_flag_rate"] - detectors["any"]["baseline_flag_rate"]
    shifts = {
        n: d["score_delta_median"]
        for n, d in detectors.items()
        if n != "any" and d["wilcoxon_p"] < gates.alpha and math.isfinite(d["score_delta_median"])
    }
    worst = max(shifts.items(), key=lambda kv: abs(kv[1]), default=("", 0.0))
    checks = [
        ("final x0_hat divergence (mean rel. L2)", final_x0, "<=", gates.max_x0_divergence),
        ("final image PSNR (mean, dB)", psnr_mean, ">=", gates.min_psnr_db),
        ("final image SSIM (mean)", ssim_mean, ">=", gates.min_ssim),
        ("flag rate increase (any detector)", flag_increase, "<=", gates.max_flag_rate_increase),
        (
            f"significant score shift {worst[0] or '(none)'} (median)",
            abs(worst[1]),
            "<=",
            gates.max_score_shift,
        ),
    ]
    results = [
        {"gate": g, "value": v, "op": op, "limit": lim, "passed": bool(v <= lim if op == "<=" else v >= lim)}
        for g, v, op, lim in checks
    ]
    return AbReport(
        baseline=baseline,
        candidate=candidate,
        pairs=len(pairs),
        drill=drill,
        divergence=divergence,
        detectors=detectors,
        images=images,
        cost={
            "baseline": _cost(pairs, baseline, "baseline"),
            "candidate": _cost(pairs, candidate, "candidate"),
        },
        gates=results,
        acceptable=all(r["passed"] for r in results),
        gate_config=gates.model_dump(),
    )
