"""The package's import graph, function-level imports included, has no cycle; the converter is a leaf that only the
command line imports, and the reading of the authors' format sits low in the graph."""

import ast
from pathlib import Path

import pytest


PACKAGE = Path(__file__).resolve().parents[1] / "videollamb_hf"


def _module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph(package: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """module -> {imported package module: line of the first such import}, for every `import` / `from ... import`
    at any depth (inside functions and classes too). `from . import x` counts as importing `x` where `x` is a
    module, else the package; importing a submodule is not counted as importing its parent packages."""
    modules = {_module_name(path, package): path for path in package.rglob("*.py")}
    root = package.name
    graph = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                if target.split(".")[0] == root and target in modules and target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Every cycle met by a depth-first search (each as the list of modules, the first repeated at the end)."""
    state, stack, cycles = {}, [], []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in graph[module]:
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return cycles


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "videollamb_hf.original_format" in graph and len(graph) > 20
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_can_fail(tmp_path):
    package = tmp_path / "videollamb_hf"
    package.mkdir()
    (package / "__init__.py").write_text("from .a import f\n")
    (package / "a.py").write_text("def f():\n    from .b import g\n    return g\n")
    (package / "b.py").write_text("import os\n\n\ndef g():\n    from . import a\n    return a\n")
    cycles = find_cycles(import_graph(package))
    assert ["videollamb_hf.a", "videollamb_hf.b", "videollamb_hf.a"] in cycles


def test_the_converter_is_a_leaf_and_the_original_format_is_low():
    graph = import_graph()
    converter = "videollamb_hf.convert_videollamb_original_to_hf"
    importers = sorted(module for module, edges in graph.items() if converter in edges)
    assert importers == ["videollamb_hf.cli"]
    assert graph["videollamb_hf.original_format"] == {}  # imports nothing of the package
    for module in ("videollamb_hf.configuration_videollamb", "videollamb_hf.modeling_videollamb"):
        assert "videollamb_hf.original_format" in graph[module]


@pytest.mark.parametrize(
    "name",
    ["original_config_to_videollamb", "convert_original_key", "finish_original_loading", "MEM_VARIANT_FIELDS",
     "KNOWN_UNUSED_ORIGINAL_KEYS", "download_options", "convert_original_checkpoint", "main"],
)  # fmt: skip
def test_names_users_imported_from_the_converter_are_still_there(name):
    import videollamb_hf.convert_videollamb_original_to_hf as converter
    import videollamb_hf.original_format as original_format

    assert hasattr(converter, name)
    if hasattr(original_format, name):
        assert getattr(converter, name) is getattr(original_format, name)
