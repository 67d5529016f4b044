"""The import graph of model/ points one way: base -> (nn | kernels) -> data -> workflows -> programs.

nn and kernels sit side by side on one level: neither imports the other (model/fused.py, a level
up, applies the kernels to the network). Every import counts, including those made inside
functions, so a lazy import can't hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "model"

LAYERS = [  # (layer, level, module prefixes): a module imports from its own layer or lower levels only
    ("base", 0, ["model", "model.config", "model.errors", "model.files", "model.device", "model.progress",
              "model.threads"]),
    ("nn", 1, ["model.nn"]),
    ("kernels", 1, ["model.kernels"]),
    ("data", 2, ["model.data", "model.checkpoint", "model.huggingface", "model.fused", "model.sources"]),
    ("workflows", 3, ["model.training", "model.sampling", "model.serving", "model.evaluation"]),
    ("programs", 4, ["model.tools", "model.cli", "model.bench", "model.report", "model.runs", "model.hf",
                     "model.visualize", "model.attention", "model.serve", "model.eval", "model.inspect", "model.sweep",
                     "model.chat"]),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    """Index of the layer whose longest prefix matches module; a module no layer names fails the test."""
    best = None
    for index, (_, _, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {Path(__file__).name}")
    return best[0]


def resolve(importer: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The model.* modules an import statement loads (submodules named in `from pkg import sub` included)."""
    found = []
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name == "model" or a.name.startswith("model.")]
    base = node.module or ""
    if node.level:  # relative import
        package = importer.split(".") if MODULES[importer].name == "__init__.py" else importer.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
    if base != "model" and not base.startswith("model."):
        return []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        found.append(sub if sub in MODULES else base)
    return found


def imports_of(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(n for n in resolve(module, node) if n != module)
    return names


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def allowed(importer: str, imported: str) -> bool:
    """Whether importer may import imported: the same layer, or a lower level."""
    here, there = layer_of(importer), layer_of(imported)
    return here == there or LAYERS[there][1] < LAYERS[here][1]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    name = LAYERS[layer_of(module)][0]
    wrong = [f"{dep} ({LAYERS[layer_of(dep)][0]})" for dep in sorted(GRAPH[module]) if not allowed(module, dep)]
    assert not wrong, f"{module} ({name}) imports a layer above it or beside it: {', '.join(wrong)}"


def test_nn_imports_nothing_from_kernels_and_kernels_nothing_from_nn():
    def package(module: str) -> str:  # model.nn.gpt -> nn
        return module.split(".")[1] if "." in module else ""

    crossings = [(m, dep) for m in MODULES for dep in GRAPH[m] if {package(m), package(dep)} == {"nn", "kernels"}]
    assert not crossings, f"nn and kernels import each other: {crossings}"
    # the rule itself: side by side means neither way, while the layer above may import both
    assert not allowed("model.nn.gpt", "model.kernels.ops") and not allowed("model.kernels.decode", "model.nn.gpt")
    assert allowed("model.fused", "model.nn.gpt") and allowed("model.fused", "model.kernels.ops")


def test_no_import_cycle():
    # Tarjan's strongly connected components over the module graph
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in MODULES:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(MODULES):
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_imports_inside_functions(tmp_path):
    source = "def f():\n    from model.cli import train_main\n    import model.training.trainer\n"
    tree = ast.parse(source)
    seen = {n for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)) for n in resolve("model.nn.gpt", node)}
    assert seen == {"model.cli", "model.training.trainer"}
    assert layer_of("model.cli") > layer_of("model.nn.gpt")
