"""The docs: a short README whose links resolve, generated pages that match their sources, and a site
that mkdocs builds with --strict (a broken link or a page missing from the nav fails it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_is_a_short_entry_point_whose_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 15_000
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert len(local) >= 10, local
    for link in local:
        assert (ROOT / link).exists(), link


def test_generated_pages_are_current():
    result = subprocess.run(
        [sys.executable, "-P", "docs/generate.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_site_builds_strictly(tmp_path):
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    pages = re.findall(r"[\w/-]+\.md", str(nav))
    assert len(pages) >= 8 and all((ROOT / "docs" / p).is_file() for p in pages)
    mkdocs = Path(sys.executable).with_name("mkdocs")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for page in pages:
        built = tmp_path / "site" / page.removesuffix(".md").removesuffix("index") / "index.html"
        assert built.is_file() or (tmp_path / "site" / page.replace(".md", ".html")).is_file(), page
