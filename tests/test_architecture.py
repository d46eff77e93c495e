"""The structure drawn from the code: core/ stages import only down the flow, core/ stays
framework-free, pipelines do not reach into each other, and no module of the package imports
itself back through a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fedpatchcore.core import STAGES

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fedpatchcore"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (function-level imports too), as dotted names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from fedpatchcore.core.features import backbones` imports a module, not a name.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def _stage(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 3 and parts[1] == "core" and parts[2] in STAGES:
        return parts[2]
    return None


def test_every_core_module_belongs_to_a_stage():
    loose = [m for m in MODULES if m.startswith("fedpatchcore.core.") and _stage(m) is None]
    assert not loose, f"modules of core/ outside a stage package: {loose}"
    missing = [s for s in STAGES if f"fedpatchcore.core.{s}" not in MODULES]
    assert not missing, f"stages without a package: {missing}"


def test_core_imports_run_only_down_the_stages():
    order = {stage: i for i, stage in enumerate(STAGES)}
    upward = [
        f"{module} ({_stage(module)}) imports {target} ({_stage(target)})"
        for module, targets in GRAPH.items()
        if _stage(module)
        for target in targets
        if _stage(target) and order[_stage(target)] > order[_stage(module)]
    ]
    assert not upward, "imports running back up the flow:\n" + "\n".join(upward)


def test_core_imports_neither_kedro_nor_flower_nor_the_layers_above():
    bad = []
    for module, path in MODULES.items():
        if not module.startswith("fedpatchcore.core"):
            continue
        for target in _imports(path):
            top = target.split(".")[0]
            if top in ("kedro", "flwr") or (top == "fedpatchcore" and not target.startswith("fedpatchcore.core")):
                bad.append(f"{module} imports {target}")
    assert not bad, "\n".join(bad)


def _cycle_from(start: str) -> list[str] | None:
    """A shortest import circle through ``start`` (module-level and function-level imports)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for module in frontier:
            for target in sorted(GRAPH[module]):
                if target == start:
                    return [*paths[module], start]
                if target not in paths:
                    paths[target] = [*paths[module], target]
                    nxt.append(target)
        frontier = nxt
    return None


@pytest.mark.parametrize("scope", ["fedpatchcore.core", "fedpatchcore"])
def test_no_import_circle(scope):
    circles = {tuple(c) for m in MODULES if m.startswith(scope) and (c := _cycle_from(m))}
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in sorted(circles))


# The pipeline builders another pipeline is made of, and why. Anything else two pipelines share
# (a node function, a constant, a rule) lives in core/ (or, with no domain logic in it, in the
# pipeline-building helpers of fedpatchcore.pipelines).
BUILT_FROM = {
    ("federated", "training"): "a federated variant is made of client lanes (and their later-round steps)",
    ("federated", "evaluation"): "a federated variant is scored by the evaluation pipeline",
    ("federated", "experts"): "a federated variant fits its logical experts with the experts' fitting chain",
    ("tune", "ingest"): "tuning runs ingest's validation split, forced on",
}


def _pipeline(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) >= 4 and parts[1] == "pipelines" else None


def test_pipelines_import_no_other_pipeline_but_the_builders_they_are_made_of():
    crossing = []
    for module, targets in GRAPH.items():
        own = _pipeline(module)
        for target in targets:
            other = _pipeline(target)
            if own is None or other is None or other == own:
                continue
            builder = module == f"fedpatchcore.pipelines.{own}.pipeline" and target == f"fedpatchcore.pipelines.{other}.pipeline"
            if not (builder and (own, other) in BUILT_FROM):
                crossing.append(f"{module} imports {target}")
    assert not crossing, "pipelines reaching into each other:\n" + "\n".join(crossing)


def test_only_the_registry_imports_every_pipeline():
    """Outside pipelines/, only the registry composes pipelines (flower/, structure, hooks build none)."""
    outside = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if not module.startswith("fedpatchcore.pipelines") and module != "fedpatchcore.pipeline_registry"
        for target in targets
        if target.startswith("fedpatchcore.pipelines.")
    ]
    assert not outside, "\n".join(outside)
