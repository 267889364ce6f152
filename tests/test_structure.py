"""The package's shape: imports between vit's modules run one way (scripts -> engine -> model), read from
the source with `ast`; `import vit` and the scripts' --help load no optional or heavy package; and the product's
text speaks of what it does, not of how it was built."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vit"
# What vit/model.py may import from the package: the errors it raises. Its kernels are set from outside
# (vit.kernels.use), so the model file stays the paper's computation in reference torch ops.
MODEL_MAY_IMPORT = {"vit.errors"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """vit.* modules that `path` imports, at any depth of its code (lazy imports inside functions count)."""
    mod, found = module_name(path), set()
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "vit"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.split(".")[0] != "vit":
                continue
            found.add(target)
            for alias in node.names:  # `from . import data` imports the module vit.data
                if (PACKAGE / f"{alias.name}.py").exists() and target == "vit":
                    found.add(f"vit.{alias.name}")
    return {m for m in found if m != mod}


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    # The package's __init__ re-exports; it is the top, not an edge that makes cycles.
    return {m: {i for i in imports_of(p) if i in modules and i != "vit"} for m, p in modules.items() if m != "vit"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_package_imports_have_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_model_file_imports_nothing_of_ours_but_errors():
    graph = import_graph()
    assert "vit.errors" in graph["vit.model"]  # the walk sees relative imports (`from .errors import ...`)
    assert graph["vit.model"] <= MODEL_MAY_IMPORT, graph["vit.model"] - MODEL_MAY_IMPORT
    assert graph["vit.kernels"] <= {"vit.errors", "vit.model"}


def test_weight_formats_know_nothing_of_the_registry_or_training():
    graph = import_graph()
    assert not graph["vit.weights"] & {"vit.registry", "vit.train", "vit.evaluate", "vit.recipes"}


# Packages that `import vit` and the scripts' --help leave unimported: each is imported where a feature uses it,
# so that start-up costs torch's import and little more (benchmarks/startup.py measures it).
HEAVY = ("timm", "torchvision", "transformers", "datasets", "webdataset", "onnx", "onnxruntime", "onnxscript",
         "tensorboard", "peft", "matplotlib", "sklearn", "scipy", "pandas", "pyarrow", "huggingface_hub")
HELP = """import runpy, sys
sys.argv = [{script!r}, "--help"]
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit:
    pass
"""
PACKAGES_LOADED = "\nimport sys\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"


@pytest.mark.parametrize("start", ["import vit", "train.py --help", "evaluate.py --help"])
def test_start_up_imports_no_optional_or_heavy_package(start):
    code = (start if start == "import vit" else HELP.format(script=start.split()[0])) + PACKAGES_LOADED
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    loaded = set(p.stdout.splitlines()[-1].split())
    assert "torch" in loaded and "vit" in loaded
    assert not loaded & set(HEAVY), f"{start} imports {sorted(loaded & set(HEAVY))}"


DATA_LAYER = ("data", "sources", "hf_data", "wds_data")


def test_data_layer_takes_arguments_past_the_third_by_keyword():
    """A function of the data layer with more than three parameters takes the rest by keyword (`*`), so a call
    such as train_loader(files, transform, channels=1, batch_size=64, ...) reads without counting positions."""
    functions, by_position = 0, []
    for name in DATA_LAYER:
        path = PACKAGE / f"{name}.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions += 1
                positional = [a.arg for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]
                if len(positional) > 3:
                    by_position.append(f"vit/{name}.py:{node.lineno} {node.name}({', '.join(positional)})")
    assert functions > 50  # the walk sees the methods too
    assert not by_position, "\n".join(by_position)


HISTORY = re.compile(r"\bsessions? ?\d|\bissues? #?\d", re.IGNORECASE)


def test_the_product_does_not_narrate_its_development():
    files = subprocess.run(["git", "ls-files", "vit", "tests", "README.md", "docs", "benchmarks/*.py",
                            "benchmarks/README.md", "train.py", "evaluate.py"],
                           cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    hits = [f"{f}:{n}: {line.strip()}" for f in files if (ROOT / f).is_file() and f != "tests/test_structure.py"
            for n, line in enumerate((ROOT / f).read_text(errors="replace").splitlines(), 1) if HISTORY.search(line)]
    assert not hits, "\n".join(hits[:20])
