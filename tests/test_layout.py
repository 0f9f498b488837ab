"""The code's shape, checked from the source: one-way imports between layers, no import cycle, torch
imported in one module, small serving modules, and a CLI that loads build-time code only for its command.

Layers, lowest first: ``space.model`` (folder, manifests, CPU) <- ``space.backends`` (one module per
runtime, the registry, the choice) <- ``space.serving`` (the service) <- ``space.web`` (HTTP, page, MCP).
The bake step sits on top (it uses serving code), and the benchmark on it (it bakes, and measures bare
speed as the bake does); nothing imports either but the CLI. Settings, errors, the runtime registry and
the CPU facts are leaves every layer may use. Each concept lives in one place: runtime names in the
registry, request parameters in one module.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from space.backends.registry import NAMES, PRECISIONS
from tests.conftest import REPO

PACKAGE = REPO / "space"
LEAVES = {
    "space",
    "space.settings",
    "space.errors",
    "space.memory",
    "space.backends.registry",
    "space.model.cpu",
}
RANK = {"model": 0, "backends": 1, "serving": 2, "web": 3, "bake": 4, "bench": 5, "cli": 6, "__main__": 7}
SERVING_PATH = ("model", "backends", "serving", "web")
MAX_SERVING_LINES = 250


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> set[str]:
    """Every module named by an import statement in ``path``, at any depth (lazy imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    """Module -> the ``space`` modules it imports (``from pkg import name`` counts when name is a module)."""
    known = modules()
    return {name: {m for m in imports(path) if m in known and m != name} for name, path in known.items()}


def layer(name: str) -> str | None:
    return None if name in LEAVES or name == "space.backends" else name.split(".")[1]


def test_the_module_graph_has_no_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target] if target in path else [node, target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_imports_run_one_way_between_layers() -> None:
    wrong = []
    for source, targets in graph().items():
        if layer(source) is None:
            assert targets <= LEAVES, f"{source} is a leaf but imports {targets - LEAVES}"
            continue
        for target in targets:
            if layer(target) is None or layer(target) == layer(source):
                continue
            if RANK[layer(target)] >= RANK[layer(source)]:
                wrong.append(f"{source} -> {target}")
    assert not wrong, wrong


def test_nothing_but_the_cli_imports_bake_or_bench() -> None:
    for source, targets in graph().items():
        for target in targets:
            if layer(target) in ("bake", "bench") and layer(source) != layer(target):
                assert source == "space.cli" or layer(source) == "bench", f"{source} imports {target}"


def test_runtimes_are_imported_each_by_its_own_module() -> None:
    by_root: dict[str, set[str]] = {}
    for name, path in modules().items():
        for module in imports(path):
            by_root.setdefault(module.split(".")[0], set()).add(name)
    assert by_root.get("torch") == {"space.backends.pytorch"}, by_root.get("torch")
    assert "onnx" not in by_root, by_root.get("onnx")  # ONNX Runtime's quantiser imports it, at bake time
    # OpenVINO: served by one module, converted by one bake module, the only one that imports NNCF.
    assert by_root.get("openvino") == {"space.backends.openvino_runtime", "space.bake.openvino_export"}
    assert by_root.get("nncf") == {"space.bake.openvino_export"}, by_root.get("nncf")


def test_no_serving_module_is_long() -> None:
    long = {
        name: lines
        for name, path in modules().items()
        if layer(name) in SERVING_PATH and (lines := len(path.read_text().splitlines())) > MAX_SERVING_LINES
    }
    assert not long, long


def test_serve_loads_neither_bake_nor_bench_code() -> None:
    script = (
        "import sys; from space.cli import build_parser; build_parser('serve').parse_args(['serve']); "
        "import space.web.app; "
        "print(sorted(m for m in sys.modules if m.startswith(('space.bake', 'space.bench', 'torch', 'onnx.',"
        " 'nncf', 'openvino')) or m == 'onnx'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout


def strings(path: Path) -> list[str]:
    """Every string constant in ``path``, f-string pieces included."""
    tree = ast.parse(path.read_text(), str(path))
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def test_runtime_names_are_spelled_only_in_the_backends() -> None:
    """A new runtime is one module and one registry entry: no other module names one (``"openvino"``,
    ``"onnxruntime-int8"``, ...); they ask the registry."""
    named = re.compile(rf"^({'|'.join(NAMES)})(-({'|'.join(map(re.escape, PRECISIONS))}))?$")
    quoted = re.compile(rf"[\"']({'|'.join(NAMES)})[\"']")
    found = {
        name: sorted({s for s in strings(path) if named.match(s)} | set(quoted.findall(path.read_text())))
        for name, path in modules().items()
        if not name.startswith("space.backends")
    }
    assert not {name: hits for name, hits in found.items() if hits}, found


def test_request_parameters_are_validated_in_one_module() -> None:
    """Every 4xx about top_k, function_to_apply or target is raised in space/serving/params.py; the front
    doors only name the parameters they read."""
    where = {}
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                continue
            texts = [
                s.value
                for s in ast.walk(node.exc)
                if isinstance(s, ast.Constant) and isinstance(s.value, str)
            ]
            if any(re.search(r"\b(top_k|function_to_apply|target)\b", text) for text in texts):
                where.setdefault(name, []).append(node.lineno)
    assert set(where) == {"space.serving.params"}, where


def test_no_module_outside_serving_imports_a_serving_modules_private_names() -> None:
    wrong = []
    for name, path in modules().items():
        if layer(name) == "serving":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("space.serving"):
                wrong += [f"{name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert not wrong, wrong
