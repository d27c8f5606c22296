import json
import os
import sqlite3
import sys

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import make_tiny_data  # noqa: E402

from text2sql.schema import Schema, load_tables  # noqa: E402
from text2sql.sql_tokens import check_restore, tokenize_sql  # noqa: E402

TINY = os.path.join(ROOT, "data", "spider_cosql", "tiny")


def test_build_is_deterministic_and_matches_committed_files(tmp_path):
    summary = make_tiny_data.build(str(tmp_path))
    assert summary["train"][1] + summary["dev"][1] >= 30
    for name in ("train.json", "dev.json", "tables.json"):
        built = json.load(open(tmp_path / name))
        committed = json.load(open(os.path.join(TINY, name)))
        assert built == committed, f"{name} is stale: run python scripts/make_tiny_data.py"


def test_shape_of_the_data():
    train = json.load(open(os.path.join(TINY, "train.json")))
    dev = json.load(open(os.path.join(TINY, "dev.json")))
    assert len(train) + len(dev) >= 30
    dbs = {i["database_id"] for i in train} | {i["database_id"] for i in dev}
    assert len(dbs) >= 3
    # never validate on a database that trains
    assert not ({i["database_id"] for i in train} & {i["database_id"] for i in dev})
    for inter in train + dev:
        assert 2 <= len(inter["interaction"]) <= 4


def test_every_gold_query_executes_and_returns_rows():
    schemas = load_tables(os.path.join(TINY, "tables.json"))
    for split in ("train", "dev"):
        for inter in json.load(open(os.path.join(TINY, f"{split}.json"))):
            db = inter["database_id"]
            con = sqlite3.connect(f"file:{TINY}/database/{db}/{db}.sqlite?mode=ro", uri=True)
            for turn in inter["interaction"]:
                assert con.execute(turn["query"]).fetchall(), turn["query"]
                tokenize_sql(turn["query"], schemas[db], "full")
                assert check_restore(turn["query"], schemas[db]) is None
            con.close()


def test_constructs_are_covered_in_both_splits():
    need = ["JOIN", "GROUP BY", "HAVING", "ORDER BY", "LIMIT", "INTERSECT", "UNION", "EXCEPT",
            "NOT IN (SELECT", "> (SELECT", "DISTINCT", "LIKE", "BETWEEN", "count(*)", "avg(", "sum("]
    for split in ("train", "dev"):
        text = " ".join(t["query"] for i in json.load(open(os.path.join(TINY, f"{split}.json")))
                        for t in i["interaction"])
        missing = [n for n in need if n not in text]
        assert not missing, (split, missing)


def test_tables_json_matches_the_sqlite_files():
    schemas = load_tables(os.path.join(TINY, "tables.json"))
    for db, s in schemas.items():
        live = Schema.from_sqlite(os.path.join(TINY, "database", db, f"{db}.sqlite"))
        assert live.units == s.units and live.foreign_keys == s.foreign_keys
        assert len(s.fk_edges()) >= 2
