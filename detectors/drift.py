"""Fleet drift: are a deployment's recent requests still drawn from its calibration population?

A swapped checkpoint or a LoRA merged at the wrong scale can change the distribution of outputs while
every single request still looks normal. Each finished request is summarised by per-step,
per-channel statistics of x0_hat (`step_features`: mean, log variance, the spectral fields of
`trajectory_stats`); a window of the last W summaries is compared with a reference of benign runs
four ways:

- `kl`: Gaussian KL divergence (seed 001). Per step and channel, the window's pooled latent
  distribution N(mu_w, s_w^2) against the reference's N(mu_r, s_r^2), averaged over steps and channels.
- `angle`: principal angles (seed 002, `scipy.linalg.subspace_angles`) between the top-4 principal
  subspace of the standardised reference summaries and that of the window's summaries, centred on
  the reference mean (so that a shift of the mean turns the window's subspace too); the score is the
  mean sin^2 of the angles, in [0, 1].
- `mmd`: the maximum mean discrepancy between the window and a reference sample (Gaussian kernel,
  median-distance bandwidth) on the top-32 principal coordinates, with a permutation p-value
  (`mmd_pvalue`).
- `shift`: the largest standardised shift of any summary feature's window mean, max_j |z_j| sqrt(W)
  (a max-t two-sample statistic). A model change moves a few features (the spectral ones, mostly)
  by a fraction of their spread across prompts; averaged into a kernel or a KL that is lost among the
  features it does not move (evaluation/drift.md).
- `vendi`: diversity (seed 000). The Vendi score (Friedman & Dieng 2023) of the window: exp of the
  entropy of the eigenvalues of K / W, K the window's Gaussian kernel matrix on the MMD coordinates,
  the effective number of distinct requests (1: all alike, W: all unrelated). A model that collapses
  toward one output (an over-fitted LoRA, a quantization that washes prompts out) lowers it while each
  request still looks normal; the score is 1 / Vendi, so that higher is riskier like the others.

Each method's threshold is the (1 - alpha / 5) quantile (alpha shared by the five methods) of its
score over windows resampled from benign runs on prompts the reference never saw (by prompt, as the
detectors' calibration), so that a window of an unchanged model raises "any method over its
threshold" with probability about alpha (ALPHA: half the 1-in-1000 target, for the gap between
calibration and fresh prompts). Scores are reported divided by their threshold, so 1 is the alarm line.

Everything here is numpy (and scipy), never torch: the server runs it on a thread of its own, where
torch's OpenMP team would slow the denoising thread (server/core/threads.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.linalg import subspace_angles

from latentguard.detectors.stored import load_arrays, save_arrays
from latentguard.kernels import TrajectoryStats

METHODS = ("kl", "angle", "mmd", "shift", "vendi")
REFERENCE_FORMAT = "latentguard.drift/v1"
EVERY = 16  # DriftConfig.every's default: a full window is scored every this many new requests
ANGLE_RANK = 4  # principal directions compared by `angle`
MMD_COORDINATES = 32  # principal coordinates the MMD works on
MMD_REFERENCE = 256  # reference runs the MMD compares a window with
FLOOR = 1e-12
# the reference's defaults. ALPHA is half the 1-in-1000 target: thresholds come from calibration
# prompts, and on fresh prompts the window false-alarm rate came out ~1.6x alpha (evaluation/drift.md)
WINDOW, ALPHA, NULL_WINDOWS = 64, 5e-4, 50_000
SPECTRAL_FIELDS = ("hf_ratio", "sr_peak", "phase_imbalance", "hf_flatness")


def step_features(stats: TrajectoryStats) -> np.ndarray:
    """[B, S, F] float64 for a batch of trajectories (fields [B, S, C, ...]): per step the channels'
    mean and log variance of x0_hat (first, in that order: the KL reads them), then the spectral
    fields and the log radial profile (F = 14 C)."""
    b, s = stats.mean.shape[:2]
    parts = [stats.mean, stats.var.clamp_min(FLOOR).log()]
    parts += [getattr(stats, name) for name in SPECTRAL_FIELDS]
    parts.append(stats.radial_profile.clamp_min(FLOOR).log())
    return np.concatenate([p.double().reshape(b, s, -1).numpy() for p in parts], axis=2)


def request_summary(stats: TrajectoryStats) -> np.ndarray:
    """[B, S * F]: `step_features` of each trajectory, flattened (one row per request)."""
    features = step_features(stats)
    return features.reshape(len(features), -1)


def _moments(summaries: np.ndarray, steps: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Pooled mean and variance of the latent values, per step and channel ([S * C] each), over a
    set of requests' summaries."""
    x = summaries.reshape(len(summaries), steps, -1)
    mean = x[:, :, :channels].reshape(len(x), -1)
    var = np.exp(x[:, :, channels : 2 * channels]).reshape(len(x), -1)
    pooled_mean = mean.mean(axis=0)
    pooled_var = np.maximum((var + mean**2).mean(axis=0) - pooled_mean**2, FLOOR)
    return pooled_mean, pooled_var


