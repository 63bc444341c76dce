"""The package's layers: every import inside ``diffuseq`` points down one declared order, and the light parts
(the package itself, ``fileio``, the metrics) import without torch.

Each module of ``diffuseq/`` is found by its path; its unit is the first name under ``diffuseq/`` (a sub-package
or a top-level module), or ``__init__`` for the package's own ``__init__.py``. A module may import its own unit
and any unit of a lower layer; every import counts (relative or absolute, at the top or inside a function).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

PACKAGE = ROOT / "diffuseq"

# The layers, lowest first. Units of one layer may not import each other. To place a new module, or rename
# one (the decode-to-files module, say), edit this list only.
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("fileio", "hf_cache", "dist_util", "runtime"),
    ("diffusion",),
    ("data",),
    ("model",),
    ("samplers",),
    ("metrics",),
    ("config",),
    ("loading",),
    ("outputs", "report"),
    ("training",),
    ("api",),
    ("decode_files",),
    ("commands",),
    ("__init__",),
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    """``diffuseq.a.b`` for ``diffuseq/a/b.py``, ``diffuseq.a`` for ``diffuseq/a/__init__.py``."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def unit(module: str) -> str:
    """The unit a module belongs to: ``diffuseq.model.kernels`` -> ``model``; ``diffuseq`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported(module: str, path: Path) -> set[str]:
    """The ``diffuseq`` modules that ``module`` imports (``from pkg import name`` counts as ``pkg.name`` when
    that is a module, else as ``pkg``)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" for alias in node.names]
            found.update(name if name in MODULES else target for name in names)
    return {name for name in found if name == "diffuseq" or name.startswith("diffuseq.")}


def import_edges() -> list[tuple[str, str]]:
    """Every (importer, imported) pair of ``diffuseq`` modules."""
    return sorted((module, target) for module, path in MODULES.items() for target in imported(module, path))


def back_edges(edges: list[tuple[str, str]]) -> list[str]:
    """The imports that do not point down the layers."""
    return [f"{a} ({unit(a)}) imports {b} ({unit(b)})" for a, b in edges
            if unit(a) != unit(b) and RANK[unit(b)] >= RANK[unit(a)]]


def test_every_module_has_a_layer():
    assert len(RANK) == sum(len(units) for units in LAYERS), "a unit is named in two layers"
    missing = sorted({unit(m) for m in MODULES} - set(RANK))
    assert not missing, f"place these modules in LAYERS of {Path(__file__).name}: {missing}"
    unused = sorted(set(RANK) - {unit(m) for m in MODULES})
    assert not unused, f"LAYERS names units that no longer exist: {unused}"


def test_imports_point_down_the_layers():
    edges = import_edges()
    assert len(edges) > 100, "the import graph looks empty: the parser missed the imports"
    wrong = back_edges(edges)
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_a_back_edge_is_found():
    edges = [("diffuseq.model.checkpoints", "diffuseq.config.train"), ("diffuseq.samplers.clamp", "diffuseq.model"),
             ("diffuseq.outputs", "diffuseq.report")]
    assert back_edges(edges) == ["diffuseq.model.checkpoints (model) imports diffuseq.config.train (config)",
                                 "diffuseq.outputs (outputs) imports diffuseq.report (report)"]


@pytest.mark.parametrize("modules", ["diffuseq, diffuseq.fileio", "diffuseq.metrics, diffuseq.metrics.files",
                                     "diffuseq.errors, diffuseq.report, diffuseq.outputs"])
def test_light_modules_import_without_torch(modules):
    code = f"import sys; import {modules}; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_lazy_top_level_names():
    code = ("import sys, diffuseq; assert 'torch' not in sys.modules; "
            "from diffuseq import Seq2SeqDiffusion, Generation, TrainConfig, DecodeConfig; "
            "from diffuseq.api import Seq2SeqDiffusion as S; assert S is Seq2SeqDiffusion; "
            "assert set(diffuseq.__all__) <= set(dir(diffuseq)); from diffuseq import metrics; "
            "import pytest\n"
            "with pytest.raises(AttributeError): diffuseq.Nothing")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
