import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")


def shared_path(*parts):
    """A file in ../shared/data, or skip the test where the third-party data is absent."""
    p = os.path.join(SHARED, *parts)
    if not os.path.exists(p):
        pytest.skip(f"shared data not present: {p}")
    return p


@pytest.fixture
def concert_schema():
    from text2sql.schema import Schema
    entry = {
        "db_id": "concerts",
        "table_names_original": ["stadium", "singer", "concert", "singer_in_concert"],
        "table_names": ["stadium", "singer", "concert", "singer in concert"],
        "column_names_original": [[-1, "*"], [0, "Stadium_ID"], [0, "Name"], [0, "Capacity"],
                                  [1, "Singer_ID"], [1, "Name"], [1, "Age"], [1, "Country"],
                                  [2, "concert_ID"], [2, "Stadium_ID"], [2, "Year"],
                                  [3, "concert_ID"], [3, "Singer_ID"]],
        "column_names": [[-1, "*"], [0, "stadium id"], [0, "name"], [0, "capacity"],
                         [1, "singer id"], [1, "name"], [1, "age"], [1, "country"],
                         [2, "concert id"], [2, "stadium id"], [2, "year"],
                         [3, "concert id"], [3, "singer id"]],
        "column_types": ["text", "number", "text", "number", "number", "text", "number", "text",
                         "number", "number", "text", "number", "number"],
        "primary_keys": [1, 4, 8, 11],
        "foreign_keys": [[9, 1], [11, 8], [12, 4]],
    }
    return Schema.from_tables_json(entry)


CONCERT_TURNS = [
    [("Show all singers.", "SELECT name FROM singer"),
     ("Which of them are older than 30?", "SELECT name FROM singer WHERE age > 30"),
     ("Order them by age.", "SELECT name FROM singer WHERE age > 30 ORDER BY age")],
    [("How many concerts are there?", "SELECT count(*) FROM concert"),
     ("In 2014?", "SELECT count(*) FROM concert WHERE year = 2014")],
    [("List stadium names.", "SELECT name FROM stadium"),
     ("With their capacity.", "SELECT name, capacity FROM stadium"),
     ("Only the largest one.", "SELECT name, capacity FROM stadium ORDER BY capacity DESC LIMIT 1")],
    [("Which singers sang in a concert?",
      "SELECT T1.name FROM singer AS T1 JOIN singer_in_concert AS T2 ON T1.singer_id = T2.singer_id"),
     ("Count them per country.",
      "SELECT T1.country, count(*) FROM singer AS T1 JOIN singer_in_concert AS T2 ON "
      "T1.singer_id = T2.singer_id GROUP BY T1.country")],
]


@pytest.fixture
def concert_data(tmp_path, concert_schema):
    """A data directory in the official layout with a handful of real interactions."""
    import json
    d = tmp_path / "data"
    d.mkdir()
    (d / "tables.json").write_text(json.dumps([concert_schema.to_tables_json()]))
    items = [{"database_id": "concerts", "interaction": [{"utterance": u, "query": q} for u, q in turns]}
             for turns in CONCERT_TURNS]
    (d / "train.json").write_text(json.dumps(items))
    (d / "dev.json").write_text(json.dumps(items[:2]))
    return str(d)
