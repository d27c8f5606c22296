"""``python -m text2sql predict``: ask a trained parser questions about a database, turn by turn.

Questions come one per line (stdin or ``--input``); the conversation carries on from line to line,
each turn seeing the parser's own previous SQL, until a blank line starts a new one. Each turn
prints its SQL (FROM restored for FROM-less models), and with ``--execute`` the first rows of its
result, run read-only.
"""
from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

from .data import tokenize_utterance
from .decoding import ids_to_sql
from .errors import DataError
from .model import Example
from .schema import Schema, load_tables


def load_schema(args) -> Schema:
    if args.db:
        return Schema.from_sqlite(args.db, args.db_id)
    if not (args.tables and args.db_id):
        raise DataError("give --db PATH.sqlite, or --tables tables.json with --db_id ID")
    schemas = load_tables(args.tables)
    if args.db_id not in schemas:
        raise DataError(f"unknown database_id {args.db_id!r}", file=args.tables)
    return schemas[args.db_id]


def execute(db: str, sql: str, max_rows: int, timeout: float = 10.0):
    con = sqlite3.connect(Path(db).resolve().as_uri() + "?mode=ro", uri=True)
    import time
    deadline = time.monotonic() + timeout
    con.set_progress_handler(lambda: int(time.monotonic() > deadline), 10000)
    try:
        cur = con.execute(sql)
        cols = [d[0] for d in cur.description or []]
        return cols, cur.fetchmany(max_rows)
    finally:
        con.close()


def run(args) -> int:
    import torch
    from .train import load_run
    schema = load_schema(args)
    model, cfg, vocab = load_run(args.run, device=args.device)
    model.eval()
    torch.set_grad_enabled(False)
    stream = open(args.input, encoding="utf-8") if args.input else sys.stdin
    words: list[list[str]] = []
    for line in stream:
        question = line.strip()
        if not question:
            words = []            # a blank line ends the conversation
            continue
        words.append(tokenize_utterance(question))
        ex = Example(db_id=schema.db_id, unit_texts=schema.unit_natural, words=list(words),
                     targets=[[] for _ in words])
        preds = model.predict([ex], beam=args.beam, constrained=not args.no_constraints)[0]
        sql, _, problem = ids_to_sql(preds[-1], vocab, schema)
        print(f"[{len(words)}] {question}")
        print(sql)
        if problem:
            print(f"  (not a well-formed query: {problem})")
        elif args.execute:
            if '"value"' in sql:
                print("  (the query holds value placeholders; a run trained with --values literal "
                      "writes the values it has seen)")
            if not args.db:
                print("  (--execute needs --db PATH.sqlite)")
            else:
                try:
                    cols, rows = execute(args.db, sql, args.max_rows)
                    print("  " + " | ".join(cols))
                    for r in rows:
                        print("  " + " | ".join(str(v) for v in r))
                except sqlite3.Error as e:
                    print(f"  (execution failed: {e})")
        sys.stdout.flush()
    return 0


def add_predict_command(sub):
    p = sub.add_parser("predict", help="translate questions (one per line) into SQL with a trained run")
    p.add_argument("--run", required=True, help="a run folder written by train")
    p.add_argument("--db", help="a SQLite database (its schema is read from the file)")
    p.add_argument("--tables", help="tables.json, with --db_id, instead of --db")
    p.add_argument("--db_id", help="which schema of --tables (or a name for --db)")
    p.add_argument("--input", help="a file of questions (default: standard input)")
    p.add_argument("--beam", type=int, default=1, help="beam size (1: greedy)")
    p.add_argument("--no_constraints", action="store_true", help="turn grammar-constrained decoding off")
    p.add_argument("--execute", action="store_true", help="run each query read-only and print rows")
    p.add_argument("--max_rows", type=int, default=5, help="rows printed with --execute")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)
