"""How the benchmark scripts start ``almond``: the same command a user would type, from the same install.

The script installed beside this Python (a virtual environment's ``bin/``) comes first, so a benchmark run from a
venv times that venv's code even when another ``almond`` is on PATH; then PATH; then ``python -m almond_cli``,
which works wherever the package imports.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def almond_command() -> list[str]:
    beside = Path(sys.executable).parent / "almond"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("almond")
    return [found] if found else [sys.executable, "-m", "almond_cli"]
