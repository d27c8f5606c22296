"""Build the project's own tiny SParC-format data set from the sources kept in the repo.

    python scripts/make_tiny_data.py [--out DIR]

Reads ``data/spider_cosql/tiny/source/<db>.sql`` (schema and rows) and ``source/interactions.json``
(the conversations, each tagged with its split), then writes into DIR (default
``data/spider_cosql/tiny``):

- ``database/<db>/<db>.sqlite``, rebuilt from scratch;
- ``tables.json``, read back from the built databases (``Schema.from_sqlite``);
- ``train.json`` and ``dev.json`` in the SParC format, after executing every gold query on its
  database: a query that fails, or returns no row, stops the build with its location.

The output is deterministic, so tests can check the committed files against a fresh build.
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from text2sql.schema import Schema  # noqa: E402

TINY = os.path.join(ROOT, "data", "spider_cosql", "tiny")
SOURCE = os.path.join(TINY, "source")


def build_databases(out_dir: str, source: str = SOURCE) -> dict[str, str]:
    paths = {}
    for name in sorted(os.listdir(source)):
        if not name.endswith(".sql"):
            continue
        db_id = name[:-4]
        db_dir = os.path.join(out_dir, "database", db_id)
        os.makedirs(db_dir, exist_ok=True)
        path = os.path.join(db_dir, f"{db_id}.sqlite")
        if os.path.exists(path):
            os.remove(path)
        con = sqlite3.connect(path)
        with open(os.path.join(source, name), encoding="utf-8") as f:
            con.executescript(f.read())
        con.commit()
        con.close()
        paths[db_id] = path
    return paths


def check_queries(interactions: list[dict], db_paths: dict[str, str]) -> list[str]:
    """Execute every gold query read-only; return one line per failure."""
    problems = []
    for i, inter in enumerate(interactions):
        db = inter["database_id"]
        if db not in db_paths:
            problems.append(f"interaction {i}: unknown database {db!r}")
            continue
        con = sqlite3.connect(f"file:{db_paths[db]}?mode=ro", uri=True)
        for t, turn in enumerate(inter["interaction"]):
            try:
                rows = con.execute(turn["query"]).fetchall()
            except sqlite3.Error as e:
                problems.append(f"interaction {i} turn {t}: {e}: {turn['query']}")
                continue
            if not rows or all(all(v is None for v in r) for r in rows):
                problems.append(f"interaction {i} turn {t}: no rows: {turn['query']}")
        con.close()
    return problems


def build(out_dir: str = TINY, source: str = SOURCE) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    db_paths = build_databases(out_dir, source)
    tables = [Schema.from_sqlite(db_paths[db], db).to_tables_json() for db in sorted(db_paths)]
    with open(os.path.join(out_dir, "tables.json"), "w", encoding="utf-8") as f:
        json.dump(tables, f, indent=1)
    with open(os.path.join(source, "interactions.json"), encoding="utf-8") as f:
        interactions = json.load(f)
    problems = check_queries(interactions, db_paths)
    if problems:
        raise SystemExit("gold queries failed:\n" + "\n".join(problems))
    summary = {}
    for split in ("train", "dev"):
        items = [{"database_id": it["database_id"], "interaction": it["interaction"],
                  "final": dict(it["interaction"][-1])}
                 for it in interactions if it["split"] == split]
        with open(os.path.join(out_dir, f"{split}.json"), "w", encoding="utf-8") as f:
            json.dump(items, f, indent=1)
            f.write("\n")
        summary[split] = (len({i["database_id"] for i in items}), len(items),
                          sum(len(i["interaction"]) for i in items))
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=TINY, help="output directory (default: data/spider_cosql/tiny)")
    args = p.parse_args(argv)
    summary = build(args.out)
    print("; ".join(f"{s}: {d} databases, {n} interactions, {t} turns" for s, (d, n, t) in summary.items()))


if __name__ == "__main__":
    main()
