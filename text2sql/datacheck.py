"""``data check`` / ``data stats``: load splits, tokenise every gold query both ways, restore FROM.

For each split it counts interactions, turns, databases, turns per interaction and target
lengths; how many gold queries tokenise; and how many FROM-less targets restore to SQL with the
gold's table set and join conditions, both for the target the parser trains on with
``--remove_from`` (which keeps the rare FROM clause the foreign keys cannot rebuild) and for the
pure EditSQL form that drops every FROM (``restored_pure``), which shows what the FK graph alone
recovers.
"""
from __future__ import annotations

import os
import statistics

from .data import read_split, split_path, tables_path
from .errors import DataError
from .schema import load_tables
from .sql_tokens import check_restore, parse_sql, to_tokens


def check_split(path: str, schemas) -> dict:
    split = read_split(path, schemas)
    errors = [e.line() for e in split.errors]
    failures = []          # nofrom queries that do not restore, with the reason
    pure_failures = []
    queries = tokenized = restored = restored_pure = kept_from = kept_from_tables = 0
    len_full, len_nofrom = [], []
    # interactions the reader rejected still count their turns as queries that failed
    for e in split.errors:
        if e.turn is not None:
            queries += 1
    for inter in split.interactions:
        schema = schemas[inter.db_id]
        for t, turn in enumerate(inter.turns):
            queries += 1
            try:
                q = parse_sql(turn.query, schema)
                full = to_tokens(q, schema, "full")
                nofrom = to_tokens(q, schema, "nofrom")
                loose = to_tokens(q, schema, "nofrom_tables")
            except DataError as e:
                errors.append(e.located(file=path, interaction=inter.index, turn=t).line())
                continue
            tokenized += 1
            kept_from += "from" in nofrom
            kept_from_tables += "from" in loose
            len_full.append(len(full))
            len_nofrom.append(len(nofrom))
            where = f"{path}: interaction {inter.index} turn {t}"
            try:
                reason = check_restore(turn.query, schema)
                pure = check_restore(turn.query, schema, pure=True)
            except DataError as e:
                reason = pure = f"restoration failed: {e.reason}"
            if reason is None:
                restored += 1
            else:
                failures.append(f"{where}: {reason} | {turn.query}")
            if pure is None:
                restored_pure += 1
            else:
                pure_failures.append(f"{where}: {pure}")
    n_turns = [len(i) for i in split.interactions]
    return {
        "path": path,
        "format": split.format,
        "interactions": len(split.interactions),
        "turns": sum(n_turns),
        "databases": len({i.db_id for i in split.interactions}),
        "database_ids": sorted({i.db_id for i in split.interactions}),
        "mean_turns": round(statistics.mean(n_turns), 2) if n_turns else 0.0,
        "max_turns": max(n_turns, default=0),
        "mean_target_len": round(statistics.mean(len_full), 2) if len_full else 0.0,
        "max_target_len": max(len_full, default=0),
        "mean_target_len_nofrom": round(statistics.mean(len_nofrom), 2) if len_nofrom else 0.0,
        "max_target_len_nofrom": max(len_nofrom, default=0),
        "queries": queries,
        "tokenized": tokenized,
        "restored": restored,
        "restored_pure": restored_pure,
        "kept_from": kept_from,
        "kept_from_tables": kept_from_tables,
        "errors": errors,
        "restore_failures": failures,
        "restore_failures_pure": pure_failures,
    }


SUM_KEYS = ("interactions", "turns", "queries", "tokenized", "restored", "restored_pure", "kept_from",
            "kept_from_tables")


def check_data(data: str, splits=("train", "dev"), tables: str | None = None) -> dict:
    """Check every split found under ``data`` (a directory) or the one file ``data`` names."""
    schemas = load_tables(tables_path(data, tables))
    if os.path.isfile(data):
        paths = {os.path.splitext(os.path.basename(data))[0]: data}
    else:
        paths = {s: split_path(data, s) for s in splits if os.path.exists(split_path(data, s))}
        if not paths:
            raise DataError(f"no {' or '.join(s + '.json' for s in splits)} in this directory", file=data)
    report = {"splits": {}}
    dbs = set()
    for name, path in paths.items():
        try:
            r = check_split(path, schemas)
        except DataError as e:   # the whole file is unreadable: report it, check the others
            r = {"path": path, "errors": [e.line()], **{k: 0 for k in SUM_KEYS}, "databases": 0,
                 "restore_failures": [], "restore_failures_pure": []}
        report["splits"][name] = r
        dbs |= set(r.get("database_ids", []))
    for k in SUM_KEYS:
        report[k] = sum(r[k] for r in report["splits"].values())
    report["databases"] = len(dbs)
    report["errors"] = [e for r in report["splits"].values() for e in r["errors"]]
    return report


def format_table(report: dict) -> str:
    rows = [("", *report["splits"].keys())]
    keys = [("interactions", "interactions"), ("turns", "turns"), ("databases", "databases"),
            ("mean_turns", "turns / interaction (mean)"), ("max_turns", "turns / interaction (max)"),
            ("mean_target_len", "target length (mean)"), ("max_target_len", "target length (max)"),
            ("mean_target_len_nofrom", "nofrom target length (mean)"),
            ("max_target_len_nofrom", "nofrom target length (max)"),
            ("queries", "gold queries"), ("tokenized", "tokenised"),
            ("restored", "nofrom restored (tables+joins)"),
            ("restored_pure", "every FROM dropped, restored"),
            ("kept_from", "nofrom targets keeping a FROM"),
            ("kept_from_tables", "  with --keep_from tables"), ("errors", "errors")]
    for key, label in keys:
        row = [label]
        for r in report["splits"].values():
            v = r.get(key, "")
            if key == "errors":
                v = len(v)
            elif key in ("tokenized", "restored", "restored_pure") and r.get("queries"):
                v = f"{v} ({100.0 * v / r['queries']:.1f}%)"
            row.append(str(v))
        rows.append(tuple(row))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
