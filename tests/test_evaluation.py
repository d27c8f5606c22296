import json
import sqlite3
import time

import pytest

from conftest import shared_path
from text2sql.evaluation import (components, evaluate_files, execution_match, exact_match, hardness,
                                 matches, partial_scores, read_gold, read_predictions, write_predictions,
                                 EMPTY_PREDICTION)
from text2sql.sql_tokens import parse_sql

JOIN = ("SELECT T1.name FROM singer AS T1 JOIN singer_in_concert AS T2 ON T1.singer_id = T2.singer_id "
        "WHERE T1.age > 30 AND T1.country = 'France'")


# ---------------------------------------------------------------- equivalences that must match
@pytest.mark.parametrize("gold,pred", [
    ("SELECT name, age FROM singer", "SELECT age, name FROM singer"),
    ("SELECT name FROM singer WHERE age > 30 AND country = 'France'",
     "SELECT name FROM singer WHERE country = 'Spain' AND age > 20"),
    (JOIN, "SELECT T2.name FROM singer_in_concert AS T1 JOIN singer AS T2 ON T2.singer_id = T1.singer_id "
           "WHERE T2.country = 'x' AND T2.age > 1"),
    ("SELECT name FROM singer WHERE age > 30 INTERSECT SELECT name FROM singer WHERE country = 'France'",
     "SELECT name FROM singer WHERE age > 1 INTERSECT SELECT name FROM singer AS T WHERE T.country = 'x'"),
    ("SELECT name FROM singer ORDER BY age LIMIT 3", "SELECT name FROM singer ORDER BY age ASC LIMIT 1"),
    ("SELECT name FROM singer WHERE singer_id IN (SELECT singer_id FROM singer_in_concert)",
     "SELECT name FROM singer WHERE singer_id IN (SELECT T.singer_id FROM singer_in_concert AS T)"),
])
def test_equivalent_queries_match(concert_schema, gold, pred):
    assert exact_match(gold, pred, concert_schema)
    ps = partial_scores(gold, pred, concert_schema)
    assert all(v["f1"] == 1.0 for v in ps.values()), ps


# ---------------------------------------------------------------- changes that must not match
@pytest.mark.parametrize("gold,pred,clause", [
    ("SELECT name FROM singer", "SELECT country FROM singer", "select"),
    ("SELECT max(age) FROM singer", "SELECT min(age) FROM singer", "select"),
    ("SELECT count(*) FROM singer", "SELECT * FROM singer", "select"),
    ("SELECT name FROM singer WHERE age > 30", "SELECT name FROM singer WHERE age < 30", "where"),
    ("SELECT name FROM singer WHERE name LIKE '%a%'", "SELECT name FROM singer WHERE name NOT LIKE '%a%'",
     "where"),
    ("SELECT country, count(*) FROM singer GROUP BY country",
     "SELECT country, count(*) FROM singer GROUP BY name", "group(no Having)"),
    ("SELECT country FROM singer GROUP BY country HAVING count(*) > 2",
     "SELECT country FROM singer GROUP BY country HAVING count(*) < 2", "group"),
    ("SELECT name FROM singer ORDER BY age DESC", "SELECT name FROM singer ORDER BY age", "order"),
    ("SELECT name FROM singer ORDER BY age LIMIT 1", "SELECT name FROM singer ORDER BY age", "order"),
    ("SELECT name FROM singer WHERE age > 1 OR age < 0", "SELECT name FROM singer WHERE age > 1 AND age < 0",
     "and/or"),
    ("SELECT name FROM singer EXCEPT SELECT name FROM stadium",
     "SELECT name FROM stadium EXCEPT SELECT name FROM singer", "IUEN"),
])
def test_changed_clause_does_not_match(concert_schema, gold, pred, clause):
    assert exact_match(gold, gold, concert_schema)
    assert not exact_match(gold, pred, concert_schema)
    assert partial_scores(gold, pred, concert_schema)[clause]["f1"] < 1.0


