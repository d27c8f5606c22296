import json
import sqlite3

import pytest

from text2sql.errors import DataError
from text2sql.schema import Schema, load_tables, natural_name
from conftest import shared_path


def test_units_and_lookups(concert_schema):
    s = concert_schema
    assert s.units[:3] == ["stadium", "stadium.*", "stadium.stadium_id"]
    assert s.unit_index("SINGER.Name") == s.units.index("singer.name")
    assert s.unit_natural[s.units.index("singer_in_concert.singer_id")] == "singer in concert . singer id"
    assert s.table_index("Singer") == 1 and s.column_index(1, "AGE") == 6
    # every unit belongs to the table it names
    for u, t in zip(s.units, s.unit_table):
        assert u.split(".")[0] == s.table_name(t)


def test_shortest_path_goes_through_link_table(concert_schema):
    s = concert_schema
    path = s.shortest_path(s.table_index("singer"), s.table_index("stadium"))
    tables = [s.table_name(e[0]) for e in path] + [s.table_name(path[-1][2])]
    assert tables == ["singer", "singer_in_concert", "concert", "stadium"]
    assert s.shortest_path(0, 0) == []


def test_from_sqlite(tmp_path):
    db = tmp_path / "shop.sqlite"
    con = sqlite3.connect(db)
    con.executescript("""
        CREATE TABLE Customer (CustomerId INTEGER PRIMARY KEY, full_name TEXT, joined DATE);
        CREATE TABLE "Order" (order_id INTEGER PRIMARY KEY, customer INTEGER REFERENCES Customer,
                              total REAL, FOREIGN KEY (customer) REFERENCES Customer(CustomerId));
    """)
    con.close()
    s = Schema.from_sqlite(str(db))
    assert s.db_id == "shop"
    assert [t.name for t in s.tables] == ["Customer", "Order"]
    assert [(c.table, c.name, c.type) for c in s.columns[1:]] == [
        (0, "CustomerId", "number"), (0, "full_name", "text"), (0, "joined", "time"),
        (1, "order_id", "number"), (1, "customer", "number"), (1, "total", "number")]
    assert s.columns[1].natural == "customer id"
    assert s.primary_keys == [1, 4]
    assert (5, 1) in s.foreign_keys
    again = Schema.from_tables_json(json.loads(json.dumps(s.to_tables_json())))
    assert again.units == s.units and again.foreign_keys == s.foreign_keys


def test_from_sqlite_errors(tmp_path):
    with pytest.raises(DataError, match="no such SQLite file"):
        Schema.from_sqlite(str(tmp_path / "missing.sqlite"))
    bad = tmp_path / "bad.sqlite"
    bad.write_text("this is not a database" * 100)
    with pytest.raises(DataError, match="bad.sqlite"):
        Schema.from_sqlite(str(bad))


def test_natural_name():
    assert natural_name("HomeTown") == "home town"
    assert natural_name("home_town") == "home town"
    assert natural_name("CustomerID") == "customer id"


def test_load_tables_errors(tmp_path):
    p = tmp_path / "tables.json"
    p.write_text('[{"db_id": "x",')
    with pytest.raises(DataError) as e:
        load_tables(str(p))
    assert "tables.json" in str(e.value) and "malformed JSON" in str(e.value) and "\n" not in str(e.value)
    p.write_text('[{"db_id": "x"}]')
    with pytest.raises(DataError, match="schema 0: schema entry is missing key"):
        load_tables(str(p))


def test_shared_tables():
    schemas = load_tables(shared_path("sparc", "tables.json"))
    assert len(schemas) == 166
    s = schemas["concert_singer"]
    assert "singer.name" in s.units and s.fk_edges()


def test_sqlite_path_with_odd_characters(tmp_path):
    d = tmp_path / "we#ird?dir"
    d.mkdir()
    db = d / "zoo.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE animal (id INTEGER PRIMARY KEY, name TEXT)")
    con.close()
    s = Schema.from_sqlite(str(db))
    assert [t.name for t in s.tables] == ["animal"]


def test_tables_json_without_star_column_keeps_keys_on_their_columns():
    s = Schema.from_tables_json({
        "db_id": "x", "table_names_original": ["a", "b"],
        "column_names_original": [[0, "id"], [1, "a_id"]], "primary_keys": [0], "foreign_keys": [[1, 0]]})
    assert s.columns[s.primary_keys[0]].name == "id"
    assert [(s.columns[a].name, s.columns[b].name) for a, b in s.foreign_keys] == [("a_id", "id")]
