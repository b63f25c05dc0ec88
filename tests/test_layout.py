"""The layout contract: imports point one way, server -> detectors -> kernels, and inside server/
cli -> harness -> offline -> rpc -> core -> pipelines -> evidence, over the flat base modules."""

import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
# server's sub-packages, top first: each may import only those after it (and the base modules)
SERVER_LAYERS = ("harness", "offline", "rpc", "core", "pipelines", "evidence")
SERVER_BASE = ("config", "errors", "metrics", "report")


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module == "latentguard.server":  # `from latentguard.server import rpc`
                found |= {f"latentguard.server.{a.name}" for a in node.names}
    return found


def imported_modules(folder: Path) -> set[str]:
    assert folder.is_dir(), f"{folder} does not exist: the layout test would pass vacuously"
    files = list(folder.rglob("*.py"))
    assert files, f"{folder} holds no Python files"
    return set().union(*(imports_of(p) for p in files))


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
    bad = {m for m in imported_modules(ROOT / folder) if m.startswith(forbidden)}
    assert not bad, f"{folder} imports {sorted(bad)}"


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] != ["latentguard", "server"] or len(parts) < 3:
        return None
    return parts[2]


@pytest.mark.parametrize("layer", SERVER_LAYERS)
def test_server_sub_packages_import_only_downwards(layer):
    below = set(SERVER_LAYERS[SERVER_LAYERS.index(layer) + 1 :]) | set(SERVER_BASE) | {layer}
    used = {_layer_of(m) for m in imported_modules(ROOT / "server" / layer)} - {None}
    assert used <= below, f"server/{layer} imports upwards or sideways: {sorted(used - below)}"


def test_server_base_modules_import_no_sub_package():
    for name in SERVER_BASE:
        path = ROOT / "server" / f"{name}.py"
        assert path.is_file(), f"{path} does not exist"
        used = {_layer_of(m) for m in imports_of(path)} - {None}
        assert used <= set(SERVER_BASE), f"server/{name}.py imports {sorted(used - set(SERVER_BASE))}"


def test_every_server_sub_package_is_documented_and_few_modules_stay_flat():
    folders = sorted(p.name for p in (ROOT / "server").iterdir() if (p / "__init__.py").is_file())
    assert folders == sorted(SERVER_LAYERS), folders
    for folder in folders:
        tree = ast.parse((ROOT / "server" / folder / "__init__.py").read_text())
        assert ast.get_docstring(tree), f"server/{folder}/__init__.py has no docstring"
    flat = sorted(p.stem for p in (ROOT / "server").glob("*.py") if p.stem != "__init__")
    assert flat == sorted(("cli", *SERVER_BASE)), flat


def test_the_repository_root_is_not_on_sys_path():
    """kernels/ there would shadow Hugging Face's `kernels` package, which transformers >= 5.25 installs and
    diffusers imports: pytest runs in importlib mode under `python -P`, and that is what keeps it off."""
    spec = importlib.util.find_spec("kernels")
    assert spec is None or spec.origin != str(ROOT / "kernels" / "__init__.py"), (
        "the repository root is on sys.path"
    )
