"""Keeps evidence bundles of flagged requests (and a sample of passing ones), off the request path.

The request path only decides whether a request is kept and hands its report, image and x0_hat
snapshots to one writer thread (a bounded number pending; beyond that a bundle is dropped and
counted). The writer encodes the PNGs, writes the bundle to the deployment's store and deletes the
oldest bundles beyond `max_bundles` / `max_megabytes`. A store that fails is logged and counted
(`latentguard_evidence_writes_total{outcome="error"}`); it never fails or delays a request.

The bounds hold for the bundles this process knows of: those listed at start and those it wrote. Give
each replica its own prefix (e.g. s3://bucket/evidence/$POD_NAME) when several write to one bucket.
"""

from __future__ import annotations

import functools
import logging
import random
import secrets
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from latentguard.server.config import EvidenceConfig
from latentguard.server.core.threads import side_executor
from latentguard.server.evidence.bundle import PromptRecord, Snapshots, bundle_files
from latentguard.server.evidence.store import EvidenceStore
from latentguard.server.metrics import Metrics
from latentguard.server.report import Report

log = logging.getLogger(__name__)


@dataclass
class _Kept:
    """One deployment's store and what this process knows is in it (oldest first)."""

    cfg: EvidenceConfig
    store: EvidenceStore
    prompts: PromptRecord
    weights: str
    bundles: deque[tuple[str, int]] = field(default_factory=deque)  # (folder, bytes)

    @property
    def total_bytes(self) -> int:
        return sum(b for _, b in self.bundles)


def prompt_key(cfg: EvidenceConfig) -> bytes:
    if cfg.prompt_key_file is not None:
        key = Path(cfg.prompt_key_file).read_bytes().strip()
        if len(key) < 16:
            raise ValueError(f"evidence.prompt_key_file {cfg.prompt_key_file}: use a key of 16 bytes or more")
        return key
    return secrets.token_bytes(32)


class EvidenceRecorder:
    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.kept: dict[str, _Kept] = {}
        self.executor = side_executor(1, "lg-evidence")
        self.lock = threading.Lock()  # `pending` is read on the event loop, written by the writer
        self.pending = 0

    def watch(self, deployment: str, cfg: EvidenceConfig, weights: str) -> None:
        """Start keeping a deployment's bundles (called at start, off the event loop: lists the store)."""
        store = EvidenceStore(cfg.store, cfg.storage_options)
        kept = _Kept(cfg, store, PromptRecord(prompt_key(cfg), cfg.store_prompts), weights)
        try:
            kept.bundles.extend((b.folder, b.bytes) for b in store.list())
        except Exception as exc:  # an unreachable store at start: keep serving, count the failures
            log.warning("evidence store %s of %s cannot be listed: %s", cfg.store, deployment, exc)
        self.kept[deployment] = kept
        if cfg.prompt_key_file is None:
            log.info(
                "evidence of %s: prompts hashed under a per-process key (set prompt_key_file)", deployment
            )
        log.info("evidence of %s kept in %s (%d bundles there)", deployment, cfg.store, len(kept.bundles))

    def wanted(self, report: Report) -> bool:
        kept = self.kept.get(report.deployment)
        if kept is None or not report.request_id:
            return False
        return report.verdict != "pass" or random.random() < kept.cfg.sample_passing

    def submit(
        self,
        report: Report,
        image: Image.Image | None,
        snapshots: Snapshots | None,
        prompt: str | None,
        source: str,
    ) -> None:
        """Keep this request's bundle if its deployment wants it (called on the event loop)."""
        if not self.wanted(report):
            return
        kept = self.kept[report.deployment]
        with self.lock:
            if self.pending >= kept.cfg.max_pending:
                self.metrics.evidence_write(report.deployment, "dropped")
                return
            self.pending += 1
        build = functools.partial(
            bundle_files,
            report,
            image=image,
            snapshots=snapshots,
            prompt=prompt,
            prompts=kept.prompts,
            weights=kept.weights,
            source=source,
        )
        self.executor.submit(self._write, kept, report, build)

    def _write(self, kept: _Kept, report: Report, build: Callable[[], tuple[str, dict[str, bytes]]]) -> None:
        """On the writer thread: encode (PNGs), write, evict; count the outcome."""
        try:
            folder, files = build()
            kept.store.put(folder, files)
            kept.bundles.append((folder, sum(len(v) for v in files.values())))
            self.metrics.evidence_write(report.deployment, "written")
            self._evict(kept)
        except Exception:
            log.exception(
                "evidence bundle of request %s on %s not written", report.request_id, report.deployment
            )
            self.metrics.evidence_write(report.deployment, "error")
        finally:
            with self.lock:
                self.pending -= 1

    def _evict(self, kept: _Kept) -> None:
        limit = kept.cfg.max_megabytes * 2**20
        while len(kept.bundles) > kept.cfg.max_bundles or (
            len(kept.bundles) > 1 and kept.total_bytes > limit
        ):
            folder, _ = kept.bundles.popleft()
            kept.store.delete(folder)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for the bundles handed over so far to be written (tests, drain)."""
        self.executor.submit(lambda: None).result(timeout=timeout)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=False)
