"""Render the link state table of ``syncd/proto/link.py`` to ``protocol/states.md``.

Run ``python protocol/draw_states.py`` after changing the table and commit the
result; ``tests/unit/test_link_states.py`` fails while the drawing is stale.
"""
from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from syncd.proto.link import render_mermaid  # noqa: E402

OUT = ROOT / "protocol" / "states.md"


def main() -> None:
    OUT.write_text(render_mermaid(), encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
