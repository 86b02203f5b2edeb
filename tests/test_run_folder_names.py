"""One module spells the run folder's layout: ``almond_cli/training/run_folder.py``.

Walks every module of ``almond_cli`` with ``ast`` and fails where another module's code (docstrings aside: they
may say what a run folder holds) spells a file or folder name of a run folder, so a second copy of the layout
cannot drift from the first (resume once picked another checkpoint than evaluate did).
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "almond_cli"
LAYOUT_MODULE = PACKAGE_ROOT / "training" / "run_folder.py"

# Names no other module may write inside any string (f-string parts included).
NAMES = (
    "last.pt",
    "vae.pt",
    "step-",
    "metrics.jsonl",
    "summary.json",
    "train.log",
    ".hydra/",
    "hydra.yaml",
    "overrides.yaml",
    ".lock",
    "checkpoints/",
)
# Whole strings no other module may write: a file's or folder's name on its own.
WHOLE = ("checkpoints", "config.yaml", ".hydra")
# Folder names that are ordinary words elsewhere ("prior" is also what= of almond sample, "baselines" a summary
# key): refused where they are joined onto a path with ``/``.
PATH_PARTS = ("eval", "samples", "prior", "baselines")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string nodes that are docstrings."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                found.add(id(first.value))
    return found


def layout_names_in(source: str) -> list[str]:
    """Where ``source`` spells a run-folder name: "line N: 'text'" for each."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    joined = {
        id(side)
        for node in ast.walk(tree)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
        for side in (node.left, node.right)
    }
    found = []
    for node in sorted(ast.walk(tree), key=lambda node: (getattr(node, "lineno", 0), getattr(node, "col_offset", 0))):
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or id(node) in docstrings:
            continue
        text = node.value
        if any(name in text for name in NAMES) or text in WHOLE or (text in PATH_PARTS and id(node) in joined):
            found.append(f"line {node.lineno}: {text[:80]!r}")
    return found


def test_only_the_run_folder_module_spells_the_layout():
    offenders = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        if path == LAYOUT_MODULE:
            continue
        offenders += [
            f"{path.relative_to(PACKAGE_ROOT.parent)} {where}"
            for where in layout_names_in(path.read_text(encoding="utf-8"))
        ]
    assert not offenders, "run-folder names spelled outside training/run_folder.py (use RunFolder): " + "; ".join(
        offenders
    )


def test_the_scan_finds_a_name_put_back():
    """The check can fail: each way of spelling a name is found, and docstrings and ordinary words are not."""
    assert layout_names_in('path = run_dir / "checkpoints" / "last.pt"\n') == [
        "line 1: 'checkpoints'",
        "line 1: 'last.pt'",
    ]
    assert layout_names_in('message = f"{folder} has no metrics.jsonl"\n') == ["line 1: ' has no metrics.jsonl'"]
    assert layout_names_in('out = run_dir / "samples"\n') == ["line 1: 'samples'"]
    assert layout_names_in('"""Reads checkpoints/last.pt."""\nwhat = "prior"\nkey = summary["baselines"]\n') == []
    the_trainer = (PACKAGE_ROOT / "training" / "trainer.py").read_text(encoding="utf-8")
    assert layout_names_in(the_trainer) == []
    assert layout_names_in(the_trainer + '\nLAST = "last.pt"\n')  # the trainer with one name put back


def test_the_log_file_is_the_one_hydra_writes():
    """Hydra names the log after the job (``hydra.job.name``); the layout's ``train.log`` must be that name."""
    from almond_cli.training.run_folder import RunFolder

    config = yaml.safe_load((PACKAGE_ROOT.parent / "configs" / "train.yaml").read_text(encoding="utf-8"))
    assert f"{config['hydra']['job']['name']}.log" == RunFolder.LOG
