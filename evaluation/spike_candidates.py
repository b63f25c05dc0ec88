"""Which per-step statistic separates a stuck value (the spike drill) from benign runs at its onset:
the study behind `stuck_value` (README, Evaluation, "Reading it").

    python evaluation/spike_candidates.py [--deployment tiny-sd3] [--fit 600] [--held-out 2000]
        [--per-onset 64] [--strength 0.3]

Benign runs on the calibration prompts, split by prompt as calibration splits them (envelopes on
`--fit` runs of the fit prompts, thresholds on `--held-out` runs of the others); spike runs on the
evaluation prompts with onsets 2, 4, 6, 8. Each candidate is computed from x0_hat itself (recorded
trajectories, not the kernel), normalised per step like a detector part (mean and tail-matched
scale on the fit runs), thresholded at the second-highest held-out request score, and scored by
the fraction of spike runs above it within 2 steps of the onset. Candidates, per pixel p, with
z_c(p) the value minus the mean of its 8 neighbours (edges replicated), standardised per channel:
min / 25th percentile / median over channels of |z|, |channel mean of z|, channel mean of z^2
(capped at 36 or not), count of channels with |z| > 3 or 4, each maxed over pixels; and from each
channel's most isolated value alone (what the kernel's one program per plane can compute): the
agreement (`stuck_value`'s feature) and the channel mean of log isolation. x_ is x0_hat, d_ its
change since the previous step. Judged on the spike drill itself: in-distribution. About 9 minutes
on 2 cores at the defaults.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from scipy.stats import norm

from latentguard.detectors import Drill
from latentguard.detectors.base import TAIL_QUANTILE
from latentguard.detectors.stuck_value import agreement
from latentguard.server.config import Settings
from latentguard.server.offline.calibrate import FIT_FRACTION, split_by_prompt
from latentguard.server.offline.trajectories import default_prompts
from latentguard.server.pipelines.deployments import load_deployment
from latentguard.server.pipelines.runner import PipelineRunner

ONSETS = (2, 4, 6, 8)
NEIGHBOURS = torch.ones(1, 1, 3, 3, dtype=torch.float64) / 8
NEIGHBOURS[0, 0, 1, 1] = 0


def candidates(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """[B, C, H, W] -> candidate name -> [B] (and the per-channel isolation and its place, [B, C])."""
    b, c, h, w = x.shape
    x = x.double()
    padded = F.pad(x.reshape(b * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    d = x - F.conv2d(padded, NEIGHBOURS).reshape(b, c, h, w)
    z = (d - d.mean(dim=(2, 3), keepdim=True)) / d.std(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    a = z.abs()
    ranked = a.sort(dim=1).values
    per_pixel = {
        "capmean": torch.minimum(z * z, torch.tensor(36.0)).mean(1),
        "sqmean": (z * z).mean(1),
        "min": ranked[:, 0],
        "q25": ranked[:, c // 4],
        "median": ranked[:, c // 2],
        "signed": z.mean(1).abs(),
        "cnt4": (a > 4).double().sum(1),
        "cnt3": (a > 3).double().sum(1),
    }
    out = {k: v.flatten(1).amax(1) for k, v in per_pixel.items()}
    out["crest"] = a.flatten(2).amax(2)
    out["pos"] = a.flatten(2).argmax(2).double()
    return out


def collect(runner: PipelineRunner, runs: list[tuple[str, int]], drill: Drill | None = None) -> dict:
    """Candidate name -> [N, S] over the runs' steps (d_ at step 0: the step itself has no change)."""
    rows, t0 = [], time.time()
    for i in range(0, len(runs), 8):
        chunk = runs[i : i + 8]
        tr = runner.denoise_at_defaults([p for p, _ in chunk], [s for _, s in chunk], drill, True).trajectory
        x0 = [tr.x0_hat(s) for s in range(tr.steps)]
        per: dict[str, list[torch.Tensor]] = {}
        for s in range(tr.steps):
            for name, v in candidates(x0[s]).items():
                per.setdefault("x_" + name, []).append(v)
            for name, v in candidates(x0[s] - x0[s - 1] if s else x0[s]).items():
                per.setdefault("d_" + name, []).append(v if s else torch.zeros_like(v))
        rows.append({k: torch.stack(v, 1) for k, v in per.items()})
        if (i // 8) % 25 == 24 or i + 8 >= len(runs):
            print(f"  {i + len(chunk)}/{len(runs)} runs, {time.time() - t0:.0f} s", flush=True)
    got = {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
    for p in ("x_", "d_"):
        got[p + "agreement"] = agreement(got[p + "crest"], got[p + "pos"])
        got[p + "chmean_log_isolation"] = got[p + "crest"].clamp_min(1).log().mean(-1)
    return {k: v for k, v in got.items() if v.ndim == 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployment", default="tiny-sd3")
    parser.add_argument("--fit", type=int, default=600)
    parser.add_argument("--held-out", type=int, default=2000)
    parser.add_argument("--per-onset", type=int, default=64)
    parser.add_argument("--strength", type=float, default=0.3)
    args = parser.parse_args()
    runner = PipelineRunner(load_deployment(Settings().deployment(args.deployment)))
    fit_prompts, cal_prompts = split_by_prompt(default_prompts("calibration"), FIT_FRACTION)
    evaluation = default_prompts("evaluation")
    fit = collect(runner, [(fit_prompts[i % len(fit_prompts)], 3000 + i) for i in range(args.fit)])
    held = collect(runner, [(cal_prompts[i % len(cal_prompts)], 6000 + i) for i in range(args.held_out)])
    spike_runs = {
        onset: [
            (evaluation[(onset * 97 + i) % len(evaluation)], 100000 + onset * 1000 + i)
            for i in range(args.per_onset)
        ]
        for onset in ONSETS
    }
    drill = {onset: Drill("spike", step=onset, strength=args.strength, mode="model") for onset in ONSETS}
    spikes = {onset: collect(runner, spike_runs[onset], drill[onset]) for onset in ONSETS}
    print(f"\n{args.deployment}, spike {args.strength}: within 2 steps of the onset (per onset {ONSETS})")
    for name in sorted(fit):
        loc = fit[name].mean(0)
        scale = ((fit[name].quantile(TAIL_QUANTILE, dim=0) - loc) / norm.ppf(TAIL_QUANTILE)).clamp_min(1e-9)
        first = 1 if name.startswith("d_") else 0
        threshold = ((held[name] - loc) / scale)[:, first:].amax(1).sort(descending=True).values[1]
        hits = [
            (((spikes[o][name] - loc) / scale)[:, o : o + 3] > threshold).any(1).double().mean().item()
            for o in ONSETS
        ]
        print(f"  {name:24s} {sum(hits) / len(hits):.3f}  ({' / '.join(f'{h:.2f}' for h in hits)})")


if __name__ == "__main__":
    main()
