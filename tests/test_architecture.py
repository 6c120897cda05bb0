"""The import layers of src/datadream, read from the source with `ast` (nothing is imported).

Every `import` counts, at module level or inside a function: an import deferred into a function
(to keep a module torch-free, say) still ties the two modules together, so it may no more go
upward or close a circle than a top-level one. LAYERS is the one declaration of the order;
docs/architecture.md shows the same table and is checked against it here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "datadream"
DOC = ROOT / "docs" / "architecture.md"

# Bottom to top. A module may import its own layer and those below it, never one above. A name
# stands for that module and, for a package, every module under it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("errors", "progress", "atomic", "layout", "markers", "catalog", "registry", "config", "locks",
              "threads", "tracking")),
    ("components", ("components",)),
    ("data", ("data",)),
    ("run state", ("runs", "store", "units", "artifacts", "classifier_files", "costs")),
    ("engines", ("engines",)),
    ("stages", ("stages",)),
    ("runners", ("runners",)),
    ("commands", ("pipeline", "plan", "plan_text", "status", "report", "predict", "export", "compare", "benchmark",
                  "demo", "model_commands")),
    ("api", ("api",)),
    ("cli", ("cli", "__main__")),
]
# The stages' entry points talk through the files they write, never through each other's code.
STAGES = ("adapt", "synthesize", "train", "evaluate", "inspect")
# Circles being taken apart elsewhere; an entry here is a debt, not a permission.
ALLOWED_CYCLES: list[set[str]] = []


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = ("datadream", *path.relative_to(SRC).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _targets(name: str, path: Path, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> set[str]:
    """The datadream modules one import statement reaches: `from pkg import mod` reaches pkg.mod."""
    if isinstance(node, ast.Import):
        candidates = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([node.module] if node.module else []))
        candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    reached = set()
    for candidate in candidates:
        while candidate and candidate not in modules:  # `import a.b.c` reaches the longest module it names
            candidate = candidate.rpartition(".")[0]
        if candidate.startswith("datadream.") and candidate != name:
            reached.add(candidate)
    return reached


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: line of its first import}, every import statement counted."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(name, path, node, modules):
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's components of more than one module: each is one or more import circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _circle(graph: dict[str, dict[str, int]], members: list[str]) -> str:
    """One circle through the component's first member, with the line of each import."""
    start, inside = members[0], set(members)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node]):
            if nxt == start:
                hops = paths[node] + [start]
                return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(hops, hops[1:])) + f" -> {start}"
            if nxt in inside and nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    return ", ".join(members)


def layer_of(module: str) -> int | None:
    short = module.removeprefix("datadream.")
    for position, (_, names) in enumerate(LAYERS):
        if any(short == n or short.startswith(n + ".") for n in names):
            return position
    return None


def test_no_import_cycles():
    graph = import_graph()
    circles = [c for c in strongly_connected(graph) if set(c) not in ALLOWED_CYCLES]
    assert not circles, "import cycles:\n" + "\n".join(_circle(graph, c) for c in circles)


def test_allowed_cycles_still_exist():
    # An allow-list entry outliving its circle would silently permit the next one.
    circles = [set(c) for c in strongly_connected(import_graph())]
    assert all(allowed in circles for allowed in ALLOWED_CYCLES), "remove the closed circle from ALLOWED_CYCLES"


def test_every_module_has_a_layer():
    package_inits = {"datadream", "datadream.components", "datadream.data", "datadream.stages", "datadream.runners",
                     "datadream.engines"}
    unplaced = sorted(m for m in import_graph() if layer_of(m) is None and m not in package_inits)
    assert not unplaced, f"modules in no layer (add them to LAYERS and docs/architecture.md): {unplaced}"


def test_imports_go_down_the_layers():
    upward = []
    for module, edges in sorted(import_graph().items()):
        for target, line in sorted(edges.items()):
            here, there = layer_of(module), layer_of(target)
            if here is not None and there is not None and there > here:
                upward.append(f"{module} (line {line}, layer {LAYERS[here][0]}) imports {target}"
                              f" (layer {LAYERS[there][0]})")
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_stages_do_not_import_each_other():
    entries = {f"datadream.stages.{s}" for s in STAGES}
    crossing = [f"{m} imports {t}" for m, edges in import_graph().items() if m in entries
                for t in edges if t in entries]
    assert not crossing, "a stage reads what another wrote, never its code:\n" + "\n".join(crossing)


def in_test_model_wing(module: str) -> bool:
    """components/testmodels/, and each generator family's testmodel.py (its tiny and full-size
    random models, kept in the family's folder)."""
    return (module.startswith("datadream.components.testmodels.")
            or re.fullmatch(r"datadream\.components\.generators\.families\.\w+\.testmodel", module) is not None)


def test_test_models_stay_out_of_the_work_path():
    # Tiny and random models say nothing about model quality: they may be built by the demo, the
    # CLI and API and named by the report, but no stage, runner or run-state module reaches them.
    allowed = ("datadream.data.toy",)
    commands = next(i for i, (name, _) in enumerate(LAYERS) if name == "commands")
    reaching = [f"{m} imports {t}" for m, edges in sorted(import_graph().items()) for t in sorted(edges)
                if in_test_model_wing(t) and not in_test_model_wing(m) and m not in allowed
                and (layer_of(m) or 0) < commands]
    assert not reaching, "\n".join(reaching)


def test_each_family_has_its_test_models():
    # The wing's rule above finds a family's test models by this name.
    families = SRC / "components" / "generators" / "families"
    folders = [p for p in families.iterdir() if (p / "__init__.py").is_file()]
    assert folders and all((p / "testmodel.py").is_file() and (p / "model.py").is_file() for p in folders)


def _documented_layers() -> list[tuple[str, tuple[str, ...]]]:
    """The rows of the table between the layer markers of docs/architecture.md, bottom first."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- layers:start -->(.*?)<!-- layers:end -->", text, re.S)
    assert match, f"{DOC} lost its layer table markers"
    rows = []
    for line in match.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].isdigit():
            continue  # header and rule
        rows.append((int(cells[0]), cells[1], tuple(n.strip(" `/") for n in cells[2].split(","))))
    return [(name, names) for _, name, names in sorted(rows)]


def test_docs_show_the_same_layers():
    assert _documented_layers() == LAYERS, "docs/architecture.md's layer table differs from LAYERS"
