"""Where evidence bundles live: any fsspec URL (file:///dir, s3://bucket/prefix, gs://, ...).

One folder per bundle, named `{UTC time}_{request id}` so that names sort by age:

    {store}/20261207T170000.123456Z_9f1c.../meta.json   who, when, verdict, fingerprints, prompt hash
                                           report.json  the request's report (per-step statistics)
                                           *.png        the image and the x0_hat previews

The bundle's id is its request id (the `request_id` of the report and of the metrics' exemplars).
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

import fsspec

META = "meta.json"
FORMAT = "latentguard.evidence/v1"


@dataclass(frozen=True)
class BundleRef:
    """A bundle as listed: its folder and its meta.json."""

    folder: str  # the folder's name under the store
    meta: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.meta["request_id"])

    @property
    def bytes(self) -> int:
        return int(self.meta.get("bytes", 0))


class EvidenceStore:
    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        options = dict(storage_options or {})
        if url.startswith("file://") or "://" not in url:
            options.setdefault("auto_mkdir", True)
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url, **options)

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.root.rstrip("/"), *parts)

    def put(self, folder: str, files: dict[str, bytes]) -> None:
        """Write one bundle; meta.json last, so that a bundle cut short by a failure is never listed."""
        self.fs.makedirs(self._path(folder), exist_ok=True)
        rest = {self._path(folder, name): data for name, data in files.items() if name != META}
        self.fs.pipe(rest)
        self.fs.pipe_file(self._path(folder, META), files[META])

    def list(self) -> list[BundleRef]:
        """Every complete bundle, oldest first."""
        if not self.fs.exists(self.root):
            return []
        folders = sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.root, detail=False))
        if not folders:
            return []
        metas = self.fs.cat([self._path(f, META) for f in folders], on_error="omit")
        out = []
        for folder in folders:
            raw = metas.get(self._path(folder, META))
            if raw is not None:
                out.append(BundleRef(folder, json.loads(raw)))
        return out

    def find(self, bundle_id: str) -> BundleRef:
        """The bundle whose request id is `bundle_id` or starts with it (at least 6 characters)."""
        if len(bundle_id) < 6:
            raise KeyError(f"give at least 6 characters of the bundle id, got {bundle_id!r}")
        hits = [b for b in self.list() if b.id.startswith(bundle_id)]
        if len(hits) != 1:
            found = "no bundle" if not hits else f"{len(hits)} bundles"
            raise KeyError(f"{found} with id {bundle_id!r} in {self.url}")
        return hits[0]

    def read(self, ref: BundleRef, name: str) -> bytes | None:
        """One file of a bundle; None when the bundle has no such file."""
        path = self._path(ref.folder, name)
        return self.fs.cat_file(path) if self.fs.exists(path) else None

    def delete(self, folder: str) -> None:
        self.fs.rm(self._path(folder), recursive=True)
