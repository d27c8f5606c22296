"""Exact-set-match, partial and execution evaluation in the style of the Spider/SParC/CoSQL reports.

Everything is built on the project's own parser (:func:`text2sql.sql_tokens.parse_sql`), which
already resolves aliases, so a column is always a ``table.column`` unit. Each SELECT block is turned
into a canonical, value-free structure (:func:`components`) and two queries match exactly when
their structures are equal, with these choices (those of the official evaluation with values
disabled):

* select items, conditions, GROUP BY units and FROM tables are compared as (multi)sets, so their
  order does not matter; ORDER BY is an ordered list with directions;
* join conditions and DISTINCT (of the select list or inside an aggregate) are not compared: the
  official script of the SParC and Spider reports that EditSQL's figures come from compares only a
  block's FROM tables and drops DISTINCT (its ``DISABLE_DISTINCT``). ``strict=True`` compares both
  (joins as a set of column pairs): a join on the wrong column, or a missing DISTINCT, changes
  what the query returns, so the strict figure is the one to read for SQL meant to run. It is the
  metric this module had before it followed the official script on these three points (reports
  written then hold strict figures). Later revisions of the official scripts, newer than EditSQL,
  compare a block's first join condition as well;
* literal values (and, as in the official script, any non-subquery right-hand side of a condition)
  are ignored; LIMIT counts by presence only; a subquery is compared recursively;
* the two sides of INTERSECT, UNION and EXCEPT are ordered, as in the official script (the strict
  metric takes INTERSECT's and UNION's as unordered: swapped, they return the same rows);
* columns linked by a foreign key are one column (``concert.stadium_id`` ~ ``stadium.stadium_id``),
  the official script's foreign-key mapping; pass ``fk_map=False`` to turn it off.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
import sqlite3
import time
from collections import Counter
from pathlib import Path

from .errors import DataError
from .schema import Schema, connect_readonly, load_tables
from .sql_tokens import AGGREGATES, Query, Select, Tok, parse_sql

COMPARISONS = {"=", "!=", "<>", "<", ">", "<=", ">="}
ARITH = {"+", "-", "*", "/", "||", "%"}
COND_KWS = {"in", "like", "between", "is", "exists", "glob"}
HARDNESS = ("easy", "medium", "hard", "extra")
# what a report's question and interaction match compare; reports without this key (written before
# it) compared join conditions and DISTINCT as well, the figures a report now keeps under "strict"
METRIC = "official"
PARTIAL_KINDS = ("select", "select(no AGG)", "where", "where(no OP)", "group(no Having)", "group",
                 "order", "and/or", "IUEN", "keywords")


def _key(x):
    return repr(x)


def _mset(items) -> tuple:
    """A hashable multiset: the items sorted by their repr."""
    return tuple(sorted(items, key=_key))


def _set(items) -> tuple:
    return tuple(sorted(set(items), key=_key))


# ------------------------------------------------------------------------------------------
# foreign-key equivalence of columns
# ------------------------------------------------------------------------------------------
_FK_CACHE: dict[int, tuple[Schema, dict[str, str]]] = {}


def _fk_classes(schema: Schema) -> dict[str, str]:
    """unit -> representative unit of its foreign-key class (union-find over the FK pairs)."""
    got = _FK_CACHE.get(id(schema))
    if got is not None and got[0] is schema:
        return got[1]
    parent: dict[str, str] = {}

    def find(u):
        while parent.get(u, u) != u:
            u = parent[u]
        return u

    for a, b in schema.foreign_keys:
        ua, ub = schema.column_unit(a), schema.column_unit(b)
        ra, rb = find(ua), find(ub)
        if ra != rb:
            lo, hi = sorted((ra, rb))
            parent[hi] = lo
    out = {u: find(u) for u in parent}
    _FK_CACHE[id(schema)] = (schema, out)
    return out


class _Ctx:
    def __init__(self, schema: Schema | None, fk_map: bool, strict: bool = False):
        self.schema = schema
        self.fk = _fk_classes(schema) if (schema is not None and fk_map) else {}
        self.strict = strict     # compare join conditions and DISTINCT too (module docstring)

    def unit(self, text: str) -> str:
        return self.fk.get(text, text)


# ------------------------------------------------------------------------------------------
# expressions
# ------------------------------------------------------------------------------------------
def _split_top(toks: list, seps: set[str]) -> list[list]:
    """Split a token list at top-level punctuation/keyword separators (``,``)."""
    parts, cur, depth = [], [], 0
    for t in toks:
        if isinstance(t, Tok) and t.kind == "punct" and t.text == "(":
            depth += 1
        elif isinstance(t, Tok) and t.kind == "punct" and t.text == ")":
            depth -= 1
        if depth == 0 and isinstance(t, Tok) and t.text in seps and t.kind in ("punct", "kw"):
            parts.append(cur)
            cur = []
            continue
        cur.append(t)
    parts.append(cur)
    return parts


class _ExprError(Exception):
    pass


def _expr(toks: list, ctx: _Ctx):
    """Tokens of one expression -> a canonical tuple.

    unit -> "t.c"; star -> "*"; literal -> "value"; subquery -> ("sub", canonical);
    agg(...) -> ("agg", name, distinct, inner); a op b -> ("op", op, a, b) (operands of + and *
    sorted). Anything this small grammar does not cover keeps its value-free token texts.
    """
    try:
        e, i = _parse_sum(toks, 0, ctx)
        if i != len(toks):
            raise _ExprError
        return e
    except (_ExprError, IndexError):
        return ("raw",) + tuple(_raw(t, ctx) for t in toks if ctx.strict or not _is_kw(t, "distinct"))


def _raw(t, ctx):
    if isinstance(t, Query):
        return ("sub", _canonical(t, ctx))
    if t.kind == "unit":
        return ctx.unit(t.text)
    if t.kind == "star":
        return "*"
    if t.kind in ("value", "num"):
        return "value"
    return t.text


def _parse_sum(toks, i, ctx):
    left, i = _parse_term(toks, i, ctx)
    while i < len(toks) and isinstance(toks[i], Tok) and toks[i].kind in ("op", "star") \
            and toks[i].text in ARITH:
        op = toks[i].text
        right, i = _parse_term(toks, i + 1, ctx)
        if op in ("+", "*"):
            left, right = sorted((left, right), key=_key)
        left = ("op", op, left, right)
    return left, i


def _parse_term(toks, i, ctx):
    t = toks[i]
    if isinstance(t, Query):
        return ("sub", _canonical(t, ctx)), i + 1
    if t.kind == "kw" and t.text in AGGREGATES and i + 1 < len(toks) and _is(toks[i + 1], "("):
        j = i + 2
        distinct = False
        if _is_kw(toks[j], "distinct"):
            distinct, j = ctx.strict, j + 1
        inner, j = _parse_sum(toks, j, ctx)
        if not _is(toks[j], ")"):
            raise _ExprError
        return ("agg", t.text, distinct, inner), j + 1
    if _is(t, "("):
        inner, j = _parse_sum(toks, i + 1, ctx)
        if not _is(toks[j], ")"):
            raise _ExprError
        return inner, j + 1
    if t.kind == "unit":
        return ctx.unit(t.text), i + 1
    if t.kind == "star":
        return "*", i + 1
    if t.kind in ("value", "num"):
        return "value", i + 1
    if t.kind == "kw" and t.text == "distinct":
        inner, j = _parse_term(toks, i + 1, ctx)
        return (("distinct", inner) if ctx.strict else inner), j
    raise _ExprError


def _is(t, text):
    return isinstance(t, Tok) and t.kind == "punct" and t.text == text


def _is_kw(t, text):
    return isinstance(t, Tok) and t.kind == "kw" and t.text == text


def _item(expr) -> tuple:
    """(aggregate or None, DISTINCT, inner expression) for a select / order item."""
    if isinstance(expr, tuple) and expr and expr[0] == "agg":
        return (expr[1], expr[2], expr[3])
    if isinstance(expr, tuple) and expr and expr[0] == "distinct":
        return (None, True, expr[1])
    return (None, False, expr)


def _aggs_in(expr) -> int:
    if isinstance(expr, tuple) and expr:
        n = 1 if expr[0] == "agg" else 0
        if expr[0] == "sub":
            return n
        return n + sum(_aggs_in(x) for x in expr[1:])
    return 0


# ------------------------------------------------------------------------------------------
# conditions
# ------------------------------------------------------------------------------------------
def _conditions(toks: list, ctx: _Ctx) -> tuple[list[tuple], list[str], int]:
    """WHERE/HAVING tokens -> (conditions, connectors, number of nested subqueries).

    A condition is (NOT, operator, left expression, right subqueries); literal right sides are
    dropped. The AND of ``BETWEEN a AND b`` is no connector.
    """
    conds, conj = [], []
    cur, depth, between = [], 0, False
    pieces = []
    for t in toks:
        if _is(t, "("):
            depth += 1
        elif _is(t, ")"):
            depth -= 1
        if depth == 0 and isinstance(t, Tok) and t.kind == "kw" and t.text in ("and", "or"):
            if t.text == "and" and between:
                between = False
                cur.append(t)
                continue
            pieces.append(cur)
            conj.append(t.text)
            cur = []
            continue
        if depth == 0 and _is_kw(t, "between"):
            between = True
        cur.append(t)
    pieces.append(cur)
    nested = 0
    for p in pieces:
        c, n = _condition(p, ctx)
        conds.append(c)
        nested += n
    return conds, conj, nested


def _condition(toks: list, ctx: _Ctx) -> tuple[tuple, int]:
    # strip parentheses that wrap the whole condition
    while len(toks) >= 2 and _is(toks[0], "(") and _is(toks[-1], ")") and _balanced(toks[1:-1]):
        toks = toks[1:-1]
    negated = False
    if toks and _is_kw(toks[0], "not"):
        negated, toks = True, toks[1:]
    depth, k = 0, None
    for j, t in enumerate(toks):
        if _is(t, "("):
            depth += 1
        elif _is(t, ")"):
            depth -= 1
        elif depth == 0 and isinstance(t, Tok) and (
                (t.kind == "op" and t.text in COMPARISONS) or (t.kind == "kw" and (t.text in COND_KWS
                                                                                  or t.text == "not"))):
            k = j
            break
    subs = [t for t in toks if isinstance(t, Query)]
    if k is None:
        return (negated, "?", _expr(toks, ctx), _mset(_canonical(s, ctx) for s in subs)), len(subs)
    left, rest = toks[:k], toks[k:]
    ops = []
    for t in rest:
        if isinstance(t, Tok) and ((t.kind == "op" and t.text in COMPARISONS)
                                   or (t.kind == "kw" and t.text in COND_KWS | {"not"})):
            ops.append(t.text)
        else:
            break
    if "not" in ops:
        negated = not negated
        ops = [o for o in ops if o != "not"]
    op = " ".join(ops) or "?"
    if op == "<>":
        op = "!="
    right_subs = _mset(_canonical(t, ctx) for t in rest if isinstance(t, Query))
    lhs = _expr(left, ctx) if left else None
    return (negated, op, lhs, right_subs), len(subs)


def _balanced(toks) -> bool:
    depth = 0
    for t in toks:
        if _is(t, "("):
            depth += 1
        elif _is(t, ")"):
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


# ------------------------------------------------------------------------------------------
# components
# ------------------------------------------------------------------------------------------
def _block(sel: Select, ctx: _Ctx) -> dict:
    cl = sel.clauses
    stoks = list(cl.get("select", []))
    distinct = False
    if stoks and _is_kw(stoks[0], "distinct"):
        distinct, stoks = ctx.strict, stoks[1:]
    items = [_item(_expr(p, ctx)) for p in _split_top(stoks, {","}) if p]

    tables, subs, joins = [], [], set()
    if sel.from_ is not None:
        for it in sel.from_.items:
            if it.sub is not None:
                subs.append(_canonical(it.sub, ctx))
            elif ctx.schema is not None and it.table >= 0:
                tables.append(ctx.schema.table_name(it.table))
            else:
                tables.append(str(it.table))
        for pair in (sel.from_.join_conditions() if ctx.strict else ()):
            joins.add(tuple(sorted(ctx.unit(u) for u in pair)))

    where, wconj, wnest = _conditions(cl["where"], ctx) if cl.get("where") else ([], [], 0)
    having, hconj, hnest = _conditions(cl["having"], ctx) if cl.get("having") else ([], [], 0)
    group = [_expr(p, ctx) for p in _split_top(cl.get("group_by", []), {","}) if p]
    order = []
    for p in _split_top(cl.get("order_by", []), {","}):
        if not p:
            continue
        direction = "asc"
        if isinstance(p[-1], Tok) and p[-1].kind == "kw" and p[-1].text in ("asc", "desc"):
            direction, p = p[-1].text, p[:-1]
        agg, dist, inner = _item(_expr(p, ctx))
        order.append((agg, dist, inner, direction))
    return {
        "select": {"distinct": distinct, "items": _mset(items)},
        "from": {"tables": _mset(tables), "joins": _set(joins), "subqueries": _mset(subs)},
        "where": {"conds": _set(where), "conj": _mset(wconj)},
        "group_by": _set(group),
        "having": {"conds": _set(having), "conj": _mset(hconj)},
        "order_by": tuple(order),
        "limit": "limit" in cl,
        # bookkeeping for hardness (not part of the comparison)
        "_nested": wnest + hnest,
        "_n_where": len(where), "_n_select": len(items), "_n_group": len(group),
        "_ops": [c[1] for c in where + having], "_negs": any(c[0] for c in where + having),
        "_or": wconj.count("or") + hconj.count("or"),
        "_aggs": sum(1 for i in items if i[0]) + sum(_aggs_in(i[2]) for i in items)
        + sum(_aggs_in(c[2]) for c in where + having) + sum(_aggs_in(g) for g in group)
        + sum((1 if o[0] else 0) + _aggs_in(o[2]) for o in order),
        # the aggregate count as the official script computes it: select and GROUP BY
        # aggregates, every ORDER BY operand, and every negated WHERE/HAVING condition
        "_aggs_official": sum(1 for i in items if i[0])
        + sum(1 for g in group if isinstance(g, tuple) and g[:1] == ("agg",))
        + sum(2 if isinstance(o[2], tuple) and o[2][:1] == ("op",) else 1 for o in order)
        + sum(1 for c in where + having if c[0]),
    }


def _public(block: dict) -> dict:
    return {k: v for k, v in block.items() if not k.startswith("_")}


def _freeze(x):
    if isinstance(x, dict):
        return tuple((k, _freeze(v)) for k, v in sorted(x.items()))
    if isinstance(x, (list, tuple)):
        return tuple(_freeze(v) for v in x)
    return x


def _canonical(q: Query, ctx: _Ctx):
    """Hashable canonical form of a whole query (INTERSECT/UNION sides unordered)."""
    left = _freeze(_public(_block(q.select, ctx)))
    if q.op is None:
        return ("block", left)
    right = _canonical(q.right, ctx)
    if q.op in ("intersect", "union") and ctx.strict:
        return (q.op,) + _mset([("block", left), right])
    return (q.op, ("block", left), right)


def components(query: Query, schema: Schema | None = None, fk_map: bool = True,
               strict: bool = False) -> dict:
    """Canonical, value-free, alias-free components of a parsed query (outer block).

    Keys: select {distinct, items: multiset of (agg|None, distinct, expr)}, from {tables, joins,
    subqueries}, where/having {conds: set of (NOT, op, left expr, right subqueries), conj: multiset
    of and/or}, group_by (set), order_by (list of (agg, distinct, expr, asc|desc)), limit (bool),
    iuen (None or {op, right: components of the right-hand query}). Expressions are nested tuples
    (see ``_expr``). ``schema`` gives table names and the foreign-key mapping of columns.
    """
    ctx = _Ctx(schema, fk_map, strict)
    out = _public(_block(query.select, ctx))
    out["iuen"] = None if query.op is None else {"op": query.op,
                                                 "right": components(query.right, schema, fk_map, strict)}
    return out


def canonical(query: Query, schema: Schema | None = None, fk_map: bool = True, strict: bool = False):
    """A hashable form of the whole query: two queries exact-match iff these are equal."""
    return _canonical(query, _Ctx(schema, fk_map, strict))


def matches(gold_sql: str, pred_sql: str, schema: Schema) -> tuple[bool, bool]:
    """(official, strict) exact match of two SQL strings, each parsed once. Raises SQLError when
    either cannot be parsed."""
    g, p = parse_sql(gold_sql, schema), parse_sql(pred_sql, schema)
    return (canonical(g, schema) == canonical(p, schema),
            canonical(g, schema, strict=True) == canonical(p, schema, strict=True))


def exact_match(gold_sql: str, pred_sql: str, schema: Schema, fk_map: bool = True,
                strict: bool = False) -> bool:
    """Exact set match of two SQL strings. Raises SQLError when either cannot be parsed."""
    g = parse_sql(gold_sql, schema)
    p = parse_sql(pred_sql, schema)
    return canonical(g, schema, fk_map, strict) == canonical(p, schema, fk_map, strict)


# ------------------------------------------------------------------------------------------
# partial scores
# ------------------------------------------------------------------------------------------
def _keywords(q: Query, blk: dict) -> set[str]:
    kws = set()
    if blk["where"]["conds"]:
        kws.add("where")
    if blk["group_by"]:
        kws.add("group")
    if blk["having"]["conds"]:
        kws.add("having")
    if blk["order_by"]:
        kws.add("order")
        kws.update(o[3] for o in blk["order_by"])
    if blk["limit"]:
        kws.add("limit")
    if q.op:
        kws.add(q.op)
    if blk["_or"]:
        kws.add("or")
    if blk["_negs"]:
        kws.add("not")
    for op in blk["_ops"]:
        if op in ("in", "like"):
            kws.add(op)
    if blk["select"]["distinct"] or any(i[1] for i in blk["select"]["items"]):
        kws.add("distinct")
    return kws


def _prf(gold_items, pred_items) -> dict:
    g, p = Counter(gold_items), Counter(pred_items)
    ng, np_ = sum(g.values()), sum(p.values())
    hit = sum((g & p).values())
    if ng == 0 and np_ == 0:
        prec = rec = f1 = 1.0
    else:
        prec = hit / np_ if np_ else 0.0
        rec = hit / ng if ng else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"precision": prec, "recall": rec, "f1": f1, "gold": ng, "pred": np_, "match": hit}


def _clause_items(q: Query, ctx: _Ctx) -> dict[str, list]:
    b = _block(q.select, ctx)
    items = b["select"]["items"]
    wh = b["where"]["conds"]
    out = {
        "select": list(items),
        "select(no AGG)": [i[2] for i in items],
        "where": list(wh),
        "where(no OP)": [c[2] for c in wh],
        "group(no Having)": list(b["group_by"]),
        # GROUP BY with HAVING is one unit: right when both the units and HAVING are
        "group": [("group", b["group_by"], b["having"]["conds"])] if b["group_by"] else [],
        "order": [("order", b["order_by"], b["limit"])] if b["order_by"] else [],
        "and/or": [("and/or", _set(b["where"]["conj"]))] if b["where"]["conj"] else [],
        "IUEN": [(q.op, _canonical(q.right, ctx))] if q.op else [],
        "keywords": sorted(_keywords(q, b)),
    }
    if q.op in ("intersect", "union") and out["IUEN"] and ctx.strict:
        out["IUEN"] = [(q.op, _mset([("block", _freeze(_public(b))), _canonical(q.right, ctx)]))]
    return out


def partial_scores(gold: str | Query, pred: str | Query, schema: Schema, fk_map: bool = True,
                   strict: bool = False) -> dict:
    """{clause kind: {precision, recall, f1, gold, pred, match}} for the official clause kinds.

    Items are matched as multisets on the outer block; a kind absent from both queries scores
    1.0 (``gold == pred == 0`` tells such cases apart, and the report leaves them out).
    """
    ctx = _Ctx(schema, fk_map, strict)
    g = parse_sql(gold, schema) if isinstance(gold, str) else gold
    p = parse_sql(pred, schema) if isinstance(pred, str) else pred
    if (strict and g.op == p.op and p.op in ("intersect", "union") and p.right.op is None
            and _freeze(_public(_block(p.right.select, ctx))) == _freeze(_public(_block(g.select, ctx)))):
        p = Query(p.right.select, p.op, Query(p.select))   # the sides are unordered: align them
    gi, pi = _clause_items(g, ctx), _clause_items(p, ctx)
    return {k: _prf(gi[k], pi[k]) for k in PARTIAL_KINDS}


# ------------------------------------------------------------------------------------------
# hardness
# ------------------------------------------------------------------------------------------
def hardness(sql: str | Query, schema: Schema, official: bool = True) -> str:
    """Spider's difficulty level of a query, computed on its outer SELECT block.

    Three counts:

    * c1 (SQL components): +1 each for WHERE, GROUP BY, ORDER BY, LIMIT present; + (number of
      FROM tables - 1) for joins; + the number of OR connectors (WHERE and HAVING); + the number
      of LIKE conditions.
    * c2 (nesting): the number of subqueries in WHERE/HAVING conditions, +1 for an
      INTERSECT/UNION/EXCEPT.
    * others: +1 each when there is more than one aggregate, more than one select column,
      more than one WHERE condition, more than one GROUP BY column. With ``official`` (default)
      the aggregates are counted as the official script does (select and GROUP BY aggregates,
      plus one per ORDER BY operand and per negated WHERE/HAVING condition, a quirk of that
      script), which reproduces the published SParC dev counts to within one query; with
      ``official=False`` every aggregate function in select, WHERE, GROUP BY, HAVING and
      ORDER BY counts, as the paper describes.

    Level: easy if c1 <= 1 and others == 0 and c2 == 0; medium if c2 == 0 and (others <= 2 and
    c1 <= 1, or c1 <= 2 and others < 2); hard if (c2 == 0 and (others > 2 and c1 <= 2, or
    2 < c1 <= 3 and others <= 2)) or (c1 <= 1 and others == 0 and c2 <= 1); else extra.
    """
    q = parse_sql(sql, schema) if isinstance(sql, str) else sql
    b = _block(q.select, _Ctx(schema, True))
    c1 = sum(bool(x) for x in (b["where"]["conds"], b["group_by"], b["order_by"], b["limit"]))
    c1 += max(0, len(b["from"]["tables"]) + len(b["from"]["subqueries"]) - 1)
    c1 += b["_or"]
    c1 += sum(1 for op in b["_ops"] if op == "like")
    c2 = b["_nested"] + (1 if q.op else 0)
    aggs = b["_aggs_official" if official else "_aggs"]
    others = sum((aggs > 1, b["_n_select"] > 1, b["_n_where"] > 1, b["_n_group"] > 1))
    if c1 <= 1 and others == 0 and c2 == 0:
        return "easy"
    if c2 == 0 and ((others <= 2 and c1 <= 1) or (c1 <= 2 and others < 2)):
        return "medium"
    if (c2 == 0 and ((others > 2 and c1 <= 2) or (2 < c1 <= 3 and others <= 2))) or \
            (c1 <= 1 and others == 0 and c2 <= 1):
        return "hard"
    return "extra"


# ------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------
def _blocks_of_lines(path) -> list[list[str]]:
    out, cur = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line.strip():
                if cur:
                    out.append(cur)
                    cur = []
                continue
            cur.append(line)
    if cur:
        out.append(cur)
    return out


def read_gold(path) -> list[list[tuple[str, str]]]:
    """``SQL<TAB>db_id`` lines, a blank line between interactions -> [[(sql, db_id), ...], ...]."""
    out = []
    for block in _blocks_of_lines(path):
        inter = []
        for line in block:
            if "\t" not in line:
                raise DataError(f"gold line without a TAB and db_id: {line!r}", file=path)
            sql, db = line.rsplit("\t", 1)
            inter.append((sql.strip(), db.strip()))
        out.append(inter)
    return out


def read_predictions(path) -> list[list[str]]:
    """One SQL per line, a blank line between interactions -> [[sql, ...], ...]."""
    return [[line.strip() for line in block] for block in _blocks_of_lines(path)]


def _write_blocks(path, interactions) -> None:
    """One line per turn, a blank line after each interaction."""
    with open(path, "w", encoding="utf-8") as f:
        for inter in interactions:
            for line in inter:
                f.write(line + "\n")
            f.write("\n")


EMPTY_PREDICTION = "<empty prediction>"


def write_predictions(path, interactions) -> None:
    """The inverse of :func:`read_predictions` (newlines inside a query become spaces). An empty
    query (a decoder that stopped at once) is written as ``EMPTY_PREDICTION``, which no reader
    parses, instead of a blank line, which would end the interaction there and shift every later
    turn of the file onto the wrong gold query."""
    _write_blocks(path, [[" ".join(str(sql).split()) or EMPTY_PREDICTION for sql in inter]
                         for inter in interactions])


def write_gold(path, interactions) -> None:
    """The inverse of :func:`read_gold`: ``[[(sql, db_id), ...], ...]`` -> ``SQL<TAB>db_id`` lines."""
    _write_blocks(path, [[f"{' '.join(sql.split())}\t{db}" for sql, db in inter] for inter in interactions])


# ------------------------------------------------------------------------------------------
# execution
# ------------------------------------------------------------------------------------------
_ORDER_BY = re.compile(r"\border\s+by\b", re.I)


@contextmanager
def time_limit(con: sqlite3.Connection, timeout: float):
    """Abort whatever ``con`` runs inside the block once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    con.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 1000)
    try:
        yield con
    finally:
        con.set_progress_handler(None, 0)


