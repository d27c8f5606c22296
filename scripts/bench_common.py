"""Shared by the benchmark scripts: the machine's description and writing a figures section into
docs/performance.md between markers, so re-running a benchmark replaces its own section only."""
from __future__ import annotations

import json
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "performance.md")
SPARC = os.path.join(os.path.dirname(ROOT), "shared", "data", "sparc")


def machine() -> str:
    from text2sql.tensors import describe_machine
    return describe_machine()


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+changes" if dirty else "")
    except OSError:
        return "unknown"


def write_section(name: str, markdown: str, figures: dict):
    """Replace the section between ``<!-- name:start -->`` and ``<!-- name:end -->`` (appended the
    first time) with ``markdown`` and the figures' JSON line."""
    block = (f"<!-- {name}:start -->\n{markdown.rstrip()}\n\n```\n{json.dumps(figures, sort_keys=True)}\n```\n"
             f"<!-- {name}:end -->")
    text = open(DOC, encoding="utf-8").read() if os.path.exists(DOC) else "# Performance\n"
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    with open(DOC, "w", encoding="utf-8") as f:
        f.write(text)


def word_pieces(tr, examples) -> list[int]:
    """Word pieces BERT reads for each encoder row (pre-turn and turns, all passes) of
    ``examples`` under trainer ``tr``'s encoder."""
    enc = tr.model.encoder
    return [sum(len(p.ids) for p in enc.layout(words, units).passes)
            for _, words, units in tr.model.rows_of(examples)]


def table(rows: list[list], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
