"""How well `ValueFiller` puts the gold literals back into gold queries written with placeholders.

For every turn of a SParC-format file, the gold query's placeholder tokens are filled from the
conversation's questions (the previous turn's own filled query as history, as `predict` and
`evaluate` run it), and each filled slot is compared with the gold literal at the same position
(case-insensitive). Where `database/<db>/<db>.sqlite` exists, text slots are matched against cells,
and the filled query is also executed against the gold one. The model plays no part: this measures
the filler alone, on queries whose structure is right.

    python scripts/measure_value_filling.py ../shared/data/sparc/dev.json
    python scripts/measure_value_filling.py data/spider_cosql/tiny/train.json data/spider_cosql/tiny/dev.json

Ends with one JSON line of the figures.
"""
import argparse
import json
import os
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from text2sql.data import database_dir, tables_path  # noqa: E402
from text2sql.errors import DataError  # noqa: E402
from text2sql.evaluation import execution_match  # noqa: E402
from text2sql.schema import load_tables  # noqa: E402
from text2sql.sql_tokens import VALUE, parse_sql, to_tokens, tokens_to_sql  # noqa: E402
from text2sql.values import ValueFiller, value_of  # noqa: E402


def measure(path: str) -> dict:
    folder = os.path.dirname(os.path.abspath(path))
    schemas = load_tables(tables_path(folder, None))
    db_dir = database_dir(folder)
    with open(path, encoding="utf-8") as f:
        items = json.load(f)
    c = Counter()
    for item in items:
        schema = schemas[item["database_id"]]
        db = os.path.join(db_dir, schema.db_id, f"{schema.db_id}.sqlite") if db_dir else None
        filler = ValueFiller(schema, db if db and os.path.isfile(db) else None)
        questions, previous = [], None
        for turn in item["interaction"]:
            questions.append(turn["utterance"])
            try:
                q = parse_sql(turn["query"], schema)
            except DataError:
                c["unparsable"] += 1
                continue
            gold = to_tokens(q, schema, "full", "literal")
            holes = to_tokens(q, schema, "full", "placeholder")
            filled = filler.fill(holes, questions, previous)
            previous = filled
            c["turns"] += 1
            slots = [i for i, t in enumerate(holes) if t == VALUE]
            if not slots:
                continue
            c["turns_with_values"] += 1
            right = 0
            for i in slots:
                kind = "number" if not gold[i][:1] in "'\"" else "text"
                c[f"{kind}_slots"] += 1
                if filled[i] == VALUE:
                    c[f"{kind}_left"] += 1
                elif value_of(filled[i]) == value_of(gold[i]):
                    c[f"{kind}_right"] += 1
                    right += 1
            c["turns_all_right"] += right == len(slots)
            if filler.db_path:
                c["executed"] += 1
                ok = execution_match(turn["query"], tokens_to_sql(filled, schema), filler.db_path)
                c["execution_match"] += bool(ok)
    out = {"file": path, **c}
    for kind in ("number", "text"):
        n = c[f"{kind}_slots"]
        out[f"{kind}_accuracy"] = round(100 * c[f"{kind}_right"] / n, 2) if n else None
    out["turn_accuracy"] = round(100 * c["turns_all_right"] / c["turns_with_values"], 2) \
        if c["turns_with_values"] else None
    if c["executed"]:
        out["execution_accuracy"] = round(100 * c["execution_match"] / c["executed"], 2)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="SParC-format JSON files (tables.json beside them)")
    args = ap.parse_args()
    results = [measure(p) for p in args.files]
    for r in results:
        print(f"{r['file']}: {r.get('turns_with_values', 0)} of {r.get('turns', 0)} turns hold values; "
              f"number slots {r.get('number_right', 0)}/{r.get('number_slots', 0)} right "
              f"({r.get('number_left', 0)} left empty), text slots {r.get('text_right', 0)}/{r.get('text_slots', 0)} "
              f"({r.get('text_left', 0)} left empty); every value of the turn right: {r['turn_accuracy']}%"
              + (f"; execution match {r['execution_accuracy']}% of {r['executed']}" if r.get("executed") else ""))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