def gaussian_kl(window: np.ndarray, ref_mean: np.ndarray, ref_var: np.ndarray, steps: int) -> float:
    """Mean over steps and channels of KL(N(mu_w, s_w^2) || N(mu_r, s_r^2))."""
    mean, var = _moments(window, steps, len(ref_mean) // steps)
    kl = 0.5 * (np.log(ref_var / var) + (var + (mean - ref_mean) ** 2) / ref_var - 1)
    return float(kl.mean())


def _top_subspace(z: np.ndarray, k: int) -> np.ndarray:
    """[D, k] orthonormal basis of the top-k right singular vectors of z ([N, D]); for N < D from
    the N x N Gram matrix (z z^T = U S^2 U^T, V = z^T U / S), 100x faster than an SVD at N = 64."""
    if z.shape[0] >= z.shape[1]:
        return np.linalg.svd(z, full_matrices=False)[2][:k].T
    eigval, eigvec = np.linalg.eigh(z @ z.T)
    top = np.argsort(eigval)[::-1][:k]
    v = z.T @ eigvec[:, top]
    return v / np.linalg.norm(v, axis=0, keepdims=True)


def _gaussian_kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    d2 = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
    return np.exp(-np.maximum(d2, 0) / (2 * bandwidth**2))


def vendi(kernel: np.ndarray) -> float:
    """Vendi score of n samples from their n x n similarity matrix (unit diagonal): exp of the Shannon
    entropy of the eigenvalues of K / n, between 1 and n."""
    eig = np.linalg.eigvalsh(kernel / len(kernel))
    eig = eig[eig > 1e-12]
    return float(np.exp(-(eig * np.log(eig)).sum()))


def _mmd2(kernel: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Biased MMD^2 for each row of `labels` ([P, N] booleans, True: the window) over one kernel
    matrix of the pooled samples: z^T K z with z = 1/n on the window and -1/m on the reference."""
    n = labels.sum(axis=1, keepdims=True)
    z = np.where(labels, 1 / n, -1 / (labels.shape[1] - n))
    return ((z @ kernel) * z).sum(axis=1)


@dataclass
class DriftReference:
    """What a deployment's recent traffic is compared with (saved next to its calibration profile)."""

    fingerprint: str  # of the denoiser the reference runs came from
    steps: int
    height: int
    width: int
    guidance_scale: float
    window: int  # requests per compared window (the thresholds hold for this size)
    alpha: float  # false-alarm rate per window of "any method over its threshold"
    thresholds: dict[str, float]
    center: np.ndarray  # [D] standardisation of the summaries
    scale: np.ndarray  # [D]
    pooled_mean: np.ndarray  # [S * C] latent mean and variance per step and channel (KL)
    pooled_var: np.ndarray  # [S * C]
    basis: np.ndarray  # [D, MMD_COORDINATES] top principal directions of the standardised reference
    sample: np.ndarray  # [<= MMD_REFERENCE, MMD_COORDINATES] reference runs in those coordinates (MMD)
    bandwidth: float
    runs: int  # reference runs
    null_windows: int  # resampled windows the thresholds came from

    def matches(self, steps: int, height: int, width: int, guidance_scale: float) -> bool:
        """Only requests at the reference's schedule, size and guidance are comparable with it."""
        return (self.steps, self.height, self.width, self.guidance_scale) == (
            steps,
            height,
            width,
            guidance_scale,
        )

    def _z(self, summaries: np.ndarray) -> np.ndarray:
        return (summaries - self.center) / self.scale

    def _scores_but_mmd(self, window: np.ndarray, z: np.ndarray) -> dict[str, float]:
        """kl, angle and shift of one window ([W, D] summaries, and standardised: z)."""
        angles = subspace_angles(self.basis[:, :ANGLE_RANK], _top_subspace(z, ANGLE_RANK))
        return {
            "kl": gaussian_kl(window, self.pooled_mean, self.pooled_var, self.steps),
            "angle": float(np.mean(np.sin(angles) ** 2)),
            "shift": float(np.abs(z.mean(axis=0)).max() * np.sqrt(len(z))),
        }

    def _pooled_kernel(self, coordinates: np.ndarray) -> np.ndarray:
        pooled = np.concatenate([coordinates, self.sample])
        return _gaussian_kernel(pooled, pooled, self.bandwidth)

    def raw_scores(self, window: np.ndarray) -> dict[str, float]:
        """Each method's score of one window ([W, D] summaries), before dividing by the threshold."""
        z = self._z(window)
        labels = np.arange(len(z) + len(self.sample))[None, :] < len(z)
        kernel = self._pooled_kernel(z @ self.basis)
        mmd = float(_mmd2(kernel, labels)[0])
        own = kernel[: len(z), : len(z)]
        return {**self._scores_but_mmd(window, z), "mmd": mmd, "vendi": 1 / vendi(own)}

    def scores(self, window: np.ndarray) -> dict[str, float]:
        """Each method's score divided by its threshold: above 1 is an alarm. A reference recorded before
        a method existed (no threshold for it) scores without it."""
        return {m: s / self.thresholds[m] for m, s in self.raw_scores(window).items() if m in self.thresholds}

    def mmd_pvalue(self, window: np.ndarray, permutations: int = 2000, seed: int = 0) -> float:
        """Permutation p-value of the window's MMD against the reference sample: the share of random
        relabellings of the pooled runs whose MMD is at least the observed one ((1 + hits) / (1 + P))."""
        kernel = self._pooled_kernel(self._z(window) @ self.basis)
        n = len(window)
        observed = _mmd2(kernel, (np.arange(len(kernel)) < n)[None, :])[0]
        ranks = np.random.default_rng(seed).random((permutations, len(kernel))).argsort(axis=1)
        null = _mmd2(kernel, ranks < n)
        return float((1 + (null >= observed).sum()) / (1 + permutations))

    # --- building and storage ---------------------------------------------------------------------
    @staticmethod
    def build(
        reference: np.ndarray,
        held_out: np.ndarray,
        *,
        fingerprint: str,
        steps: int,
        height: int,
        width: int,
        guidance_scale: float,
        channels: int,
        window: int = WINDOW,
        alpha: float = ALPHA,
        null_windows: int = NULL_WINDOWS,
        seed: int = 0,
        progress: Callable[[int], None] | None = None,
    ) -> DriftReference:
        """Reference statistics from `reference` runs, thresholds from windows resampled (without
        replacement inside a window) from `held_out` runs on other prompts. `progress(n)` is called as
        the resampled windows are scored (n windows at a time)."""
        if len(held_out) < 2 * window or len(reference) < 2 * window:
            raise ValueError(f"need at least {2 * window} reference and {2 * window} held-out runs")
        rng = np.random.default_rng(seed)
        center, scale = reference.mean(axis=0), reference.std(axis=0) + 1e-6
        z = (reference - center) / scale
        basis = _top_subspace(z, min(MMD_COORDINATES, *z.shape))
        sample = z[rng.choice(len(z), min(MMD_REFERENCE, len(z)), replace=False)] @ basis
        d2 = ((sample[:, None, :] - sample[None, :, :]) ** 2).sum(-1)
        pooled_mean, pooled_var = _moments(reference, steps, channels)
        ref = DriftReference(
            fingerprint=fingerprint,
            steps=steps,
            height=height,
            width=width,
            guidance_scale=guidance_scale,
            window=window,
            alpha=alpha,
            thresholds=dict.fromkeys(METHODS, 1.0),
            center=center,
            scale=scale,
            pooled_mean=pooled_mean,
            pooled_var=pooled_var,
            basis=basis,
            sample=sample,
            bandwidth=float(np.sqrt(np.median(d2[np.triu_indices(len(sample), 1)]))),
            runs=len(reference),
            null_windows=null_windows,
        )
        null = ref.null_scores(held_out, null_windows, rng, progress)
        ref.thresholds = {m: float(np.quantile(null[m], 1 - alpha / len(METHODS))) for m in METHODS}
        return ref

    def null_scores(
        self,
        runs: np.ndarray,
        windows: int,
        rng: np.random.Generator,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Raw scores of `windows` windows resampled from `runs`, as `raw_scores` gives them; the
        MMD expanded as mean K(w, w) + mean K(r, r) - 2 mean K(w, r) over kernels computed once."""
        z = self._z(runs)
        coordinates = z @ self.basis
        k_runs = _gaussian_kernel(coordinates, coordinates, self.bandwidth)
        k_cross = _gaussian_kernel(coordinates, self.sample, self.bandwidth).mean(axis=1)
        k_ref = _gaussian_kernel(self.sample, self.sample, self.bandwidth).mean()
        out: dict[str, list[float]] = {m: [] for m in METHODS}
        for i in range(windows):
            if progress is not None and i % 1000 == 999:
                progress(1000)
            rows = rng.choice(len(runs), self.window, replace=False)
            own = k_runs[np.ix_(rows, rows)]
            mmd = float(own.mean() + k_ref - 2 * k_cross[rows].mean())
            scores = {**self._scores_but_mmd(runs[rows], z[rows]), "mmd": mmd, "vendi": 1 / vendi(own)}
            for method, score in scores.items():
                out[method].append(score)
        return {m: np.array(v) for m, v in out.items()}

    def save(self, path: str | Path) -> None:
        names = ("center", "scale", "pooled_mean", "pooled_var", "basis", "sample")
        arrays = {name: getattr(self, name).astype(np.float32) for name in names}  # half the bytes; ample
        keys = ("fingerprint", "steps", "height", "width", "guidance_scale", "window", "alpha")
        meta = {k: getattr(self, k) for k in (*keys, "thresholds", "bandwidth", "runs", "null_windows")}
        save_arrays(path, REFERENCE_FORMAT, arrays, meta)

    @staticmethod
    def load(path: str | Path) -> DriftReference:
        meta, arrays = load_arrays(path, REFERENCE_FORMAT)
        return DriftReference(**meta, **{k: v.astype(np.float64) for k, v in arrays.items()})


class Window:
    """The last `size` comparable requests' summaries, due for scoring every `every` new requests
    once full (the server's cadence; the evaluation replays it)."""

    def __init__(self, size: int, every: int = EVERY):
        self.summaries: deque[np.ndarray] = deque(maxlen=size)
        self.every = every
        self.fresh = 0  # requests added since the window was last taken

    def __len__(self) -> int:
        return len(self.summaries)

    def add(self, summary: np.ndarray) -> bool:
        """Add one request; True when the window is due for scoring."""
        self.summaries.append(summary)
        self.fresh += 1
        return len(self.summaries) == self.summaries.maxlen and self.fresh >= self.every

    def take(self) -> np.ndarray:
        """[W, D]: the window to score now."""
        self.fresh = 0
        return np.stack(list(self.summaries))
