import json
import subprocess
import sys

import pytest

from conftest import ROOT
from text2sql.analysis import agreement, analyse, first_error, load_report, token_kind
from text2sql.errors import DataError

Q1 = "select singer.name".split()
Q2 = "select singer.name where singer.age > value".split()


def row(inter, turn, pred, gold, match=None, utterance="q"):
    return {"interaction": inter, "turn": turn, "utterance": utterance, "tokens": list(pred),
            "gold_tokens": list(gold), "exact_match": pred == gold if match is None else match}


def test_token_kinds():
    assert [token_kind(t) for t in ["select", "group_by", ",", "value", "count", "<eos>"]] == ["keyword"] * 6
    assert [token_kind(t) for t in ["singer.name", "singer.*", "singer"]] == ["unit"] * 3
    assert [token_kind(t) for t in ["'France'", '"x"', "3", "-2.5"]] == ["value"] * 4


def test_first_error_kinds():
    assert first_error(Q2, Q2) is None
    e = first_error(Q1, Q2)
    assert (e["kind"], e["position"], e["predicted"], e["gold"], e["detail"]) == ("ended early", 2, None, "where", "where")
    e = first_error(Q2, Q1)
    assert (e["kind"], e["position"], e["detail"]) == ("ran on", 2, "where")
    e = first_error("select count ( singer.* )".split(), Q1)
    assert (e["kind"], e["detail"]) == ("keyword for unit", "singer.name -> count")
    e = first_error("select singer.name where singer.age < value".split(), Q2)
    assert (e["kind"], e["position"], e["detail"]) == ("keyword for keyword", 4, "> -> <")


@pytest.mark.parametrize("pred,read,case", [
    ("stadium.name", "select stadium.name".split(), "kept from the previous query"),
    ("stadium.name", None, "same column, other table"),
    ("singer.age", None, "same table"),
    ("stadium.capacity", None, "other table"),
    # a unit the previous query also held counts as kept only where the gold's unit was not in it
    ("singer.age", "select singer.age , singer.name".split(), "same table"),
])
def test_first_error_unit_cases(pred, read, case):
    e = first_error(["select", pred], Q1, read)
    assert (e["kind"], e["detail"]) == ("unit for unit", case)


def test_analyse_counts_built_by_hand():
    rows = [
        # interaction 0: right, then the same prediction twice while the gold changes (ended early, then
        # a kept unit)
        row(0, 0, Q1, Q1),
        row(0, 1, Q1, Q2),
        row(0, 2, Q1, "select singer.age".split()),
        # interaction 1: wrong at turn 1 (a unit of another table), then right after it
        row(1, 0, "select stadium.name".split(), Q1),
        row(1, 1, Q2, Q2),
        # interaction 2: matched with other tokens (the evaluator's set match), then the tokens
        # right and no match (a value the tokens do not show)
        row(2, 0, "select singer.age , singer.name".split(), "select singer.name , singer.age".split(), True),
        row(2, 1, Q1, Q1, False),
    ]
    a = analyse(rows, examples=1)
    assert a["turns"] == 7 and a["interactions"] == 3 and a["wrong"] == 4
    assert a["question_match"] == round(100 * 3 / 7, 2)
    assert a["string_match"] == round(100 * 3 / 7, 2)
    assert a["matched_with_other_tokens"] == 1
    fe = a["first_error"]
    assert {k: v["count"] for k, v in fe.items()} == {"ended early": 1, "unit for unit": 2, "tokens right": 1}
    assert fe["ended early"]["details"] == {"where": 1} and fe["ended early"]["after_wrong_turn"] == 0
    # turn 0.2 predicts singer.name where the gold has singer.age; the query it read held singer.name
    assert fe["unit for unit"]["details"] == {"kept from the previous query": 1, "same column, other table": 1}
    assert fe["unit for unit"]["after_wrong_turn"] == 1
    assert sum(v["count"] for v in fe.values()) == a["wrong"]
    assert a["examples"]["unit for unit"][0]["interaction"] == 0          # first one, file order
    assert len(a["examples"]["unit for unit"]) == 1
    # follow-ups: 0.1 (after right, wrong), 0.2 (after wrong, wrong), 1.1 (after wrong, right),
    # 2.1 (after right, wrong)
    c = a["context"]
    assert c["after_matched"] == {"turns": 2, "question_match": 0.0}
    assert c["after_wrong"] == {"turns": 2, "question_match": 50.0}
    assert c["repeated_previous_prediction"] == 2          # 0.1 and 0.2 both repeat turn 0.0's query
    assert a["first_wrong_turn"] == {"none": 0, "turn 1": 1, "turn 2": 2, "turn 3": 0, "turn 4+": 0}
    assert a["length"]["wrong"] == {"shorter": 1, "same length": 3, "longer": 0}
    assert a["strict"] is None                              # rows of a report without strict matches
    # rows of a newer report carry the strict metric's match too: 2.0 matched officially only
    for r_, ok in zip(rows, (True, False, False, False, True, False, False)):
        r_["strict_match"] = ok
    s = analyse(rows)["strict"]
    assert s == {"question_match": round(100 * 2 / 7, 2), "matched_only_officially": 1}


