"""Database schemas: Spider's ``tables.json`` entries and live SQLite files, as one ``Schema``.

A schema is what the parser may point at. Its *DB units* are the targets of the decoder's
pointer (and the things the encoder embeds): for every table ``t`` the units ``t`` (the table,
used in FROM), ``t.*`` (the star of that table: ``count(*)`` over ``t``) and ``t.c`` for each
column. Unit names are the original identifiers lower-cased, so that they match SQL written in
any case; the natural-language names (``column_names`` in tables.json) are what the encoder reads.
"""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from collections import deque
from dataclasses import dataclass, field

from .errors import DataError


# what --unit_types tells the model about a DB unit besides its name (Spider's coarse column types)
UNIT_KINDS = ("table", "star", "text", "number", "time", "boolean", "others")


@dataclass
class Column:
    table: int          # index into Schema.tables; -1 for the global "*"
    name: str           # original identifier, as written in the database
    natural: str        # natural-language name ("home town")
    type: str = "text"  # Spider's coarse type: text, number, time, boolean, others


@dataclass
class Table:
    name: str
    natural: str


@dataclass
class Schema:
    db_id: str
    tables: list[Table]
    columns: list[Column]                      # columns[0] is the global "*", as in Spider
    primary_keys: list[int] = field(default_factory=list)
    foreign_keys: list[tuple[int, int]] = field(default_factory=list)  # (column, referenced column)

    def __post_init__(self):
        self._table_index = {t.name.lower(): i for i, t in enumerate(self.tables)}
        self._column_index: dict[tuple[int, str], int] = {}
        for ci, c in enumerate(self.columns):
            if c.table >= 0:
                self._column_index.setdefault((c.table, c.name.lower()), ci)
        self.units: list[str] = []
        self.unit_natural: list[str] = []
        self.unit_table: list[int] = []          # table each unit belongs to
        self.unit_column: list[int] = []         # column each unit is (-1: a table or its star)
        self._unit_index: dict[str, int] = {}
        for ti, t in enumerate(self.tables):
            tname = t.name.lower()
            self._add_unit(tname, t.natural, ti, -1)
            self._add_unit(f"{tname}.*", f"{t.natural} *", ti, -1)
            for ci, c in enumerate(self.columns):
                if c.table == ti:
                    self._add_unit(f"{tname}.{c.name.lower()}", f"{t.natural} . {c.natural}", ti, ci)

    def _add_unit(self, unit: str, natural: str, table: int, column: int):
        if unit in self._unit_index:   # a column declared twice: keep the first
            return
        self._unit_index[unit] = len(self.units)
        self.units.append(unit)
        self.unit_natural.append(natural)
        self.unit_table.append(table)
        self.unit_column.append(column)

    def unit_kinds(self) -> list[int]:
        """Per unit, one id in ``range(4 * len(UNIT_KINDS))``: its kind (a table, a table's star, or
        a column's type), times 4, plus 2 if it is a primary key and 1 if it is in a foreign key.
        (A method, not a field: ``from_sqlite`` adds the foreign keys after construction.)"""
        fk = {c for pair in self.foreign_keys for c in pair}
        pk = set(self.primary_keys)
        out = []
        for u, ci in zip(self.units, self.unit_column):
            if ci < 0:
                kind = 1 if u.endswith(".*") else 0
            else:
                t = self.columns[ci].type
                kind = UNIT_KINDS.index(t) if t in UNIT_KINDS[2:] else UNIT_KINDS.index("others")
            out.append(4 * kind + 2 * (ci in pk) + (ci in fk))
        return out

    # ---- look-ups -------------------------------------------------------------------------
    def table_index(self, name: str) -> int | None:
        return self._table_index.get(name.lower())

    def column_index(self, table: int, name: str) -> int | None:
        return self._column_index.get((table, name.lower()))

    def unit_index(self, unit: str) -> int | None:
        return self._unit_index.get(unit.lower())

    def column_unit(self, column: int) -> str:
        c = self.columns[column]
        if c.table < 0:
            return "*"
        return f"{self.tables[c.table].name.lower()}.{c.name.lower()}"

    def table_name(self, table: int) -> str:
        return self.tables[table].name.lower()

    # ---- the foreign-key graph ------------------------------------------------------------
    def fk_edges(self) -> list[tuple[int, int, int, int]]:
        """Each foreign key as (table, column, referenced table, referenced column)."""
        out = []
        for a, b in self.foreign_keys:
            ta, tb = self.columns[a].table, self.columns[b].table
            if ta >= 0 and tb >= 0:
                out.append((ta, a, tb, b))
        return out

    def neighbours(self) -> dict[int, list[tuple[int, int, int]]]:
        """Undirected adjacency: table -> [(other table, own column, other column)], FK order."""
        adj: dict[int, list[tuple[int, int, int]]] = {i: [] for i in range(len(self.tables))}
        for ta, a, tb, b in self.fk_edges():
            adj[ta].append((tb, a, b))
            if ta != tb:
                adj[tb].append((ta, b, a))
        return adj

    def shortest_path(self, src: int, dst: int) -> list[tuple[int, int, int, int]] | None:
        """Edges (t1, c1, t2, c2) of a shortest FK path src -> dst (BFS, FK order breaks ties)."""
        if src == dst:
            return []
        adj = self.neighbours()
        prev: dict[int, tuple[int, int, int]] = {src: (-1, -1, -1)}
        queue = deque([src])
        while queue:
            t = queue.popleft()
            for other, own, theirs in adj[t]:
                if other not in prev:
                    prev[other] = (t, own, theirs)
                    if other == dst:
                        queue.clear()
                        break
                    queue.append(other)
        if dst not in prev:
            return None
        path = []
        t = dst
        while t != src:
            p, own, theirs = prev[t]
            path.append((p, own, t, theirs))
            t = p
        return path[::-1]

    # ---- (de)serialisation ----------------------------------------------------------------
    @classmethod
    def from_tables_json(cls, entry: dict, file: str | None = None) -> "Schema":
        try:
            db_id = entry["db_id"]
            tnames = entry["table_names_original"]
            tnat = entry.get("table_names", tnames)
            cnames = entry["column_names_original"]
            cnat = entry.get("column_names", cnames)
            ctypes = entry.get("column_types", ["text"] * len(cnames))
        except (KeyError, TypeError) as e:
            raise DataError(f"schema entry is missing key {e}", file=file) from None
        tables = [Table(name=n, natural=tnat[i] if i < len(tnat) else n) for i, n in enumerate(tnames)]
        columns = []
        for i, (t, n) in enumerate(cnames):
            nat = cnat[i][1] if i < len(cnat) else n
            columns.append(Column(table=t, name=n, natural=nat,
                                  type=ctypes[i] if i < len(ctypes) else "text"))
        shift = 0
        if not columns or columns[0].table != -1:
            # Spider's column 0 is the global "*": add it, and move key indices along with it
            columns.insert(0, Column(table=-1, name="*", natural="*", type="text"))
            shift = 1
        pks = []
        for pk in entry.get("primary_keys", []):
            pks.extend(k + shift for k in (pk if isinstance(pk, list) else [pk]))  # newer files group composite keys
        fks = [(a + shift, b + shift) for a, b in entry.get("foreign_keys", [])]
        return cls(db_id=db_id, tables=tables, columns=columns, primary_keys=pks, foreign_keys=fks)

    def to_tables_json(self) -> dict:
        return {
            "db_id": self.db_id,
            "table_names_original": [t.name for t in self.tables],
            "table_names": [t.natural for t in self.tables],
            "column_names_original": [[c.table, c.name] for c in self.columns],
            "column_names": [[c.table, c.natural] for c in self.columns],
            "column_types": [c.type for c in self.columns],
            "primary_keys": list(self.primary_keys),
            "foreign_keys": [list(fk) for fk in self.foreign_keys],
        }

    @classmethod
    def from_sqlite(cls, path: str, db_id: str | None = None) -> "Schema":
        """Read a schema straight from a SQLite file, so users can bring their own database."""
        if not os.path.exists(path):
            raise DataError("no such SQLite file", file=path)
        db_id = db_id or os.path.splitext(os.path.basename(path))[0]
        try:
            con = connect_readonly(path)
            try:
                names = [r[0] for r in con.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
                    "ORDER BY rowid")]
                tables = [Table(name=n, natural=natural_name(n)) for n in names]
                columns = [Column(table=-1, name="*", natural="*", type="text")]
                pks, fk_specs = [], []
                for ti, tname in enumerate(names):
                    q = tname.replace('"', '""')
                    for _cid, cname, ctype, _nn, _dflt, pk in con.execute(f'PRAGMA table_info("{q}")'):
                        columns.append(Column(table=ti, name=cname, natural=natural_name(cname),
                                              type=coarse_type(ctype)))
                        if pk:
                            pks.append(len(columns) - 1)
                    for row in con.execute(f'PRAGMA foreign_key_list("{q}")'):
                        # (id, seq, table, from, to, on_update, on_delete, match)
                        fk_specs.append((ti, row[3], row[2], row[4]))
            finally:
                con.close()
        except sqlite3.DatabaseError as e:
            raise DataError(f"not a readable SQLite database ({e})", file=path) from None
        schema = cls(db_id=db_id, tables=tables, columns=columns, primary_keys=pks)
        fks = []
        for ti, from_col, ref_table, to_col in fk_specs:
            a = schema.column_index(ti, from_col)
            rt = schema.table_index(ref_table)
            if a is None or rt is None:
                continue
            if to_col is None:   # REFERENCES t without a column means t's primary key
                pk = [p for p in pks if columns[p].table == rt]
                b = pk[0] if pk else None
            else:
                b = schema.column_index(rt, to_col)
            if b is not None:
                fks.append((a, b))
        schema.foreign_keys = fks
        return schema