def _run(con: sqlite3.Connection, sql: str, timeout: float) -> list:
    with time_limit(con, timeout):
        return con.execute(sql).fetchall()


def execution_match(gold_sql: str, pred_sql: str, db_path, timeout: float = 5.0) -> bool | None:
    """Do gold and prediction give the same rows on the database at ``db_path``?

    Rows are compared as multisets, or as lists when the gold has ORDER BY. Each query runs
    read-only and is aborted after ``timeout`` seconds. None when the database file is absent or
    the gold itself fails; False when the prediction fails or runs out of time.
    """
    p = Path(db_path)
    if not p.is_file():
        return None
    con = connect_readonly(p)
    con.text_factory = lambda b: b.decode("utf-8", errors="replace")
    try:
        try:
            gold = _run(con, gold_sql, timeout)
        except Exception:
            return None
        try:
            pred = _run(con, pred_sql, timeout)
        except Exception:
            return False
    finally:
        con.close()
    if _ORDER_BY.search(gold_sql):
        return gold == pred
    return Counter(gold) == Counter(pred)


# ------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------
def _turn_key(t: int) -> str:
    return str(t) if t <= 3 else "4+"


def evaluate_files(gold_path, pred_path, tables_path, db_dir=None, timeout: float = 5.0,
                   turns: list | None = None) -> dict:
    """Score a prediction file against a gold file (official formats). Percentages 0-100.

    Prediction interactions and turns are aligned by position; a missing one is wrong, and
    ``misaligned`` says where the files stop lining up (None where they do). A
    prediction or gold that cannot be parsed is wrong and listed under ``unparsable``. With
    ``db_dir`` (``db_dir/<db_id>/<db_id>.sqlite``), ``exec_acc`` is over the questions whose
    gold runs. ``question_match`` and ``interaction_match`` are the official metric's; ``strict``
    holds the same figures with join conditions and DISTINCT compared too (module docstring).
    ``turns``: a list that gets each gold turn's ``(official, strict)`` match, in file order, so a
    caller with per-turn rows need not parse every query a second time.
    """
    return score_interactions(read_gold(gold_path), read_predictions(pred_path), load_tables(tables_path),
                              db_dir, timeout, turns)


