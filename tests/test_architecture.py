"""The package's shape: starting a command imports no heavy module, and an import inside a function is there only to
keep one off that path. The layers themselves are import-linter's contracts (``[tool.importlinter]`` in
pyproject.toml, run by ``lint-imports`` in .ci/run); an import moved into a function to dodge them would hide a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pomonag_edge"

# What a function-level import may keep off the start-up path, and why: import time measured here (2-core CPU).
HEAVY = {
    "torch": "2.1 s",
    "scipy": "scipy.stats 1.9 s",
    "sklearn": "1.0 s",
    "onnx": "0.8 s",
    "matplotlib": "pyplot 0.7 s",
    "pymoo": "0.6 s, an optional extra",
    "onnxruntime": "0.15 s; the runtime is loaded when a backend is made",
    "ray": "an optional extra",
    "tensorrt": "an optional extra, GPUs only",
    "cuda": "cuda-python, with tensorrt",
}

# (module, imported module) -> why it is imported inside a function although it is cheap
ALLOWED = {
    ("pomonag_edge.files", "fcntl"): "POSIX only: the run-folder claim needs it, the rest of files.py imports anywhere",
    ("pomonag_edge.hardware.runner", "fcntl"): "POSIX only, and the runner runs on whatever Python the device has",
    ("pomonag_edge.hardware.runner", "numpy"): "the runner is stdlib-only on the device: numpy with onnxruntime only",
    ("pomonag_edge.userdata", "PIL"): "Pillow where image folders are read: a broken install is one line there",
}


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in PACKAGE.rglob("*.py")}


def _targets(module: str, node) -> list[str]:
    """The modules an import statement loads (``from X import a``: ``X.a`` where that is a module, else ``X``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    src = node.module
    if node.level:
        base = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        src = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
    return [f"{src}.{a.name}" for a in node.names if f"{src}.{a.name}" in MODULES] or [src]


def _imports(module: str) -> list[tuple[ast.AST, bool]]:
    """(import statement, inside a function) of ``module``, ``if TYPE_CHECKING:`` blocks left out."""
    found = []

    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, in_function))
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(ast.parse(MODULES[module].read_text(encoding="utf-8")), False)
    return found


AT_TOP = {m: [t for node, inside in _imports(m) if not inside for t in _targets(m, node)] for m in MODULES}


def _heavy(name: str, seen: set) -> str | None:
    """The heavy module importing ``name`` pulls in through module-level imports (its packages' too), or None."""
    parts = name.split(".")
    for loaded in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
        if loaded in seen:
            continue
        seen.add(loaded)
        if parts[0] in HEAVY:
            return loaded
        for target in AT_TOP.get(loaded, ()):
            found = _heavy(target, seen)
            if found:
                return found
    return None


def test_starting_a_command_imports_no_heavy_module():
    """``pomonag-edge CMD --help`` (and a bad option) loads cli.py and the command's module only: none of them may
    pull in torch, onnxruntime, scipy, matplotlib or another heavy module at import."""
    code = ("import sys, pomonag_edge.cli as cli, importlib\n"
            "for name in cli.COMMANDS: importlib.import_module('pomonag_edge.commands.' + name)\n"
            f"print(sorted(m for m in {sorted(HEAVY)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"starting a command imports {out.strip()}"


def test_function_level_imports_only_keep_heavy_modules_off_the_start_up_path():
    """Each import inside a function of the package loads a module that pulls in one of ``HEAVY`` at import, or is
    in ``ALLOWED`` with its reason. Any other belongs at the top of its module; where moving it up would close an
    import cycle, the layers are wrong (``lint-imports`` names the cycle)."""
    wrong = []
    for module in sorted(MODULES):
        for node, inside in _imports(module):
            targets = _targets(module, node)
            if not inside or any(_heavy(t, set()) for t in targets):
                continue
            if any((module, t.split(".")[0]) in ALLOWED or (module, t) in ALLOWED for t in targets):
                continue
            wrong.append(f"{module}:{node.lineno} imports {', '.join(targets)}")
    assert not wrong, ("imports inside functions that keep no heavy module off the start-up path (move them to the "
                       "top of the module):\n" + "\n".join(wrong))


def test_the_allowlist_names_imports_that_are_there():
    """An entry of ``ALLOWED`` whose import has gone is removed with it, so the list stays short and true."""
    present = {(m, t) for m in MODULES for node, inside in _imports(m) if inside for t in _targets(m, node)}
    present |= {(m, t.split(".")[0]) for m, t in present}
    assert set(ALLOWED) <= present, set(ALLOWED) - present