def connect_readonly(path) -> sqlite3.Connection:
    """Open a SQLite file read-only, so that nothing run on it can change it.

    As a URI, because only a URI carries ``mode=ro``; ``as_uri()`` escapes the characters
    ('?', '#', spaces) that would cut a hand-made one short and open some other file.
    """
    return sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)


def natural_name(identifier: str) -> str:
    """``HomeTown`` / ``home_town`` -> ``home town``: what the encoder should read."""
    out = []
    prev = ""
    for ch in identifier:
        if ch == "_" or ch == " ":
            out.append(" ")
        elif ch.isupper() and prev and (prev.islower() or prev.isdigit()):
            out.append(" " + ch.lower())
        else:
            out.append(ch.lower())
        prev = ch
    return " ".join("".join(out).split())


def coarse_type(sqlite_type: str) -> str:
    t = (sqlite_type or "").lower()
    if any(k in t for k in ("int", "real", "floa", "doub", "num", "dec")):
        return "number"
    if any(k in t for k in ("date", "time", "year")):
        return "time"
    if "bool" in t:
        return "boolean"
    if any(k in t for k in ("char", "text", "clob", "string")) or not t:
        return "text"
    return "others"


def load_tables(path: str) -> dict[str, Schema]:
    """``tables.json`` -> {db_id: Schema}. A malformed file raises one DataError line."""
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}", file=path) from None
    if not isinstance(entries, list):
        raise DataError("expected a JSON list of schemas", file=path)
    out = {}
    for i, entry in enumerate(entries):
        try:
            s = Schema.from_tables_json(entry, file=path)
        except DataError as e:
            raise DataError(f"schema {i}: {e.reason}", file=path) from None
        out[s.db_id] = s
    return out
