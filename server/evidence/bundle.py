"""What goes into one evidence bundle, and the pictures: PNGs of the image and of x0_hat.

x0_hat is a latent, not a picture: its preview shows latent channels 0-2 as red, green and blue,
each stretched between its 1st and 99th percentile (non-finite values magenta), upscaled to at least
256 pixels. It shows where structure, grain or a checkerboard sits, not the colours of the image.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import torch
from PIL import Image

from latentguard.server.evidence.store import FORMAT, META
from latentguard.server.report import Report

PREVIEW_SIDE = 256


@dataclass(frozen=True)
class Snapshot:
    """x0_hat of one request at one step ([C, H, W], CPU)."""

    step: int
    x0: torch.Tensor


@dataclass(frozen=True)
class Snapshots:
    """x0_hat at the first step a detector flagged the request (None: never flagged) and at its last."""

    flagged: Snapshot | None
    last: Snapshot


def snapshots_of(
    flagged_x0: dict[int, tuple[int, torch.Tensor]], i: int, last_step: int, x0: torch.Tensor
) -> Snapshots:
    """Batch element i's snapshots from a RequestGuard's `flagged_x0` and its latest x0_hat [B, ...]."""
    first = flagged_x0.get(i)
    return Snapshots(
        flagged=Snapshot(*first) if first is not None else None,
        last=Snapshot(last_step, x0[i].detach().float().cpu().clone()),
    )


@dataclass(frozen=True)
class PromptRecord:
    """How the prompt is kept: its HMAC-SHA256 under a key (and the key's id), or the text itself."""

    key: bytes
    store_text: bool = False

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.key).hexdigest()[:12]

    def fields(self, prompt: str | None) -> dict[str, str]:
        if prompt is None:  # an Inspect session: the sidecar never sees the prompt
            return {}
        digest = hmac.new(self.key, prompt.encode(), hashlib.sha256).hexdigest()
        out = {"prompt_hmac": digest, "prompt_key_id": self.key_id}
        return out | ({"prompt": prompt} if self.store_text else {})


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def latent_preview(x0: torch.Tensor) -> Image.Image:
    """[C, H, W] -> RGB picture of channels 0-2 (fewer channels: repeated)."""
    x = x0.detach().float().cpu()
    x = x[[i % x.shape[0] for i in range(3)]]
    finite = torch.isfinite(x)
    rgb = np.zeros((*x.shape[1:], 3), dtype=np.uint8)
    for c in range(3):
        values = x[c][finite[c]]
        if values.numel():
            lo, hi = torch.quantile(values, torch.tensor([0.01, 0.99])).tolist()
            scaled = ((x[c] - lo) / max(hi - lo, 1e-6)).clamp(0, 1) * 255
            rgb[..., c] = torch.nan_to_num(scaled).to(torch.uint8).numpy()
    rgb[~finite.all(dim=0).numpy()] = (255, 0, 255)
    picture = Image.fromarray(rgb)
    factor = max(1, -(-PREVIEW_SIDE // max(rgb.shape[:2])))
    return picture.resize((rgb.shape[1] * factor, rgb.shape[0] * factor), Image.Resampling.NEAREST)


def folder_name(when: datetime, request_id: str) -> str:
    return f"{when.strftime('%Y%m%dT%H%M%S.%fZ')}_{request_id}"


def bundle_files(
    report: Report,
    *,
    image: Image.Image | None,
    snapshots: Snapshots | None,
    prompt: str | None,
    prompts: PromptRecord,
    weights: str,
    source: str,
    when: datetime | None = None,
) -> tuple[str, dict[str, bytes]]:
    """(folder name, {file name: bytes}) of one request's bundle."""
    when = when or datetime.now(UTC)
    files: dict[str, bytes] = {"report.json": report.to_json().encode()}
    if image is not None:
        files["image.png"] = png(image)
    flagged = snapshots.flagged if snapshots is not None else None
    last = snapshots.last if snapshots is not None else None
    if flagged is not None:
        files["x0_flagged.png"] = png(latent_preview(flagged.x0))
    if last is not None:
        files["x0_last.png"] = png(latent_preview(last.x0))
    meta = {
        "format": FORMAT,
        "request_id": report.request_id,
        "trace_id": report.trace_id,
        "time": when.isoformat(),
        "source": source,  # generate | inspect
        "deployment": report.deployment,
        "family": report.family,
        "variant": report.variant,
        "seed": report.seed,
        "verdict": report.verdict,
        "flagged": report.flagged_detectors,
        "aborted_at_step": report.aborted_at_step,
        "flagged_step": flagged.step if flagged is not None else -1,
        "last_step": last.step if last is not None else -1,
        "profile": report.profile,  # fingerprint of the calibration profile's weights
        "weights": weights,  # fingerprint of the serving denoiser's weights
        **prompts.fields(prompt),
        "files": {name: len(data) for name, data in files.items()},
    }
    meta["bytes"] = sum(len(data) for data in files.values())
    files[META] = json.dumps(meta, indent=1).encode()
    return folder_name(when, report.request_id), files