def test_agreement_of_two_reports():
    gold = [Q1, Q2, Q1, Q1]
    keys = [(0, 0), (0, 1), (1, 0), (2, 0)]
    a = [row(i, t, g, g, ok) for (i, t), g, ok in zip(keys, gold, [True, True, False, False])]
    b = [row(i, t, g, g, ok) for (i, t), g, ok in zip(keys, gold, [True, False, True, False])]
    g = agreement({"a": a, "b": b})
    assert (g["all_right"], g["none_right"], g["any_right"]) == (25.0, 25.0, 75.0)
    # interactions whole: 0 by a, 1 by b, 2 by neither
    assert g["interaction_any_right"] == round(100 * 2 / 3, 2)
    assert g["pairs"] == [{"a": "a", "b": "b", "only_a": 1, "only_b": 1}]
    with pytest.raises(DataError, match="not those of a"):
        agreement({"a": a, "c": b[:3]})


def test_load_report_errors(tmp_path):
    with pytest.raises(DataError, match="no predictions.jsonl"):
        load_report(str(tmp_path))
    f = tmp_path / "predictions.jsonl"
    f.write_text(json.dumps(row(0, 0, Q1, Q1)) + "\n{not json\n")
    with pytest.raises(DataError, match=r"predictions.jsonl: line 2 is not JSON"):
        load_report(str(tmp_path))
    f.write_text(json.dumps({"interaction": 0, "turn": 0, "tokens": []}) + "\n")
    with pytest.raises(DataError, match="line 1 lacks gold_tokens, exact_match"):
        load_report(str(f))
    f.write_text("\n")
    with pytest.raises(DataError, match="holds no predictions"):
        load_report(str(f))


def test_analyse_command(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, pred in ((a, Q1), (b, Q2)):
        d.mkdir()
        (d / "predictions.jsonl").write_text(json.dumps(row(0, 0, pred, Q2)) + "\n")
    p = subprocess.run([sys.executable, "-m", "text2sql", "analyze", str(a), str(b / "predictions.jsonl"), "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["reports"][str(a)]["first_error"]["ended early"]["count"] == 1
    assert out["agreement"]["pairs"][0]["only_b"] == 1
    q = subprocess.run([sys.executable, "-m", "text2sql", "analyse", str(tmp_path / "none")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert q.returncode == 2 and q.stderr.startswith("error: ") and len(q.stderr.strip().splitlines()) == 1


def test_a_gold_previous_report_keeps_units_from_the_gold_previous_query(tmp_path):
    from text2sql.analysis import reads_gold_previous
    # turn 1: gold singer.age, predicted stadium.name; turn 2: gold singer.name, predicted singer.age
    rows = [row(0, 0, "select stadium.name".split(), "select singer.age".split()),
            row(0, 1, "select singer.age".split(), Q1)]
    own = analyse(rows)["first_error"]["unit for unit"]["details"]
    gold = analyse(rows, gold_previous=True)["first_error"]["unit for unit"]["details"]
    # read against its own prediction (stadium.name), singer.age is just the same table as the gold;
    # read against the gold previous query (singer.age), it was kept from it
    assert own == {"other table": 1, "same table": 1}
    assert gold == {"other table": 1, "kept from the previous query": 1}
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert not reads_gold_previous(str(tmp_path))
    (tmp_path / "eval_dev.json").write_text(json.dumps({"decoding": {"use_gold_previous": True}}))
    assert reads_gold_previous(str(tmp_path)) and reads_gold_previous(str(tmp_path / "predictions.jsonl"))
