"""The pure core imports no I/O library (DESIGN §1)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("asyncio", "aiohttp", "asyncpg", "structlog")
PURE = ("syncd.proto", "syncd.merge", "syncd.routing", "syncd.topology")


def test_pure_core_loads_no_io_library() -> None:
    code = (
        "import json, sys\n"
        f"import {', '.join(PURE)}\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == []


def test_the_check_itself_sees_an_io_import() -> None:
    # guard against a check that can never fail: importing asyncio must show up
    code = "import json, sys, asyncio\nprint(json.dumps('asyncio' in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=60)
    assert json.loads(out.stdout) is True