def test_dropped_join_table_does_not_match(concert_schema):
    pred = "SELECT name FROM singer WHERE age > 30 AND country = 'France'"
    assert not exact_match(JOIN, pred, concert_schema)
    # every clause the report scores agrees: only FROM differs
    assert all(v["f1"] == 1.0 for v in partial_scores(JOIN, pred, concert_schema).values())


# ---------------------------------------------------------------- what only the strict metric compares
@pytest.mark.parametrize("gold,pred,distinct", [
    # the same tables joined on another column: the official script compares FROM's tables only
    (JOIN, JOIN.replace("T1.singer_id = T2.singer_id", "T1.singer_id = T2.concert_id"), False),
    # DISTINCT, of the select list or inside an aggregate (the official DISABLE_DISTINCT)
    ("SELECT DISTINCT country FROM singer", "SELECT country FROM singer", True),
    ("SELECT count(DISTINCT country) FROM singer", "SELECT count(country) FROM singer", True),
    ("SELECT name FROM singer WHERE age > (SELECT avg(DISTINCT age) FROM singer)",
     "SELECT name FROM singer WHERE age > (SELECT avg(age) FROM singer)", False),
])
def test_joins_and_distinct_only_strict(concert_schema, gold, pred, distinct):
    assert exact_match(gold, pred, concert_schema)
    assert all(v["f1"] == 1.0 for v in partial_scores(gold, pred, concert_schema).values())
    assert exact_match(gold, gold, concert_schema, strict=True)
    assert not exact_match(gold, pred, concert_schema, strict=True)
    assert matches(gold, pred, concert_schema) == (True, False)
    # an outer-block DISTINCT is one of the strict metric's keywords
    assert (partial_scores(gold, pred, concert_schema, strict=True)["keywords"]["f1"] < 1.0) == distinct


@pytest.mark.parametrize("gold,pred", [
    ("SELECT name FROM singer WHERE age > 30 INTERSECT SELECT name FROM singer WHERE country = 'France'",
     "SELECT name FROM singer WHERE country = 'France' INTERSECT SELECT name FROM singer WHERE age > 30"),
    ("SELECT name FROM singer WHERE age > 30 UNION SELECT name FROM stadium",
     "SELECT name FROM stadium UNION SELECT name FROM singer WHERE age > 30"),
])
def test_swapped_set_operation_sides(concert_schema, gold, pred):
    """The official script compares the left side with the left side; the rows are the same, so
    the strict metric, which is about meaning, takes INTERSECT's and UNION's sides as unordered."""
    assert not exact_match(gold, pred, concert_schema)
    assert exact_match(gold, pred, concert_schema, strict=True)
    assert matches(gold, pred, concert_schema) == (False, True)
    assert partial_scores(gold, pred, concert_schema)["IUEN"]["f1"] < 1.0
    assert all(v["f1"] == 1.0 for v in partial_scores(gold, pred, concert_schema, strict=True).values())


def test_added_limit_does_not_match(concert_schema):
    assert not exact_match("SELECT name FROM singer", "SELECT name FROM singer LIMIT 1", concert_schema)


def test_components_structure(concert_schema):
    q = parse_sql(JOIN + " ORDER BY T1.age DESC", concert_schema)
    c = components(q, concert_schema, fk_map=False, strict=True)
    assert c["select"]["items"] == ((None, False, "singer.name"),)
    assert c["from"]["tables"] == ("singer", "singer_in_concert")
    assert c["from"]["joins"] == (("singer.singer_id", "singer_in_concert.singer_id"),)
    # the official metric compares only the tables of FROM
    official = components(q, concert_schema, fk_map=False)
    assert official["from"]["joins"] == () and official["from"]["tables"] == c["from"]["tables"]
    assert c["where"]["conj"] == ("and",)
    assert {cond[1] for cond in c["where"]["conds"]} == {">", "="}
    assert c["order_by"] == ((None, False, "singer.age", "desc"),)
    assert c["limit"] is False and c["iuen"] is None


def test_partial_precision_recall(concert_schema):
    ps = partial_scores("SELECT name, age FROM singer", "SELECT name, country, age FROM singer",
                        concert_schema)["select"]
    assert ps["precision"] == pytest.approx(2 / 3) and ps["recall"] == 1.0
    assert ps["f1"] == pytest.approx(0.8)


