"""Build the project's own tiny SParC-format data set from the sources kept in the repo.

    python scripts/make_tiny_data.py [--out DIR] [--source DIR]

Reads ``data/spider_cosql/tiny/source/<db_id>.sql`` (schema and rows, one file per database) and
``source/interactions.json`` (the conversations, each tagged with its split), then writes into DIR
(default ``data/spider_cosql/tiny``):

- ``database/<db_id>/<db_id>.sqlite``, deleted and rebuilt from the ``.sql`` file;
- ``tables.json``, read back from the built databases with ``Schema.from_sqlite``, so the schemas the
  parser sees are exactly the ones the queries run on;
- ``train.json`` and ``dev.json`` in the SParC format (``final`` = the last turn).

Before writing the splits it checks the conversations (2-4 turns, known split, a database never in
both splits), the style of every gold query (Spider's: upper-case keywords, double-quoted strings,
``T1``/``T2`` aliases only when a block joins tables, joins along foreign keys) and executes every gold
query read-only on its database. An error stops the build (exit status 1) with one line per problem,
naming the interaction index, the turn and the reason. A query that runs but returns no row is
reported as a warning: every shipped query should return rows (the tests insist), but an empty
result is a data problem to fix, not a broken build.

The output is deterministic (sorted databases, source order of interactions, fixed JSON layout), so
the tests can compare the committed files with a fresh build.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:   # run as a script from anywhere: the package lives at the repo root
    sys.path.insert(0, ROOT)

from text2sql.schema import Schema, connect_readonly  # noqa: E402
from text2sql.sql_tokens import SQLError, parse_sql  # noqa: E402

TINY = os.path.join(ROOT, "data", "spider_cosql", "tiny")
SOURCE = os.path.join(TINY, "source")
SPLITS = ("train", "dev")
MIN_TURNS, MAX_TURNS = 2, 4


class BuildError(Exception):
    """The sources are inconsistent; ``problems`` holds one line per problem."""

    def __init__(self, what: str, problems: list[str]):
        super().__init__(f"{what}:\n" + "\n".join(problems))
        self.problems = problems


# ------------------------------------------------------------------------------------------
# databases and schemas
# ------------------------------------------------------------------------------------------
def database_ids(source: str = SOURCE) -> list[str]:
    """The databases to build: one per ``source/<db_id>.sql``, sorted so the output order is fixed."""
    return sorted(name[:-4] for name in os.listdir(source) if name.endswith(".sql"))


def build_databases(out_dir: str, source: str = SOURCE) -> dict[str, str]:
    """Rebuild ``out_dir/database/<db_id>/<db_id>.sqlite`` from scratch; {db_id: path}."""
    paths = {}
    for db_id in database_ids(source):
        db_dir = os.path.join(out_dir, "database", db_id)
        os.makedirs(db_dir, exist_ok=True)
        path = os.path.join(db_dir, f"{db_id}.sqlite")
        # delete first: executing the script on an old file would append rows or fail on CREATE
        if os.path.exists(path):
            os.remove(path)
        with open(os.path.join(source, f"{db_id}.sql"), encoding="utf-8") as f:
            script = f.read()
        con = sqlite3.connect(path)
        try:
            con.executescript(script)
            # a row pointing at nothing would make joins silently drop it: fail the build instead.
            # Checked after loading (not with foreign_keys=ON) so the message names the rows.
            bad = con.execute("PRAGMA foreign_key_check").fetchall()
            con.commit()
        except sqlite3.Error as e:
            bad = None
            problem = f"cannot build the database: {e}"
        finally:
            con.close()
        if bad is None or bad:
            os.remove(path)   # never leave a half-built database behind
            raise BuildError(f"{db_id}.sql", [problem] if bad is None else
                             [f"row {rowid} of {table} points at no row of {parent}"
                              for table, rowid, parent, _fk in bad])
        paths[db_id] = path
    return paths


# ------------------------------------------------------------------------------------------
# checks
# ------------------------------------------------------------------------------------------
def check_interactions(interactions: list[dict], db_ids: list[str]) -> list[str]:
    """Shape of the conversations: known database and split, 2-4 turns, disjoint split databases."""
    problems = []
    split_dbs: dict[str, set[str]] = {s: set() for s in SPLITS}
    for i, inter in enumerate(interactions):
        db, split, turns = inter.get("database_id"), inter.get("split"), inter.get("interaction")
        if db not in db_ids:
            problems.append(f"interaction {i}: unknown database {db!r}")
        if split not in SPLITS:
            problems.append(f"interaction {i}: split must be one of {SPLITS}, got {split!r}")
        else:
            split_dbs[split].add(db)
        if not isinstance(turns, list) or not MIN_TURNS <= len(turns) <= MAX_TURNS:
            problems.append(f"interaction {i}: needs {MIN_TURNS}-{MAX_TURNS} turns")
            continue
        for t, turn in enumerate(turns):
            if not (isinstance(turn, dict) and turn.get("utterance") and turn.get("query")):
                problems.append(f"interaction {i} turn {t}: needs a non-empty utterance and query")
    # validating on a database the model trained on would hide schema over-fitting
    for db in sorted(split_dbs["train"] & split_dbs["dev"]):
        problems.append(f"database {db!r} is used in both train and dev")
    return problems


_KEYWORDS = ("select", "from", "where", "join", "on", "as", "and", "or", "not", "in", "like",
             "between", "group", "order", "by", "having", "limit", "distinct", "asc", "desc",
             "intersect", "union", "except")
_LOWER_KEYWORD = re.compile(r"\b(" + "|".join(_KEYWORDS) + r")\b")
_UPPER_AGGREGATE = re.compile(r"\b(COUNT|SUM|AVG|MIN|MAX|Count|Sum|Avg|Min|Max)\s*\(")
_STRING = re.compile(r'"[^"]*"')


def style_problems(sql: str, schema: Schema) -> list[str]:
    """How ``sql`` departs from the Spider/SParC gold style (empty when it does not)."""
    out = []
    bare = _STRING.sub('""', sql)   # literals may hold any text ("Rock and Roll", "O'Neil")
    if "'" in bare:
        out.append("string literals must be double-quoted")
    m = _LOWER_KEYWORD.search(bare)
    if m:
        out.append(f"keyword {m.group(1)!r} must be upper-case")
    m = _UPPER_AGGREGATE.search(bare)
    if m:
        out.append(f"aggregate {m.group(1)}( must be lower-case, as in Spider")
    if ";" in bare or "  " in sql or sql != sql.strip():
        out.append("no semicolon, no doubled or surrounding spaces")
    try:
        query = parse_sql(sql, schema)   # resolves every column, so a wrong name fails here
    except SQLError as e:
        return out + [f"does not parse against the schema: {e}"]
    fk_pairs = {frozenset((schema.column_unit(a), schema.column_unit(b))) for a, b in schema.foreign_keys}
    for block in query.blocks():
        items = block.from_.items if block.from_ else []
        aliases = [it.alias for it in items]
        if len(items) == 1 and aliases[0]:
            out.append(f"single table {schema.table_name(items[0].table)} takes no alias")
        if len(items) > 1:
            want = [f"T{k + 1}" for k in range(len(items))]
            if aliases != want:
                out.append(f"joined tables must be aliased {', '.join(want)} in order, got {aliases}")
            if any(it.on is None for it in items[1:]):
                out.append("every JOIN needs an ON condition")
            for pair in block.from_.join_conditions():
                if pair not in fk_pairs:
                    out.append(f"join {' = '.join(sorted(pair))} is not along a foreign key")
    return out


# The SQL constructs every split must show at least once, so that the dev set tests each one on an
# unseen database. Regular expressions over the query text; the join sizes come from the parse.
CONSTRUCTS = {
    "plain SELECT": re.compile(r"^SELECT (DISTINCT )?[\w.]+(, [\w.]+)* FROM \w+$"),
    "SELECT *": re.compile(r"SELECT \* FROM"),
    "DISTINCT": re.compile(r"\bDISTINCT\b"),
    "WHERE =": re.compile(r"\b(WHERE|AND|OR) \(?[\w.]+ = "),
    ">": re.compile(r" > "),
    "<": re.compile(r" < "),
    ">=": re.compile(r" >= "),
    "!=": re.compile(r" != "),
    "LIKE": re.compile(r"\bLIKE\b"),
    "BETWEEN": re.compile(r"\bBETWEEN \S+ AND \b"),
    "AND": re.compile(r"\bAND\b"),   # matched after BETWEEN ... AND ... is removed
    "OR": re.compile(r"\bOR\b"),
    "IN (subquery)": re.compile(r"(?<!NOT) IN \(SELECT\b"),
    "NOT IN (subquery)": re.compile(r"\bNOT IN \(SELECT\b"),
    "count(*)": re.compile(r"count\(\*\)"),
    "sum": re.compile(r"\bsum\("),
    "avg": re.compile(r"\bavg\("),
    "min": re.compile(r"\bmin\("),
    "max": re.compile(r"\bmax\("),
    "GROUP BY": re.compile(r"\bGROUP BY\b"),
    "HAVING": re.compile(r"\bHAVING\b"),
    "ORDER BY ASC": re.compile(r"\bORDER BY [\w.()*]+(?! DESC)( ASC)?(?![\w.()*])"),
    "ORDER BY DESC": re.compile(r"\bORDER BY [\w.()*]+ DESC\b"),
    "LIMIT": re.compile(r"\bLIMIT \d+"),
    "nested subquery in WHERE": re.compile(r"[<>=] \(SELECT\b"),
    "INTERSECT": re.compile(r"\bINTERSECT\b"),
    "UNION": re.compile(r"\bUNION\b"),
    "EXCEPT": re.compile(r"\bEXCEPT\b"),
}
JOIN_CONSTRUCTS = ("JOIN of 2 tables", "JOIN of 3+ tables")


def constructs(sql: str, schema: Schema) -> set[str]:
    """The CONSTRUCTS (and JOIN_CONSTRUCTS) that one gold query uses."""
    text = _STRING.sub('""', sql)
    found = set()
    for name, pattern in CONSTRUCTS.items():
        probe = re.sub(r"\bBETWEEN \S+ AND \S+", "BETWEEN", text) if name == "AND" else text
        if pattern.search(probe):
            found.add(name)
    for block in parse_sql(sql, schema).blocks():
        n = len(block.from_.items) if block.from_ else 0
        if n == 2:
            found.add(JOIN_CONSTRUCTS[0])
        elif n >= 3:
            found.add(JOIN_CONSTRUCTS[1])
    return found


def missing_constructs(interactions: list[dict], schemas: dict[str, Schema]) -> dict[str, list[str]]:
    """{split: constructs no query of that split uses}, in CONSTRUCTS order."""
    out = {}
    for split in SPLITS:
        seen = set()
        for inter in interactions:
            if inter["split"] == split:
                for turn in inter["interaction"]:
                    seen |= constructs(turn["query"], schemas[inter["database_id"]])
        out[split] = [c for c in (*CONSTRUCTS, *JOIN_CONSTRUCTS) if c not in seen]
    return out


def check_queries(interactions: list[dict], db_paths: dict[str, str],
                  schemas: dict[str, Schema]) -> tuple[list[str], list[str]]:
    """Style-check and execute every gold query read-only.

    Returns (errors, empty): errors are style problems and queries SQLite rejects; empty lists the
    queries that run but return no row (or only NULLs, as ``max`` over nothing does).
    """
    errors, empty = [], []
    for i, inter in enumerate(interactions):
        db = inter["database_id"]
        con = connect_readonly(db_paths[db])
        try:
            for t, turn in enumerate(inter["interaction"]):
                where = f"interaction {i} ({db}) turn {t}"
                sql = turn["query"]
                try:
                    rows = con.execute(sql).fetchall()
                except sqlite3.Error as e:
                    # SQLite's own message is the clearest; the style check would only echo it
                    errors.append(f"{where}: SQLite error: {e}: {sql}")
                    continue
                errors += [f"{where}: {p}: {sql}" for p in style_problems(sql, schemas[db])]
                if not rows or all(all(v is None for v in r) for r in rows):
                    empty.append(f"{where}: no rows: {sql}")
        finally:
            con.close()
    return errors, empty


# ------------------------------------------------------------------------------------------
# the build
# ------------------------------------------------------------------------------------------
def write_json(path: str, obj) -> None:
    # fixed layout (indent=1, key order as built, trailing newline) keeps rebuilds byte-identical
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def to_sparc(inter: dict) -> dict:
    """A source interaction in SParC's layout: the turns, and the last one again as ``final``."""
    turns = [{"utterance": t["utterance"], "query": t["query"]} for t in inter["interaction"]]
    return {"database_id": inter["database_id"], "interaction": turns, "final": dict(turns[-1])}