def score_interactions(gold: list[list[tuple[str, str]]], preds: list[list[str]], schemas: dict,
                       db_dir=None, timeout: float = 5.0, turns: list | None = None) -> dict:
    """``evaluate_files`` on what ``read_gold``, ``read_predictions`` and ``load_tables`` read."""
    levels = HARDNESS + ("all",)
    by_h = {h: {"count": 0, "exact": 0, "exec": 0, "_exec_n": 0} for h in levels}
    by_t: dict[str, dict] = {}
    partial_sum = {k: 0.0 for k in PARTIAL_KINDS}
    partial_n = {k: 0 for k in PARTIAL_KINDS}
    unparsable = []
    n_q = n_right = n_inter_right = n_strict = n_inter_strict = 0
    for ii, inter in enumerate(gold):
        pinter = preds[ii] if ii < len(preds) else []
        all_right = all_strict = True
        for ti, (gsql, db) in enumerate(inter):
            n_q += 1
            psql = pinter[ti] if ti < len(pinter) else None
            schema = schemas.get(db)
            right, strict, level, ex = False, False, None, None
            gq = pq = None
            if schema is None:
                unparsable.append({"interaction": ii, "turn": ti, "sql": gsql,
                                   "reason": f"gold: unknown database {db!r}"})
            else:
                try:
                    gq = parse_sql(gsql, schema)
                    level = hardness(gq, schema)
                except Exception as e:
                    unparsable.append({"interaction": ii, "turn": ti, "sql": gsql,
                                       "reason": f"gold: {e}"})
                if psql is None:
                    pass
                else:
                    try:
                        pq = parse_sql(psql, schema)
                    except Exception as e:
                        unparsable.append({"interaction": ii, "turn": ti, "sql": psql,
                                           "reason": f"prediction: {e}"})
                if gq is not None and pq is not None:
                    right = canonical(gq, schema) == canonical(pq, schema)
                    strict = canonical(gq, schema, strict=True) == canonical(pq, schema, strict=True)
                    ps = partial_scores(gq, pq, schema)
                    for k, v in ps.items():
                        if v["gold"] or v["pred"]:
                            partial_sum[k] += v["f1"]
                            partial_n[k] += 1
                if db_dir is not None:
                    dbp = Path(db_dir) / db / f"{db}.sqlite"
                    ex = execution_match(gsql, psql, dbp, timeout) if psql is not None else \
                        (None if execution_match(gsql, "SELECT 1", dbp, timeout) is None else False)
            if turns is not None:
                turns.append((bool(right), bool(strict)))
            n_right += right
            all_right &= right
            n_strict += strict
            all_strict &= strict
            for h in ([level] if level else []) + ["all"]:
                by_h[h]["count"] += 1
                by_h[h]["exact"] += right
                if ex is not None:
                    by_h[h]["_exec_n"] += 1
                    by_h[h]["exec"] += ex
            tk = _turn_key(ti + 1)
            by_t.setdefault(tk, {"count": 0, "exact": 0, "strict": 0})
            by_t[tk]["count"] += 1
            by_t[tk]["exact"] += right
            by_t[tk]["strict"] += strict
        n_inter_right += all_right
        n_inter_strict += all_strict

    def pct(a, b):
        return 100.0 * a / b if b else 0.0

    for h, d in by_h.items():
        d["exact"] = pct(d["exact"], d["count"])
        en = d.pop("_exec_n")
        d["exec"] = pct(d["exec"], en) if (db_dir is not None and en) else None
    for d in by_t.values():
        d["exact"] = pct(d["exact"], d["count"])
        d["strict"] = pct(d["strict"], d["count"])
    order = sorted(by_t, key=lambda k: (k.endswith("+"), k))
    return {
        "question_match": pct(n_right, n_q),
        "interaction_match": pct(n_inter_right, len(gold)),
        "metric": METRIC,
        "strict": {"question_match": pct(n_strict, n_q), "interaction_match": pct(n_inter_strict, len(gold))},
        "exec_acc": by_h["all"]["exec"],
        "questions": n_q,
        "interactions": len(gold),
        "by_hardness": by_h,
        "by_turn": {k: by_t[k] for k in order},
        "partial": {k: (100.0 * partial_sum[k] / partial_n[k] if partial_n[k] else None)
                    for k in PARTIAL_KINDS},
        "unparsable": unparsable,
        "misaligned": misalignment(gold, preds),
    }


def misalignment(gold: list[list], preds: list[list]) -> str | None:
    """Where a prediction file stops lining up with its gold, in one line (None where it does):
    a missing or extra blank line shifts every later interaction, and the score of a shifted file
    would pass for a real one."""
    n_g, n_p = sum(map(len, gold)), sum(map(len, preds))
    for i, (g, p) in enumerate(zip(gold, preds)):
        if len(g) != len(p):
            return (f"the predictions do not line up with the gold: interaction {i} has {len(p)} "
                    f"predicted turn(s) for {len(g)} gold ({n_p} predictions for {n_g} gold turns in all; "
                    "a missing one counts as wrong)")
    if len(gold) != len(preds):
        return (f"the predictions hold {len(preds)} interaction(s), the gold {len(gold)} ({n_p} "
                f"predictions for {n_g} gold turns; a missing one counts as wrong, an extra one is ignored)")
    return None