@pytest.mark.parametrize("sql,level", [
    ("SELECT count(*) FROM singer", "easy"),
    ("SELECT name FROM singer WHERE age > 30", "easy"),
    ("SELECT name, age FROM singer WHERE age > 30", "medium"),
    (JOIN, "medium"),
    ("SELECT name FROM singer WHERE age > (SELECT avg(age) FROM singer)", "hard"),
    ("SELECT T1.name, count(*) FROM singer AS T1 JOIN singer_in_concert AS T2 ON T1.singer_id = "
     "T2.singer_id GROUP BY T1.name ORDER BY count(*) DESC LIMIT 1", "extra"),
])
def test_hardness(concert_schema, sql, level):
    assert hardness(sql, concert_schema) == level


# ---------------------------------------------------------------- files
def _write(tmp_path, concert_schema, gold, preds):
    tables = tmp_path / "tables.json"
    tables.write_text(json.dumps([concert_schema.to_tables_json()]))
    g = tmp_path / "gold.txt"
    g.write_text("\n\n".join("\n".join(f"{s}\tconcerts" for s in inter) for inter in gold) + "\n")
    p = tmp_path / "pred.txt"
    write_predictions(p, preds)
    return str(g), str(p), str(tables)


def test_evaluate_files_by_hand(tmp_path, concert_schema):
    gold = [["SELECT name FROM singer", "SELECT name FROM singer WHERE age > 30",
             "SELECT name FROM singer WHERE age > 30 ORDER BY age"],
            ["SELECT count(*) FROM concert", "SELECT count(*) FROM concert WHERE year = 2014"]]
    preds = [["SELECT name FROM singer", "SELECT name FROM singer WHERE age < 30",     # 2nd wrong
              "SELECT name FROM singer WHERE age > 3 ORDER BY age ASC"],
             ["SELECT count(*) FROM concert", "SELECT count(*) FROM concert WHERE year = 1999"]]
    g, p, t = _write(tmp_path, concert_schema, gold, preds)
    assert read_predictions(p) == preds
    assert read_gold(g)[1] == [(s, "concerts") for s in gold[1]]
    r = evaluate_files(g, p, t)
    assert r["question_match"] == pytest.approx(80.0)
    assert r["interaction_match"] == pytest.approx(50.0)
    assert r["exec_acc"] is None
    assert r["by_turn"]["1"] == {"count": 2, "exact": 100.0, "strict": 100.0}
    assert r["by_turn"]["2"] == {"count": 2, "exact": 50.0, "strict": 50.0}
    assert r["metric"] == "official" and r["strict"] == {"question_match": 80.0, "interaction_match": 50.0}
    assert r["by_hardness"]["all"]["count"] == 5
    assert sum(r["by_hardness"][h]["count"] for h in ("easy", "medium", "hard", "extra")) == 5
    assert r["unparsable"] == []
    turns = []                 # each turn's own verdict, in file order, as matches() gives it
    evaluate_files(g, p, t, turns=turns)
    assert turns == [matches(gs, ps, concert_schema) for gi, pi in zip(gold, preds) for gs, ps in zip(gi, pi)]
    assert [o for o, _ in turns] == [True, False, True, True, True]      # values are not compared

    # an empty prediction keeps its line: the turns after it stay on their own gold queries
    preds[0][1] = ""
    g, p, t = _write(tmp_path, concert_schema, gold, preds)
    assert [len(b) for b in read_predictions(p)] == [3, 2]
    turns = []
    r = evaluate_files(g, p, t, turns=turns)
    assert [o for o, _ in turns] == [True, False, True, True, True]      # values are not compared
    assert [u["turn"] for u in r["unparsable"]] == [1] and r["unparsable"][0]["sql"] == EMPTY_PREDICTION
    preds[0][1] = "SELECT name FROM singer WHERE age < 30"
    g, p, t = _write(tmp_path, concert_schema, gold, preds)

    # one unparsable prediction and one missing turn: 3 of 5 right, no interaction fully right
    preds[0][0] = "SELECT nonexistent FROM singer"
    preds[1] = preds[1][:1]
    g, p, t = _write(tmp_path, concert_schema, gold, preds)
    r = evaluate_files(g, p, t)
    assert r["question_match"] == pytest.approx(40.0)
    assert r["interaction_match"] == 0.0
    assert len(r["unparsable"]) == 1
    u = r["unparsable"][0]
    assert (u["interaction"], u["turn"], u["sql"]) == (0, 0, "SELECT nonexistent FROM singer")
    assert "nonexistent" in u["reason"]