def build(out_dir: str = TINY, source: str = SOURCE) -> dict:
    """Build everything into ``out_dir``; raise BuildError when a source is wrong.

    Returns a summary: {split: {"databases", "interactions", "turns"}}, plus "empty" (the queries
    that returned no row) and "missing" ({split: constructs that split never uses}).
    """
    path = os.path.join(source, "interactions.json")
    try:
        with open(path, encoding="utf-8") as f:
            interactions = json.load(f)
        db_ids = database_ids(source)
    except (OSError, json.JSONDecodeError) as e:
        raise BuildError(f"cannot read the sources in {source}", [str(e)]) from None
    if not isinstance(interactions, list) or not all(isinstance(it, dict) for it in interactions):
        raise BuildError(path, ["expected a JSON list of interaction objects"])
    problems = check_interactions(interactions, db_ids)
    if problems:
        raise BuildError("bad interactions.json", problems)

    os.makedirs(out_dir, exist_ok=True)
    db_paths = build_databases(out_dir, source)
    schemas = {db: Schema.from_sqlite(path, db) for db, path in db_paths.items()}
    errors, empty = check_queries(interactions, db_paths, schemas)
    if errors:
        raise BuildError("gold queries failed", errors)

    write_json(os.path.join(out_dir, "tables.json"), [schemas[db].to_tables_json() for db in sorted(schemas)])
    summary: dict = {}
    for split in SPLITS:
        items = [to_sparc(it) for it in interactions if it["split"] == split]
        write_json(os.path.join(out_dir, f"{split}.json"), items)
        summary[split] = {"databases": len({it["database_id"] for it in items}),
                          "interactions": len(items),
                          "turns": sum(len(it["interaction"]) for it in items)}
    summary["empty"] = empty
    summary["missing"] = missing_constructs(interactions, schemas)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=TINY, help="output directory (default: data/spider_cosql/tiny)")
    p.add_argument("--source", default=SOURCE, help="directory of <db_id>.sql files and interactions.json "
                                                    "(default: data/spider_cosql/tiny/source)")
    args = p.parse_args(argv)
    try:
        summary = build(args.out, args.source)
    except BuildError as e:
        print(f"make_tiny_data: {e}", file=sys.stderr)
        return 1
    for line in summary["empty"]:
        print(f"make_tiny_data: warning: {line}", file=sys.stderr)
    for split in SPLITS:
        if summary["missing"][split]:
            print(f"make_tiny_data: warning: {split} never uses {', '.join(summary['missing'][split])}",
                  file=sys.stderr)
    parts = [f"{s}: {summary[s]['databases']} databases, {summary[s]['interactions']} interactions, "
             f"{summary[s]['turns']} turns" for s in SPLITS]
    if summary["empty"]:
        parts.append(f"{len(summary['empty'])} queries returned no rows")
    print("; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
