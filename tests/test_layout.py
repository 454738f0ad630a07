"""The code base's shape: one table of architecture facts, no import cycle, no top-level `kernels` module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from s4v.models import BACKBONES, FrozenBackbone, build_clip

REPO = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("s4v", "kernels", "launch", "benchmarks", "tests")


def _sources() -> list[Path]:
    return sorted(p for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py"))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_table_matches_the_built_tower(name: str) -> None:
    """Every fact of a table row is what open_clip builds (on meta: no memory, seconds even for ViT-E)."""
    row = BACKBONES[name]
    tower = FrozenBackbone(build_clip(name, device="meta").visual)
    shape = tower.shape
    assert (shape.width, shape.layers, shape.patch_size, shape.image_size) == (
        row.width,
        row.layers,
        row.patch,
        row.image_size,
    )
    assert shape.num_patches == row.num_patches
    params_m = sum(p.numel() for p in tower.parameters()) / 1e6
    assert abs(params_m - row.visual_params_m) <= max(0.05, 0.005 * params_m), params_m
    assert row.block_form == ("post" if tower.is_eva else "pre")


def test_each_open_clip_name_is_written_in_one_source_file() -> None:
    for row in BACKBONES.values():
        holders = [p.relative_to(REPO).as_posix() for p in _sources() if row.open_clip in p.read_text()]
        assert holders == ["s4v/models/architectures.py"], (row.open_clip, holders)


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "kernels":  # installed as s4v.kernels
        parts = ["s4v", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """s4v modules `path` imports anywhere (top level or inside functions)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing package, one level up per extra dot
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    return {m for m in found if m in known and m != module}


def test_no_import_cycle_among_the_package_modules() -> None:
    files = {_module_name(p): p for d in ("s4v", "kernels") for p in (REPO / d).rglob("*.py")}
    known = set(files)
    graph = {m: _imports(p, m, known) for m, p in files.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(n) :], n]))
            if n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_no_top_level_kernels_module_is_installed(tmp_path: Path) -> None:
    """`kernels` (PyPI's package, used by transformers) is not shadowed: ours is `s4v.kernels`."""
    code = (
        "import importlib.util, s4v.kernels; spec = importlib.util.find_spec('kernels'); "
        "print(spec.origin if spec else None); print(s4v.kernels.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    top, ours = out.stdout.split()
    assert top == "None" or not Path(top).resolve().is_relative_to(REPO), top
    assert Path(ours).resolve() == REPO / "kernels" / "__init__.py"


# The package's layers, lowest first: a module imports from its own layer and those below, never from above
# (the model and data code never reach into training, training never into the commands built on it).
LAYERS = (
    ("s4v.core", "s4v.kernels"),
    ("s4v.config", "s4v.models", "s4v.data", "s4v.baselines", "s4v.metrics", "s4v.memory"),
    ("s4v.train",),
    ("s4v.tools",),
    ("s4v.cli",),
)


def _layer(module: str) -> int:
    for i, packages in enumerate(LAYERS):
        if any(module == p or module.startswith(f"{p}.") for p in packages):
            return i
    raise AssertionError(f"{module} belongs to no layer of LAYERS: place it")


def test_no_import_runs_back_up_the_layers() -> None:
    files = {_module_name(p): p for d in ("s4v", "kernels") for p in (REPO / d).rglob("*.py")}
    files.pop("s4v")  # the package's own __init__ is empty
    known = set(files)
    upward = [
        f"{m} -> {n}"
        for m, p in sorted(files.items())
        for n in sorted(_imports(p, m, known) - {"s4v"})
        if _layer(n) > _layer(m)
    ]
    assert not upward, upward


def test_the_top_level_holds_only_the_console_script() -> None:
    """Every module lives in the package of its concern (LAYERS); `s4v/` itself has the console script."""
    assert sorted(p.name for p in (REPO / "s4v").glob("*.py")) == ["__init__.py", "cli.py"]
