import json
import subprocess
import sys

import pytest

from text2sql.data import db_split, read_split, tokenize_utterance
from text2sql.datacheck import check_data
from text2sql.errors import DataError
from conftest import ROOT, shared_path


def write(path, obj):
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def test_tokenize_utterance_needs_no_nltk_data():
    assert tokenize_utterance('Which singers are from "New York", and older than 30?') == [
        "Which", "singers", "are", "from", '"', "New", "York", '"', ",", "and", "older", "than",
        "30", "?"]


def test_read_sparc_and_spider(tmp_path, concert_schema):
    schemas = {"concerts": concert_schema}
    sparc = write(tmp_path / "s.json", [{"database_id": "concerts", "interaction": [
        {"utterance": "Show singers.", "query": "SELECT name FROM singer"},
        {"utterance": "Older than 30?", "query": "SELECT name FROM singer WHERE age > 30"}]}])
    sp = read_split(sparc, schemas)
    assert sp.format == "sparc" and not sp.errors
    assert [t.words for t in sp.interactions[0].turns][1] == ["Older", "than", "30", "?"]
    spider = write(tmp_path / "q.json", [{"db_id": "concerts", "question": "How many?",
                                          "query": "SELECT count(*) FROM singer"}])
    sd = read_split(spider, schemas)
    assert sd.format == "spider" and len(sd.interactions[0]) == 1


def test_bad_items_are_located_and_skipped(tmp_path, concert_schema):
    schemas = {"concerts": concert_schema}
    path = write(tmp_path / "bad.json", [
        {"database_id": "concerts", "interaction": [{"utterance": "a", "query": "SELECT name FROM singer"}]},
        {"database_id": "nowhere", "interaction": [{"utterance": "a", "query": "SELECT 1"}]},
        {"database_id": "concerts", "interaction": []},
        {"interaction": [{"utterance": "a", "query": "x"}]},
        {"database_id": "concerts", "interaction": [{"utterance": "a", "query": "SELECT name FROM singer"},
                                                     {"utterance": "b"}]},
    ])
    sp = read_split(path, schemas)
    assert len(sp.interactions) == 1
    lines = [e.line() for e in sp.errors]
    assert lines == [
        f"{path}: interaction 1: unknown database_id 'nowhere' (not in tables.json)",
        f"{path}: interaction 2: empty interaction",
        f"{path}: interaction 3: missing key 'database_id'",
        f"{path}: interaction 4 turn 1: missing key 'query'",
    ]


def test_malformed_json_is_one_line(tmp_path):
    path = write(tmp_path / "broken.json", '[{"database_id": "x", ')
    with pytest.raises(DataError) as e:
        read_split(path)
    assert str(e.value).startswith(f"{path}: malformed JSON at line 1")


def test_data_check_counts_bad_sql_and_carries_on(tmp_path, concert_schema):
    write(tmp_path / "tables.json", [concert_schema.to_tables_json()])
    write(tmp_path / "dev.json", [
        {"database_id": "concerts", "interaction": [
            {"utterance": "a", "query": "SELECT name FROM singer"},
            {"utterance": "b", "query": "SELECT nme FROM singer"},
            {"utterance": "c", "query": "SELECT name FROM singer WHERE (age > 3"}]},
        {"database_id": "concerts", "interaction": [
            {"utterance": "a", "query": "SELECT count(*) FROM concert"}]},
    ])
    r = check_data(str(tmp_path))
    assert (r["interactions"], r["turns"], r["queries"], r["tokenized"], r["restored"]) == (2, 4, 4, 2, 2)
    assert r["errors"] == [
        f"{tmp_path}/dev.json: interaction 0 turn 1: column 'nme' is not in the FROM tables of database concerts",
        f"{tmp_path}/dev.json: interaction 0 turn 2: unbalanced parentheses"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "text2sql", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_cli_bad_input_never_a_traceback(tmp_path):
    write(tmp_path / "tables.json", "[]")
    write(tmp_path / "dev.json", "{not json")
    p = run_cli("data", "check", "--data", str(tmp_path), "--json")
    assert p.returncode == 1, p.stderr          # bad items: a script can stop on it
    out = json.loads(p.stdout)
    assert out["errors"] == [f"{tmp_path}/dev.json: malformed JSON at line 1 column 2: "
                             "Expecting property name enclosed in double quotes"]
    p = run_cli("data", "check", "--data", str(tmp_path / "nothing"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().startswith("error: ") and len(p.stderr.strip().splitlines()) == 1


def test_cli_help_lists_subcommands():
    p = run_cli("--help")
    assert p.returncode == 0
    assert "data " in p.stdout and "train " in p.stdout   # the subcommand list, not the description


def test_db_split_is_disjoint():
    from text2sql.data import Interaction
    its = [Interaction(db_id=d, turns=[]) for d in ["b", "a", "c", "a", "d"]]
    train, valid = db_split(its, 2)
    assert {i.db_id for i in train} == {"a", "b"} and {i.db_id for i in valid} == {"c", "d"}


def test_shared_sparc_dev_check():
    path = shared_path("sparc", "dev.json")
    p = run_cli("data", "check", "--data", path, "--tables", shared_path("sparc", "tables.json"), "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert (r["interactions"], r["turns"], r["databases"]) == (422, 1203, 20)
    assert r["queries"] == r["tokenized"] == 1203
    assert r["restored"] >= 0.95 * 1203
    # about a tenth of the targets keep a FROM; fewer when only their tables must restore
    assert 0 < r["kept_from_tables"] < r["kept_from"] < 0.15 * 1203
    assert r["errors"] == []
    # the stats table reports the same figures
    p = run_cli("data", "stats", "--data", path, "--tables", shared_path("sparc", "tables.json"))
    assert p.returncode == 0 and "1203 (100.0%)" in p.stdout


def test_shared_spider_dev_reads_as_one_turn():
    path = shared_path("spider", "dev.json")
    r = check_data(path, tables=shared_path("sparc", "tables.json"))
    assert (r["interactions"], r["turns"], r["tokenized"]) == (1034, 1034, 1034)
