"""Error analysis of decoded predictions: where each wrong query first leaves the gold, how errors
carry from turn to turn, and which turns several systems get right.

It reads the ``predictions.jsonl`` that ``evaluate`` writes (one row per turn: the decoded target
tokens, the gold ones, and whether the evaluator matched the query), so it needs no model and runs
in a moment on any report; reports of different runs, ensembles or decoding settings over the same
split can be compared turn by turn (``python -m text2sql analyse REPORT [REPORT ...]``).
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter

from .errors import DataError
from .vocab import GRAMMAR, SPECIALS

REQUIRED = ("interaction", "turn", "tokens", "gold_tokens", "exact_match")
KEYWORDS = frozenset(GRAMMAR) | frozenset(SPECIALS)
_LITERAL = re.compile(r"""^(['"].*|-?\d+(\.\d+)?)$""")
# a unit chosen for another unit, first match wins
UNIT_CASES = ("kept from the previous query", "same column, other table", "same table", "other table")


def load_report(path: str) -> list[dict]:
    """An ``evaluate`` output folder (or its predictions.jsonl) -> its rows, in file order."""
    file = os.path.join(path, "predictions.jsonl") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise DataError("no predictions.jsonl (evaluate --run RUN --out DIR writes one)", file=path)
    rows = []
    with open(file, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"line {n} is not JSON ({e.msg})", file=file) from None
            missing = [k for k in REQUIRED if k not in row] if isinstance(row, dict) else list(REQUIRED)
            if missing:
                raise DataError(f"line {n} lacks {', '.join(missing)}", file=file)
            rows.append(row)
    if not rows:
        raise DataError("holds no predictions", file=file)
    return rows


def reads_gold_previous(path: str) -> bool:
    """Whether the report's turns were decoded against the gold previous queries (``evaluate
    --use_gold_previous``), as the eval_*.json beside its predictions says."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    for name in sorted(os.listdir(folder or ".")):
        if name.startswith("eval_") and name.endswith(".json"):
            try:
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    dec = json.load(f).get("decoding") or {}
            except (OSError, ValueError, AttributeError):
                continue
            return bool(dec.get("use_gold_previous"))
    return False


def token_kind(tok: str) -> str:
    """keyword (the SQL grammar's tokens), value (a literal) or unit (a table or column)."""
    if tok in KEYWORDS:
        return "keyword"
    return "value" if _LITERAL.match(tok) else "unit"


def _table_column(unit: str) -> tuple[str, str | None]:
    table, _, column = unit.partition(".")
    return table, column or None


def first_error(pred: list[str], gold: list[str], read: list[str] | None = None) -> dict | None:
    """Where ``pred`` first differs from ``gold`` (None where they are equal): the position, the
    kind of the difference (the predicted token's kind "for" the gold's, as "unit for unit" or
    "keyword for unit"; "ended early" where the prediction stops inside the gold, "ran on" where
    it goes past the gold's end), both tokens there (None past an end) and a detail: for a
    unit chosen for another, its case (``UNIT_CASES``; ``read`` is the previous query the turn was
    decoded against, whose units count as kept), else the gold token (ended early), the extra
    token (ran on) or "gold -> predicted"."""
    n = next((i for i, (p, g) in enumerate(zip(pred, gold)) if p != g), min(len(pred), len(gold)))
    if n == len(pred) == len(gold):
        return None
    p = pred[n] if n < len(pred) else None
    g = gold[n] if n < len(gold) else None
    if p is None:
        kind, detail = "ended early", g
    elif g is None:
        kind, detail = "ran on", p
    else:
        kind = f"{token_kind(p)} for {token_kind(g)}"
        detail = f"{g} -> {p}"
        if kind == "unit for unit":
            (pt, pc), (gt, gc) = _table_column(p), _table_column(g)
            if read is not None and p in read and g not in read:
                detail = UNIT_CASES[0]
            elif pc is not None and pc == gc:
                detail = UNIT_CASES[1]
            elif pt == gt:
                detail = UNIT_CASES[2]
            else:
                detail = UNIT_CASES[3]
    return {"position": n, "kind": kind, "predicted": p, "gold": g, "detail": detail}


def _previous(rows: list[dict]) -> list[int | None]:
    """Each row's previous turn in the same interaction, as a row index (None on a first turn)."""
    at = {(r["interaction"], r["turn"]): i for i, r in enumerate(rows)}
    return [at.get((r["interaction"], r["turn"] - 1)) for r in rows]


def _pct(a: int, b: int) -> float | None:
    return round(100.0 * a / b, 2) if b else None


def _first_wrong_turns(rows: list[dict], right: list[bool]) -> Counter:
    """Interactions by the first turn the evaluator did not match ("none": interaction match)."""
    turns = {}
    for r, ok in zip(rows, right):
        turns.setdefault(r["interaction"], []).append((r["turn"], ok))
    out = Counter()
    for ts in turns.values():
        miss = next((n for n, (_, ok) in enumerate(sorted(ts), 1) if not ok), None)
        out["none" if miss is None else "turn 4+" if miss >= 4 else f"turn {miss}"] += 1
    return out


def analyse(rows: list[dict], examples: int = 0, gold_previous: bool = False) -> dict:
    """One report's rows -> its counts, a JSON-able dict (``examples`` wrong turns kept per kind).
    ``gold_previous``: each turn was decoded against the gold previous query, which is then the
    query a kept unit comes from."""
    read_key = "gold_tokens" if gold_previous else "tokens"
    prev = _previous(rows)
    right = [bool(r["exact_match"]) for r in rows]
    same = [r["tokens"] == r["gold_tokens"] for r in rows]
    wrong = [i for i, ok in enumerate(right) if not ok]

    kinds, details, shown, cascaded = Counter(), {}, {}, Counter()
    for i in wrong:
        r, p = rows[i], prev[i]
        err = first_error(r["tokens"], r["gold_tokens"], None if p is None else rows[p][read_key])
        if err is None:          # the tokens are right and the query is not (a value, a restored FROM)
            err = {"kind": "tokens right", "detail": None}
        kinds[err["kind"]] += 1
        cascaded[err["kind"]] += p is not None and not right[p]
        if err["detail"] is not None:
            details.setdefault(err["kind"], Counter())[err["detail"]] += 1
        if len(shown.setdefault(err["kind"], [])) < examples:
            shown[err["kind"]].append({"interaction": r["interaction"], "turn": r["turn"],
                                       "utterance": r.get("utterance"), "gold": " ".join(r["gold_tokens"]),
                                       "predicted": " ".join(r["tokens"]), "detail": err["detail"]})

    # context: a follow-up reads its own previous prediction, so one wrong turn can spoil the next
    later = [i for i, p in enumerate(prev) if p is not None]
    after = {ok: [i for i in later if right[prev[i]] == ok] for ok in (True, False)}
    repeated = sum(1 for i in later if not right[i] and rows[i]["tokens"] == rows[prev[i]]["tokens"]
                   and rows[i]["gold_tokens"] != rows[prev[i]]["gold_tokens"])
    first_wrong = _first_wrong_turns(rows, right)
    lengths = Counter("shorter" if len(rows[i]["tokens"]) < len(rows[i]["gold_tokens"]) else
                      "longer" if len(rows[i]["tokens"]) > len(rows[i]["gold_tokens"]) else "same length"
                      for i in wrong)
    n = len(rows)
    # reports written since evaluate gives both metrics: the turns the official metric matches with
    # the wrong join columns or DISTINCT (the SQL would return other rows)
    strict = None
    if rows and all("strict_match" in r for r in rows):
        ok = [bool(r["strict_match"]) for r in rows]
        strict = {"question_match": _pct(sum(ok), n),
                  "matched_only_officially": sum(1 for a, b in zip(right, ok) if a and not b)}
    return {
        "turns": n, "interactions": sum(first_wrong.values()), "gold_previous": gold_previous,
        "strict": strict,
        "question_match": _pct(sum(right), n), "string_match": _pct(sum(same), n),
        "matched_with_other_tokens": sum(1 for ok, s in zip(right, same) if ok and not s),
        "wrong": len(wrong),
        "first_error": {k: {"count": c, "share": _pct(c, len(wrong)), "after_wrong_turn": cascaded[k],
                            "details": dict(details.get(k, Counter()).most_common())}
                        for k, c in kinds.most_common()},
        "examples": shown,
        "length": {"predicted_mean": round(sum(len(r["tokens"]) for r in rows) / n, 2),
                   "gold_mean": round(sum(len(r["gold_tokens"]) for r in rows) / n, 2),
                   "wrong": {k: lengths[k] for k in ("shorter", "same length", "longer")}},
        "context": {"after_matched": {"turns": len(after[True]),
                                      "question_match": _pct(sum(right[i] for i in after[True]), len(after[True]))},
                    "after_wrong": {"turns": len(after[False]),
                                    "question_match": _pct(sum(right[i] for i in after[False]), len(after[False]))},
                    "repeated_previous_prediction": repeated},
        "first_wrong_turn": {k: first_wrong[k] for k in ("none", "turn 1", "turn 2", "turn 3", "turn 4+")},
    }


def agreement(reports: dict[str, list[dict]]) -> dict:
    """Several reports over the same turns -> which turns each gets right: all, none, any (the
    oracle of choosing the right system per turn), and per pair the turns only one of them gets."""
    names = list(reports)
    keys = None
    for name, rows in reports.items():
        k = [(r["interaction"], r["turn"], tuple(r["gold_tokens"])) for r in rows]
        if keys is None:
            keys = k
        elif k != keys:
            raise DataError(f"its turns are not those of {names[0]} (reports of one split, in one order, "
                            "can be compared)", file=name)
    right = {name: [bool(r["exact_match"]) for r in rows] for name, rows in reports.items()}
    n = len(keys)
    cols = list(zip(*right.values()))                  # per turn: each report's match
    inter_ok = {}                                      # interaction -> per report: all its turns matched
    for (i, _, _), col in zip(keys, cols):
        inter_ok[i] = [a and b for a, b in zip(inter_ok.get(i, [True] * len(names)), col)]
    return {
        "reports": names, "turns": n,
        "all_right": _pct(sum(all(c) for c in cols), n),
        "none_right": _pct(sum(not any(c) for c in cols), n),
        "any_right": _pct(sum(any(c) for c in cols), n),
        "interaction_any_right": _pct(sum(any(ok) for ok in inter_ok.values()), len(inter_ok)),
        "pairs": [{"a": a, "b": b,
                   "only_a": sum(x and not y for x, y in zip(right[a], right[b])),
                   "only_b": sum(y and not x for x, y in zip(right[a], right[b]))}
                  for j, a in enumerate(names) for b in names[j + 1:]],
    }


def format_analysis(name: str, a: dict, top: int = 5) -> str:
    lines = [f"== {name}: {a['turns']} turns, {a['interactions']} interactions",
             f"question match {a['question_match']:.2f}, string match {a['string_match']:.2f} "
             f"({a['matched_with_other_tokens']} matched with other tokens than the gold's)",
             *([f"strict metric (join conditions and DISTINCT compared): question match "
                f"{a['strict']['question_match']:.2f}; {a['strict']['matched_only_officially']} turns matched "
                "only under the official one"] if a.get("strict") else []),
             f"length: {a['length']['predicted_mean']:.2f} tokens predicted on average, "
             f"{a['length']['gold_mean']:.2f} in the gold; the {a['wrong']} wrong queries: "
             + ", ".join(f"{c} {k}" for k, c in a["length"]["wrong"].items()),
             f"where the {a['wrong']} wrong queries first leave the gold (kind, count, share, of them "
             "after a wrong turn, details):"]
    for kind, e in a["first_error"].items():
        shown = list(e["details"].items())[:top]
        more = "" if len(e["details"]) <= top else ", ..."
        lines.append(f"  {kind:<20} {e['count']:>5} {e['share']:>5.1f}% {e['after_wrong_turn']:>5}  "
                     + ", ".join(f"{d} {c}" for d, c in shown) + more)
        for x in a["examples"].get(kind, []):
            lines.append(f"      interaction {x['interaction']} turn {x['turn']}: {x['utterance']}")
            lines.append(f"        gold      {x['gold']}")
            lines.append(f"        predicted {x['predicted']}")
    c = a["context"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"   # noqa: E731
    lines += [f"follow-ups (each decoded against {'the gold previous query' if a['gold_previous'] else 'its own previous prediction'}):",
              f"  after a matched turn: {c['after_matched']['turns']} turns, question match "
              f"{fmt(c['after_matched']['question_match'])}",
              f"  after a wrong turn:   {c['after_wrong']['turns']} turns, question match "
              f"{fmt(c['after_wrong']['question_match'])}",
              f"  wrong, and the previous prediction repeated where the gold changed: "
              f"{c['repeated_previous_prediction']}",
              "first wrong turn of each interaction: "
              + ", ".join(f"{k} {v}" for k, v in a["first_wrong_turn"].items())]
    return "\n".join(lines)


def format_agreement(g: dict) -> str:
    lines = [f"== the {len(g['reports'])} reports, turn by turn ({g['turns']} turns): matched by all "
             f"{g['all_right']:.2f}%, by none {g['none_right']:.2f}%, by at least one {g['any_right']:.2f}% "
             f"(interactions matched whole by at least one: {g['interaction_any_right']:.2f}%)"]
    for p in g["pairs"]:
        lines.append(f"  {p['a']} alone {p['only_a']}, {p['b']} alone {p['only_b']}")
    return "\n".join(lines)


def run_analyse(args) -> int:
    reports = {path: load_report(path) for path in args.reports}
    out = {"reports": {path: analyse(rows, args.examples, reads_gold_previous(path))
                       for path, rows in reports.items()}}
    if len(reports) > 1:
        out["agreement"] = agreement(reports)
    if args.json:
        print(json.dumps(out))
        return 0
    print("\n\n".join([format_analysis(p, a, args.top) for p, a in out["reports"].items()]
                       + ([format_agreement(out["agreement"])] if "agreement" in out else [])))
    return 0


def add_analyse_command(sub):
    p = sub.add_parser("analyse", aliases=["analyze"],
                       help="error analysis of evaluate's predictions: where wrong queries first leave the "
                            "gold, how errors carry across turns, and (several reports) which turns each gets")
    p.add_argument("reports", nargs="+", metavar="REPORT",
                   help="evaluate output folders (--out DIR, or the run folder) or their predictions.jsonl")
    p.add_argument("--examples", type=int, default=0, metavar="N", help="show N wrong turns of each kind")
    p.add_argument("--top", type=int, default=5, help="details listed per kind (default 5; --json has all)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_analyse)
