"""The shipped tiny data set: built by scripts/make_tiny_data.py, checked, and kept in sync with its sources."""
import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import make_tiny_data  # noqa: E402

from text2sql.schema import Schema, load_tables  # noqa: E402
from text2sql.sql_tokens import check_restore, tokenize_sql  # noqa: E402

TINY = os.path.join(ROOT, "data", "spider_cosql", "tiny")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One fresh build into a temporary directory, shared by the tests of this module."""
    out = tmp_path_factory.mktemp("tiny")
    summary = make_tiny_data.build(str(out))
    return str(out), summary


def load(d, name):
    with open(os.path.join(d, name), encoding="utf-8") as f:
        return json.load(f)


def ro(path):
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def test_counts_and_splits(built):
    d, summary = built
    train, dev = load(d, "train.json"), load(d, "dev.json")
    assert len(train) + len(dev) >= 48
    assert len(train) >= 36 and len(dev) >= 12
    assert summary["train"]["interactions"] == len(train) and summary["dev"]["interactions"] == len(dev)
    train_dbs = {i["database_id"] for i in train}
    dev_dbs = {i["database_id"] for i in dev}
    assert len(train_dbs | dev_dbs) >= 4 and len(train_dbs) >= 3 and dev_dbs
    # never validate on a database that trains
    assert not train_dbs & dev_dbs
    for inter in train + dev:
        assert 2 <= len(inter["interaction"]) <= 4
        assert inter["final"] == inter["interaction"][-1]
        assert set(inter) == {"database_id", "interaction", "final"}


def test_every_gold_query_executes_and_returns_rows(built):
    d, summary = built
    assert summary["empty"] == []
    schemas = load_tables(os.path.join(d, "tables.json"))
    for split in ("train", "dev"):
        for inter in load(d, f"{split}.json"):
            db = inter["database_id"]
            con = ro(os.path.join(d, "database", db, f"{db}.sqlite"))
            for turn in inter["interaction"]:
                rows = con.execute(turn["query"]).fetchall()
                assert rows and any(v is not None for r in rows for v in r), turn["query"]
                # the parser's own target forms must handle every shipped query
                tokenize_sql(turn["query"], schemas[db], "full")
                assert check_restore(turn["query"], schemas[db]) is None, turn["query"]
            con.close()


def test_constructs_are_covered_in_both_splits(built):
    d, summary = built
    assert summary["missing"] == {"train": [], "dev": []}
    # the same, spelled independently of the script's regular expressions
    need = ["SELECT *", "DISTINCT", " = ", " > ", " < ", " >= ", " != ", "LIKE", "BETWEEN", " AND ", " OR ",
            " IN (SELECT", "NOT IN (SELECT", "count(*)", "sum(", "avg(", "min(", "max(", "GROUP BY",
            "HAVING", "ORDER BY", " ASC", " DESC", "LIMIT", "JOIN", "AS T3", "> (SELECT avg(",
            "INTERSECT", "UNION", "EXCEPT"]
    for split in ("train", "dev"):
        text = " ".join(t["query"] for i in load(d, f"{split}.json") for t in i["interaction"])
        assert not [n for n in need if n not in text], split


def test_tables_json_round_trips_and_matches_the_databases(built):
    d, _ = built
    entries = load(d, "tables.json")
    assert [e["db_id"] for e in entries] == sorted(e["db_id"] for e in entries)
    for entry in entries:
        s = Schema.from_tables_json(entry)
        assert s.to_tables_json() == entry
        db = entry["db_id"]
        path = os.path.join(d, "database", db, f"{db}.sqlite")
        live = Schema.from_sqlite(path, db)
        assert live.units == s.units and live.foreign_keys == s.foreign_keys
        assert live.primary_keys == s.primary_keys
        assert 3 <= len(s.tables) <= 5 and len(s.fk_edges()) >= 2
        # a join path of length 2 (A -> link -> B) exists
        assert any(len(s.shortest_path(a, b) or []) >= 2
                   for a in range(len(s.tables)) for b in range(len(s.tables)))
        con = ro(path)
        for t in s.tables:
            n = con.execute(f'SELECT count(*) FROM "{t.name}"').fetchone()[0]
            assert 10 <= n <= 30, (db, t.name, n)
        con.close()


def test_committed_files_equal_a_fresh_build(built):
    d, _ = built
    for name in ("train.json", "dev.json", "tables.json"):
        assert load(d, name) == load(TINY, name), f"{name} is stale: run python scripts/make_tiny_data.py"
    for entry in load(d, "tables.json"):
        db = entry["db_id"]
        rel = os.path.join("database", db, f"{db}.sqlite")
        fresh, committed = ro(os.path.join(d, rel)), ro(os.path.join(TINY, rel))
        assert list(fresh.iterdump()) == list(committed.iterdump()), f"{rel} is stale"
        fresh.close()
        committed.close()


def test_build_is_deterministic(built, tmp_path):
    d, _ = built
    make_tiny_data.build(str(tmp_path))
    for name in ("train.json", "dev.json", "tables.json"):
        with open(os.path.join(d, name), "rb") as a, open(tmp_path / name, "rb") as b:
            assert a.read() == b.read(), name


# ---- failures are loud --------------------------------------------------------------------------
@pytest.fixture
def source_copy(tmp_path):
    src = tmp_path / "source"
    shutil.copytree(make_tiny_data.SOURCE, src)
    return src


def edit_interactions(src, change):
    path = src / "interactions.json"
    items = json.loads(path.read_text())
    change(items)
    path.write_text(json.dumps(items))


def test_a_broken_query_names_interaction_turn_and_error(source_copy, tmp_path):
    edit_interactions(source_copy, lambda items: items[3]["interaction"][1].update(
        query="SELECT grade FROM student WHERE no_such_column = 1"))
    with pytest.raises(make_tiny_data.BuildError) as e:
        make_tiny_data.build(str(tmp_path / "out"), str(source_copy))
    assert len(e.value.problems) == 1
    assert "interaction 3" in e.value.problems[0] and "turn 1" in e.value.problems[0]
    assert "no_such_column" in e.value.problems[0]
    # and the command exits non-zero, naming it on stderr
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_tiny_data.py"),
                        "--out", str(tmp_path / "out"), "--source", str(source_copy)],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "interaction 3" in p.stderr and "turn 1" in p.stderr


def test_style_problems_are_errors(source_copy, tmp_path):
    bad = ["select name FROM teacher",                                      # lower-case keyword
           "SELECT name FROM teacher WHERE subject = 'Math'",               # single quotes
           "SELECT T1.name FROM teacher AS T1",                             # alias on one table
           "SELECT a.name FROM teacher AS a JOIN club AS b ON a.teacher_id = b.advisor_id",
           "SELECT T1.name FROM teacher AS T1 JOIN club AS T2 ON T1.teacher_id = T2.club_id"]  # not an FK
    edit_interactions(source_copy, lambda items: items[4]["interaction"].__setitem__(
        slice(None), [{"utterance": "x", "query": q} for q in bad[:4]]))
    edit_interactions(source_copy, lambda items: items[5]["interaction"].__setitem__(
        slice(None), [{"utterance": "x", "query": bad[4]}, {"utterance": "y", "query": bad[4]}]))
    with pytest.raises(make_tiny_data.BuildError) as e:
        make_tiny_data.build(str(tmp_path / "out"), str(source_copy))
    text = "\n".join(e.value.problems)
    assert "interaction 4 (school_club) turn 0: keyword 'select' must be upper-case" in text
    assert "interaction 4 (school_club) turn 1: string literals must be double-quoted" in text
    assert "interaction 4 (school_club) turn 2: single table teacher takes no alias" in text
    assert "interaction 4 (school_club) turn 3: joined tables must be aliased T1, T2" in text
    assert "interaction 5 (school_club) turn 0: join club.club_id = teacher.teacher_id is not along a foreign key" \
        in text


def test_bad_splits_are_errors(source_copy, tmp_path):
    def mix(items):
        items[0]["split"] = "dev"                   # school_club in both splits
        items[1]["interaction"] = items[1]["interaction"][:1]   # one turn only
    edit_interactions(source_copy, mix)
    with pytest.raises(make_tiny_data.BuildError) as e:
        make_tiny_data.build(str(tmp_path / "out"), str(source_copy))
    assert "interaction 1: needs 2-4 turns" in e.value.problems
    assert "database 'school_club' is used in both train and dev" in e.value.problems


def test_empty_results_are_reported_not_fatal(source_copy, tmp_path):
    edit_interactions(source_copy, lambda items: items[0]["interaction"][1].update(
        query='SELECT count(*) FROM student WHERE city = "Atlantis"'))   # count is a row: fine
    edit_interactions(source_copy, lambda items: items[1]["interaction"][0].update(
        query='SELECT first_name FROM student WHERE city = "Atlantis"'))
    summary = make_tiny_data.build(str(tmp_path / "out"), str(source_copy))
    assert len(summary["empty"]) == 1 and summary["empty"][0].startswith("interaction 1 (school_club) turn 0")
