"""The layout contract: imports point one way, server -> detectors -> kernels."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def imported_modules(folder: str) -> set[str]:
    found = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
    return found


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        (
            "kernels",
            ("latentguard.detectors", "latentguard.server", "diffusers", "grpc", "prometheus_client"),
        ),
        ("detectors", ("latentguard.server", "grpc", "prometheus_client", "diffusers")),
    ],
)
def test_imports_point_one_way(folder, forbidden):
    bad = {m for m in imported_modules(folder) if m.startswith(forbidden)}
    assert not bad, f"{folder} imports {sorted(bad)}"
