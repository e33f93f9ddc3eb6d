"""The package's layers: an import never points up, and models and data (side by side) never import each other.

Every `import` / `from ... import` of every module is checked, at the top level and inside functions (a lazy import
is still a dependency). Fast start: `omni-mega --help`, `--version` and `tools/preprocess_data.py --help` import
neither torch nor megatron."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "omni_mega"
# Lowest first. A package may import its own modules and any package of a lower layer; packages of one layer are
# independent of each other.
LAYERS = [("config",), ("runtime",), ("ops",), ("models", "data"), ("inference", "interop"), ("objectives",),
          ("training",), ("cli", "launch", "testing"), ("__main__",)]
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}


def _package_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported(node: ast.AST, module_parts: list[str]) -> list[str]:
    """Sub-packages of omni_mega an import node names."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: resolve against the importing module's package
            base = module_parts[: len(module_parts) - node.level]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        names = [mod] if mod != "omni_mega" else [f"omni_mega.{a.name}" for a in node.names]
    else:
        return []
    return [n.split(".")[1] for n in names if n.startswith("omni_mega.") and len(n.split(".")) > 1]


def import_graph() -> dict[str, dict[str, list[str]]]:
    """importing package -> imported package -> the modules (file:line) that import it."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        src = _package_of(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for dst in _imported(node, parts[:-1] if path.name != "__init__.py" else parts):
                if dst != src:
                    graph[src][dst].append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return graph


def test_every_package_has_a_layer():
    packages = {_package_of(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert packages <= set(LEVEL), f"give these packages a layer in tests/test_layers.py: {packages - set(LEVEL)}"


def test_imports_never_point_up():
    bad = [f"{src} -> {dst}: {', '.join(where)}" for src, dsts in import_graph().items() for dst, where in dsts.items()
           if src in LEVEL and dst in LEVEL and LEVEL[dst] >= LEVEL[src]]
    assert not bad, "imports that point up or sideways:\n" + "\n".join(bad)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    code = "def f():\n    from omni_mega.training import trainer\n\nfrom ..data import source\n"
    nodes = [n for n in ast.walk(ast.parse(code)) if isinstance(n, (ast.Import, ast.ImportFrom))]
    found = [d for n in nodes for d in _imported(n, ["omni_mega", "models", "x"])]
    assert sorted(found) == ["data", "training"]


@pytest.mark.parametrize("argv", [["-m", "omni_mega", "--help"], ["-m", "omni_mega", "--version"],
                                  ["-m", "omni_mega", "train", "--help"], ["tools/preprocess_data.py", "--help"]])
def test_help_paths_import_neither_torch_nor_megatron(argv):
    probe = ("import runpy, sys; sys.argv = {argv!r}; code = 0\n"
             "try:\n    runpy.run_{kind}({target!r}, run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code or 0\n"
             "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'megatron'))\n"
             "print('HEAVY', heavy[:5]); sys.exit(code)\n")
    kind, target = ("module", argv[1]) if argv[0] == "-m" else ("path", argv[0])
    rest = argv[2:] if argv[0] == "-m" else argv[1:]
    code = probe.format(argv=[target, *rest], kind=kind, target=target)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "HEAVY []" in p.stdout, p.stdout[-2000:]
