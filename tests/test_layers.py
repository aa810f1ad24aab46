"""Imports point down only (docs/design.md §7): core → data → features → sampler → search/train → report →
run folder/checks → pipeline → cli. Every import is read from the source, lazy ones inside functions too."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "swift_scale"
LAYERS = {  # module prefix → layer; a module may import from its own layer or below
    "swift_scale.rng": 0, "swift_scale.selection": 0, "swift_scale.io": 0, "swift_scale.config": 0,
    "swift_scale.data": 1,
    "swift_scale.features": 2,
    "swift_scale.sampler": 3,
    "swift_scale.search": 4, "swift_scale.train": 4,
    "swift_scale.report": 5,
    "swift_scale.run_folder": 6, "swift_scale.checks": 6,
    "swift_scale.pipeline": 7,
    "swift_scale.cli": 8,
    "swift_scale": 9,  # the package's face (swift_scale/__init__.py) re-exports from anywhere
}


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def imports(path: Path, module: str):
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                yield f"{base}.{node.module}" if node.module else base
            elif node.module:
                yield node.module


ALL = list(modules())


def test_every_module_has_a_layer():
    assert len(ALL) > 20
    for module, _ in ALL:
        layer(module)


@pytest.mark.parametrize("module,path", ALL, ids=[m for m, _ in ALL])
def test_imports_point_down(module, path):
    if module == "swift_scale":
        return
    mine = layer(module)
    upward = [name for name in imports(path, module) if name.startswith("swift_scale") and layer(name) > mine]
    assert not upward, f"{module} (layer {mine}) imports from higher layers: {upward}"