def test_evaluate_files_strict_figures(tmp_path, concert_schema):
    """A DISTINCT dropped in turn 1 and a join on the wrong column in turn 2: both match under
    the official metric, neither under the strict one, and so neither interaction does."""
    gold = [["SELECT DISTINCT country FROM singer", "SELECT name FROM singer WHERE age > 30"], [JOIN]]
    preds = [["SELECT country FROM singer", "SELECT name FROM singer WHERE age > 20"],
             [JOIN.replace("T1.singer_id = T2.singer_id", "T1.singer_id = T2.concert_id")]]
    r = evaluate_files(*_write(tmp_path, concert_schema, gold, preds))
    assert (r["question_match"], r["interaction_match"]) == (100.0, 100.0)
    assert r["strict"] == {"question_match": pytest.approx(100 / 3), "interaction_match": 0.0}
    assert r["by_turn"]["1"] == {"count": 2, "exact": 100.0, "strict": 0.0}
    assert r["by_turn"]["2"] == {"count": 1, "exact": 100.0, "strict": 100.0}


def test_unparsable_gold_is_listed(tmp_path, concert_schema):
    g, p, t = _write(tmp_path, concert_schema, [["SELECT bogus FROM singer"]], [["SELECT name FROM singer"]])
    r = evaluate_files(g, p, t)
    assert r["question_match"] == 0.0 and r["unparsable"][0]["reason"].startswith("gold")


# ---------------------------------------------------------------- execution
@pytest.fixture
def db(tmp_path):
    path = tmp_path / "concerts" / "concerts.sqlite"
    path.parent.mkdir()
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE singer (singer_id int, name text, age int, country text)")
    con.executemany("INSERT INTO singer VALUES (?,?,?,?)",
                    [(1, "Ann", 40, "France"), (2, "Bob", 25, "Spain"), (3, "Cy", 33, "France")])
    con.commit()
    con.close()
    return path


def test_execution_match(db, tmp_path):
    assert execution_match("SELECT name FROM singer", "SELECT name FROM singer ORDER BY name DESC", db)
    assert not execution_match("SELECT name FROM singer", "SELECT name FROM singer WHERE age > 30", db)
    assert not execution_match("SELECT name FROM singer ORDER BY age",
                               "SELECT name FROM singer ORDER BY age DESC", db)
    assert execution_match("SELECT name FROM singer ORDER BY age", "SELECT name FROM singer ORDER BY age", db)
    assert execution_match("SELECT name FROM singer", "SELECT nam FROM singer", db) is False
    missing = tmp_path / "none.sqlite"
    assert execution_match("SELECT name FROM singer", "SELECT name FROM singer", missing) is None
    # read-only: a write fails, so it is no match
    assert execution_match("SELECT 1", "DELETE FROM singer", db) is False


def test_execution_time_limit(db):
    runaway = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
               "SELECT count(*) FROM c")
    t = time.monotonic()
    assert execution_match("SELECT count(*) FROM singer", runaway, db, timeout=0.5) is False
    assert time.monotonic() - t < 5.0


def test_evaluate_files_with_db(tmp_path, concert_schema, db):
    gold = [["SELECT name FROM singer", "SELECT name FROM singer WHERE age > 30"]]
    preds = [["SELECT name FROM singer ORDER BY age", "SELECT name FROM singer WHERE age > 26"]]
    g, p, t = _write(tmp_path, concert_schema, gold, preds)
    r = evaluate_files(g, p, t, db_dir=str(tmp_path))
    assert r["question_match"] == 50.0      # ORDER BY added: exact set match fails
    assert r["exec_acc"] == 100.0           # but both queries give the gold rows


# ---------------------------------------------------------------- the real SParC dev gold
def test_sparc_dev_gold_against_itself(tmp_path):
    gold_path = shared_path("sparc", "dev_gold.txt")
    tables = shared_path("sparc", "tables.json")
    gold = read_gold(gold_path)
    # predictions: the gold SQL alone, in the prediction format
    pred = tmp_path / "pred.txt"
    write_predictions(pred, [[s for s, _ in inter] for inter in gold])
    r = evaluate_files(gold_path, str(pred), tables)
    counts = {h: r["by_hardness"][h]["count"] for h in ("easy", "medium", "hard", "extra", "all")}
    print("SParC dev gold vs itself:", counts, "by turn:", {k: v["count"] for k, v in r["by_turn"].items()})
    assert r["unparsable"] == []
    assert r["question_match"] == 100.0 and r["interaction_match"] == 100.0
    assert counts["all"] == sum(len(i) for i in gold) == 1203
    assert all(v == 100.0 for v in r["partial"].values())


def test_execution_accuracy_on_the_shipped_tiny_databases(tmp_path):
    """Gold against itself on the project's own databases: every query runs, every one matches;
    a prediction with the ORDER BY direction flipped matches neither way."""
    import json
    import os
    from conftest import ROOT
    from text2sql.evaluation import evaluate_files
    tiny = os.path.join(ROOT, "data", "spider_cosql", "tiny")
    dev = json.load(open(os.path.join(tiny, "dev.json")))
    gold = "\n\n".join("\n".join(f"{t['query']}\t{i['database_id']}" for t in i["interaction"]) for i in dev)
    (tmp_path / "gold.txt").write_text(gold + "\n")
    (tmp_path / "same.txt").write_text("\n\n".join("\n".join(t["query"] for t in i["interaction"])
                                                   for i in dev) + "\n")
    r = evaluate_files(str(tmp_path / "gold.txt"), str(tmp_path / "same.txt"), os.path.join(tiny, "tables.json"),
                       os.path.join(tiny, "database"))
    assert r["question_match"] == r["interaction_match"] == r["exec_acc"] == 100.0
    flipped = [[t["query"].replace(" DESC", " ASC") if " DESC" in t["query"] else t["query"]
                for t in i["interaction"]] for i in dev]
    n_flipped = sum(" DESC" in t["query"] for i in dev for t in i["interaction"])
    assert n_flipped > 0
    (tmp_path / "flip.txt").write_text("\n\n".join("\n".join(i) for i in flipped) + "\n")
    r = evaluate_files(str(tmp_path / "gold.txt"), str(tmp_path / "flip.txt"), os.path.join(tiny, "tables.json"),
                       os.path.join(tiny, "database"))
    n = r["by_hardness"]["all"]["count"]
    assert abs(r["question_match"] - 100.0 * (n - n_flipped) / n) < 1e-9
    assert r["exec_acc"] < 100.0


def test_rows_take_the_evaluators_verdicts_and_are_matched_again_when_they_do_not_line_up(concert_schema):
    from text2sql.inference import _set_row_matches
    rows = [{"db_id": "concerts", "gold": "SELECT name FROM singer", "predicted": "SELECT DISTINCT name FROM singer"},
            {"db_id": "concerts", "gold": "SELECT age FROM singer", "predicted": "SELECT name FROM singer"}]
    _set_row_matches(rows, [(True, False), (False, False)], {"concerts": concert_schema})
    assert [(r["exact_match"], r["strict_match"]) for r in rows] == [(True, False), (False, False)]
    # one verdict for two rows (an edited file): each row is matched from its own queries
    _set_row_matches(rows, [(False, False)], {"concerts": concert_schema})
    assert [(r["exact_match"], r["strict_match"]) for r in rows] == [(True, False), (False, False)]
    rows[1]["predicted"] = "SELECT FROM WHERE"                 # unparsable: wrong, not an error
    _set_row_matches(rows, [], {"concerts": concert_schema})
    assert (rows[1]["exact_match"], rows[1]["strict_match"]) == (False, False)
