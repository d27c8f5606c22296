"""SQL <-> target token sequences.

The decoder emits two kinds of tokens: *keyword tokens* (SQL keywords, operators, punctuation,
aggregates, the value placeholder, LIMIT numbers) drawn from a vocabulary, and *DB-unit tokens*
(``table.column``, ``table.*``, ``table``) pointed at in the schema. This module turns gold SQL
into such a sequence and back:

    sql string --lex (sqlparse)--> Tok list --parse--> Query tree (aliases resolved to units)
    Query tree --to_tokens(style)--> target tokens      (style "full", "nofrom" or "nofrom_tables")
    target tokens --parse--> Query tree --restore_from--> Query tree --to_sql--> sql string

Two target styles:
* ``full``: the whole query; FROM lists tables as units, joins keep their ON conditions, aliases
  are dropped (``select singer.name from singer join concert on singer.id = concert.sid``).
* ``nofrom`` (EditSQL's ``--remove_from``): every SELECT block loses its FROM clause; it is
  rebuilt by ``restore_from`` from the tables the block's units name, joined along the shortest
  paths of the foreign-key graph. Two choices make the round trip much less lossy than EditSQL's:
  a bare ``*`` becomes the star of a FROM table (``count ( concert.* )``), preferably one that no
  other unit of the block names, so ``SELECT count(*) FROM concert`` keeps its table; and a FROM
  table that neither the units nor the join paths between them would bring back is kept as a
  short ``from`` hint listing only such tables (no joins, no aliases).
* ``nofrom_tables`` (``--remove_from --keep_from tables``): as ``nofrom``, but a FROM clause is
  kept only where restoration would rebuild other *tables*; one it would rebuild with the same
  tables joined on other columns is dropped. That is what the official metric compares; the
  restored SQL may then join on the wrong column (a flight's source airport for its destination).
"""
from __future__ import annotations

import functools
import re
import sqlite3
from dataclasses import dataclass, field

import sqlparse.lexer
from sqlparse import tokens as T

from .errors import DataError
from .schema import Schema

VALUE = "value"                                   # the placeholder for a literal value
CLAUSES = ("select", "where", "group_by", "having", "order_by", "limit")
SET_OPS = ("intersect", "union", "except")
AGGREGATES = ("count", "sum", "avg", "min", "max")
KEYWORDS = {
    "select", "from", "where", "group_by", "having", "order_by", "limit", "join", "on", "as",
    "and", "or", "not", "in", "like", "between", "is", "null", "distinct", "asc", "desc",
    "exists", "all", "intersect", "union", "except", "inner", "left", "right", "outer", "cross",
    "case", "when", "then", "else", "end", "cast", "glob", *AGGREGATES,
}
OPERATORS = {"=", "!=", "<>", "<", ">", "<=", ">=", "+", "-", "*", "/", "||", "%"}
PUNCT = {"(", ")", ","}
# how keyword tokens are spelled back in SQL
SQL_SPELLING = {"group_by": "GROUP BY", "order_by": "ORDER BY"}


@dataclass
class Tok:
    kind: str         # kw | op | punct | name | unit | star | value | num
    text: str         # kw/op/punct: canonical lower-case text; name: raw identifier(s); unit: unit
    raw: str = ""     # literal text of a value or number, as written
    table: int = -1   # unit: table index; star: table index or -1 for a bare "*"
    alias: str = ""   # name: the qualifier as written (T1 in T1.name)

    def __repr__(self):
        return f"{self.kind}:{self.text}"


@dataclass
class FromItem:
    table: int = -1                   # table index, or -1 for a subquery
    sub: "Query | None" = None
    alias: str = ""
    on: list | None = None            # tokens of the ON clause that follows this item


@dataclass
class FromClause:
    items: list[FromItem] = field(default_factory=list)

    @property
    def on(self) -> list[list]:
        return [it.on for it in self.items if it.on]

    def tables(self) -> list[int]:
        return [it.table for it in self.items if it.sub is None]

    def join_conditions(self) -> set[frozenset]:
        """{ {unit a, unit b} } for each ``a = b`` between two columns in the ON clauses."""
        out = set()
        for toks in self.on:
            for i in range(1, len(toks) - 1):
                a, op, b = toks[i - 1], toks[i], toks[i + 1]
                if (isinstance(a, Tok) and isinstance(b, Tok) and isinstance(op, Tok)
                        and op.text == "=" and a.kind == "unit" and b.kind == "unit"):
                    out.add(frozenset((a.text, b.text)))
        return out


@dataclass
class Select:
    clauses: dict[str, list] = field(default_factory=dict)   # clause -> [Tok | Query]
    from_: FromClause | None = None


@dataclass
class Query:
    select: Select
    op: str | None = None             # intersect / union / except
    right: "Query | None" = None

    def blocks(self):
        """Every SELECT block, outer first, depth-first in text order."""
        yield self.select
        for toks in list(self.select.clauses.values()) + (self.select.from_.on if self.select.from_ else []):
            for t in toks:
                if isinstance(t, Query):
                    yield from t.blocks()
        if self.select.from_:
            for it in self.select.from_.items:
                if it.sub is not None:
                    yield from it.sub.blocks()
        if self.right is not None:
            yield from self.right.blocks()


class SQLError(DataError):
    pass


# ------------------------------------------------------------------------------------------
# lexing
# ------------------------------------------------------------------------------------------
_NUM = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")


def lex(sql: str) -> list[Tok]:
    """SQL text -> Tok list (sqlparse's lexer; qualified names merged, keywords canonical)."""
    out: list[Tok] = []
    try:
        stream = list(sqlparse.lexer.tokenize(sql))
    except Exception as e:  # sqlparse raises little, but never let it escape as a traceback
        raise SQLError(f"sqlparse cannot split the query: {e}") from None
    i = 0
    while i < len(stream):
        ttype, v = stream[i]
        i += 1
        if ttype in T.Whitespace or ttype in T.Newline or ttype in T.Comment:
            continue
        low = v.lower()
        if v == "!":
            j = i
            while j < len(stream) and stream[j][1].isspace():
                j += 1
            if j < len(stream) and stream[j][1] == "=":
                out.append(Tok("op", "!="))    # "! =" occurs in SParC gold
                i = j + 1
                continue
        if ttype in T.Error:
            raise SQLError(f"sqlparse cannot split the query at {v!r}")
        if ttype in T.Punctuation and v == ";":
            continue
        if ttype in T.Punctuation and v == "." and out and out[-1].kind == "name":
            # T1 . name -> one qualified name
            j = i
            while j < len(stream) and stream[j][0] in T.Whitespace:
                j += 1
            if j < len(stream) and stream[j][1] == "*":
                out[-1] = Tok("star", "*", alias=out[-1].text)
                i = j + 1
                continue
            if j < len(stream):
                nxt = stream[j][1]
                out[-1] = Tok("name", _unquote_ident(nxt), alias=out[-1].text)
                i = j + 1
                continue
        if ttype in T.String:
            if ttype in T.String.Symbol and v.startswith("`"):
                out.append(Tok("name", _unquote_ident(v)))
            else:
                out.append(Tok("value", VALUE, raw=v))
            continue
        if ttype in T.Number or _NUM.match(v):
            out.append(Tok("num", VALUE, raw=v))
            continue
        if ttype in T.Wildcard or v == "*":
            out.append(Tok("star", "*"))
            continue
        if ttype in T.Punctuation and v in PUNCT:
            out.append(Tok("punct", v))
            continue
        if ttype in T.Operator or ttype in T.Operator.Comparison or v in OPERATORS:
            if low in ("like", "in", "is", "not", "and", "or", "between", "glob"):
                out.append(Tok("kw", low))
            elif low == "not like":
                out += [Tok("kw", "not"), Tok("kw", "like")]
            elif low == "==":
                out.append(Tok("op", "="))
            elif low in OPERATORS:
                out.append(Tok("op", low))
            else:
                raise SQLError(f"unknown operator {v!r}")
            continue
        if ttype in T.Name and v[:1] in "`[\"":
            out.append(Tok("name", _unquote_ident(v)))
            continue
        if ttype in T.Keyword or ttype in T.Name or ttype in T.Name.Builtin:
            words = low.split()
            if len(words) > 1:   # sqlparse folds "GROUP BY", "NOT NULL", "LEFT OUTER JOIN"...
                if words in (["group", "by"], ["order", "by"]):
                    out.append(Tok("kw", "_".join(words)))
                elif all(w in KEYWORDS for w in words):
                    out += [Tok("kw", w) for w in words]
                else:
                    raise SQLError(f"unsupported keyword {v!r}")
                continue
            if low in KEYWORDS and not _followed_by_dot(stream, i):
                # a column called "year" or "name" is lexed as a keyword by some versions: it is a
                # name unless it is one of ours and is used as one
                out.append(Tok("kw", low))
            else:
                out.append(Tok("name", _unquote_ident(v)))
            continue
        if ttype in T.Punctuation:
            raise SQLError(f"unexpected punctuation {v!r}")
        raise SQLError(f"cannot read {v!r}")
    return out


def _followed_by_dot(stream, i):
    return i < len(stream) and stream[i][1] == "."


def _unquote_ident(v: str) -> str:
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "`\"":
        return v[1:-1].replace(v[0] * 2, v[0])   # a doubled quote inside stands for one
    if len(v) >= 2 and v[0] == "[" and v[-1] == "]":
        return v[1:-1]
    return v


# ------------------------------------------------------------------------------------------
# parsing (shared by SQL text and target tokens)
# ------------------------------------------------------------------------------------------
class _Parser:
    def __init__(self, toks: list[Tok]):
        self.toks = toks
        self.i = 0

    def peek(self, k=0) -> Tok | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def is_(self, tok, kind, text=None):
        return tok is not None and tok.kind == kind and (text is None or tok.text == text)

    def query(self) -> Query:
        if not self.is_(self.peek(), "kw", "select"):
            got = self.peek()
            raise SQLError(f"expected SELECT, got {got.text if got else 'end of query'}")
        sel = self.select()
        t = self.peek()
        if self.is_(t, "kw") and t.text in SET_OPS:
            self.i += 1
            return Query(sel, t.text, self.query())
        return Query(sel)

    def select(self) -> Select:
        sel = Select()
        self.i += 1  # select
        clause = "select"
        sel.clauses[clause] = []
        depth = 0
        while self.i < len(self.toks):
            t = self.peek()
            if t.kind == "kw" and t.text in SET_OPS and depth == 0:
                break
            if t.kind == "punct" and t.text == ")" and depth == 0:
                break
            if t.kind == "kw" and t.text == "from" and depth == 0:
                self.i += 1
                sel.from_ = self.from_clause()
                continue
            if t.kind == "kw" and t.text in CLAUSES and t.text != "select" and depth == 0:
                clause = t.text
                if clause in sel.clauses:
                    raise SQLError(f"clause {clause.upper()} appears twice in one SELECT")
                sel.clauses[clause] = []
                self.i += 1
                continue
            if t.kind == "punct" and t.text == "(" and self.is_(self.peek(1), "kw", "select"):
                self.i += 1
                sub = self.query()
                self.expect(")")
                sel.clauses[clause].append(sub)
                continue
            if t.kind == "punct" and t.text == "(":
                depth += 1
            elif t.kind == "punct" and t.text == ")":
                depth -= 1
            sel.clauses[clause].append(t)
            self.i += 1
        if depth != 0:
            raise SQLError("unbalanced parentheses")
        if not sel.clauses["select"]:
            raise SQLError("empty SELECT list")
        return sel

    def expect(self, text):
        t = self.peek()
        if t is None or t.text != text:
            raise SQLError(f"expected {text!r}, got {t.text if t else 'end of query'!r}")
        self.i += 1

    def from_clause(self) -> FromClause:
        fc = FromClause()
        while True:
            t = self.peek()
            if self.is_(t, "punct", "(") and self.is_(self.peek(1), "kw", "select"):
                self.i += 1
                sub = self.query()
                self.expect(")")
                item = FromItem(sub=sub)
            elif t is not None and t.kind in ("name", "unit"):
                item = FromItem(table=t.table if t.kind == "unit" else -1, alias="")
                item._name = t.text  # resolved later for SQL text
                self.i += 1
            else:
                raise SQLError(f"expected a table in FROM, got {t.text if t else 'end of query'!r}")
            if self.is_(self.peek(), "kw", "as"):
                self.i += 1
                a = self.peek()
                if a is None or a.kind != "name":
                    raise SQLError("expected an alias after AS")
                item.alias = a.text
                self.i += 1
            elif self.is_(self.peek(), "name"):   # FROM singer T1
                item.alias = self.peek().text
                self.i += 1
            fc.items.append(item)
            t = self.peek()
            if self.is_(t, "kw", "on"):
                self.i += 1
                item.on = self.on_condition()
                t = self.peek()
            if self.is_(t, "punct", ","):
                self.i += 1
                continue
            if self.is_(t, "kw") and t.text in ("join", "inner", "left", "right", "outer", "cross"):
                while self.is_(self.peek(), "kw") and self.peek().text in ("inner", "left", "right",
                                                                           "outer", "cross"):
                    self.i += 1
                self.expect("join")
                continue
            return fc

    def on_condition(self) -> list:
        toks = []
        while True:
            t = self.peek()
            if t is None:
                break
            if t.kind == "kw" and (t.text in CLAUSES or t.text in SET_OPS or t.text in
                                   ("join", "inner", "left", "right", "cross")):
                break
            if t.kind == "punct" and t.text in (")", ","):
                break
            toks.append(t)
            self.i += 1
        if not toks:
            raise SQLError("empty ON condition")
        return toks


# ------------------------------------------------------------------------------------------
# alias and column resolution
# ------------------------------------------------------------------------------------------
def _resolve(query: Query, schema: Schema, outer: list[list[tuple[str, int]]]):
    sel = query.select
    scope: list[tuple[str, int]] = []     # (alias or table name, table index) of this block
    if sel.from_ is not None:
        for it in sel.from_.items:
            if it.sub is not None:
                _resolve(it.sub, schema, outer)
                continue
            ti = schema.table_index(it._name)
            if ti is None:
                raise SQLError(f"table {it._name!r} is not in database {schema.db_id}")
            it.table = ti
            scope.append(((it.alias or it._name).lower(), ti))
            if it.alias:
                scope.append((it._name.lower(), ti))
    scopes = [scope] + outer

    def table_of_alias(alias: str) -> int | None:
        for sc in scopes:
            for name, ti in sc:
                if name == alias.lower():
                    return ti
        ti = schema.table_index(alias)  # a qualifier naming a table outside FROM (seen in gold)
        return ti

    def fix(toks: list):
        for k, t in enumerate(toks):
            if isinstance(t, Query):
                _resolve(t, schema, scopes)
            elif t.kind == "name":
                toks[k] = _resolve_column(t, schema, scopes, table_of_alias)
            elif t.kind == "star" and t.alias:
                ti = table_of_alias(t.alias)
                if ti is None:
                    raise SQLError(f"unknown table or alias {t.alias!r} in {t.alias}.*")
                toks[k] = Tok("star", "*", table=ti)
            elif t.kind == "star" and t.table < 0 and scope:
                # a bare * belongs to this block's tables: remember the first for nofrom
                toks[k] = Tok("star", "*", table=-1)

    for toks in sel.clauses.values():
        fix(toks)
    if sel.from_ is not None:
        for toks in sel.from_.on:
            fix(toks)
    if query.right is not None:
        _resolve(query.right, schema, outer)


def _resolve_column(t: Tok, schema: Schema, scopes, table_of_alias) -> Tok:
    if t.alias:
        ti = table_of_alias(t.alias)
        if ti is None:
            # gold sometimes qualifies with an alias its block never declares (T1.id FROM battle):
            # the bare column still names exactly one FROM table there
            for sc in scopes:
                hits = [tj for _, tj in sc if schema.column_index(tj, t.text) is not None]
                if hits:
                    ci = schema.column_index(hits[0], t.text)
                    return Tok("unit", schema.column_unit(ci), table=hits[0])
            raise SQLError(f"unknown table or alias {t.alias!r} in {t.alias}.{t.text}")
        ci = schema.column_index(ti, t.text)
        if ci is None:
            raise SQLError(f"column {t.alias}.{t.text} is not in table {schema.table_name(ti)} "
                           f"of database {schema.db_id}")
        return Tok("unit", schema.column_unit(ci), table=ti)
    for sc in scopes:
        for _, ti in sc:
            ci = schema.column_index(ti, t.text)
            if ci is not None:
                return Tok("unit", schema.column_unit(ci), table=ti)
    raise SQLError(f"column {t.text!r} is not in the FROM tables of database {schema.db_id}")


def parse_sql(sql: str, schema: Schema) -> Query:
    """Gold SQL text -> Query tree with every column resolved to a DB unit. Raises SQLError."""
    toks = lex(sql)
    if not toks:
        raise SQLError("empty query")
    p = _Parser(toks)
    q = p.query()
    if p.i != len(toks):
        raise SQLError(f"unexpected {toks[p.i].text!r} after the end of the query")
    _resolve(q, schema, [])
    return q


# ------------------------------------------------------------------------------------------
# Query tree -> target tokens
# ------------------------------------------------------------------------------------------
def to_tokens(q: Query, schema: Schema, style: str = "full", values: str = "placeholder") -> list[str]:
    """Target token sequence (without the end token). ``values``: placeholder | literal."""
    if style not in ("full", "nofrom", "nofrom_tables", "nofrom_all"):
        raise ValueError(f"unknown target style {style!r}")
    out: list[str] = []
    _emit_query(q, schema, style, values, out)
    return out


def _emit_query(q: Query, schema, style, values, out):
    _emit_select(q.select, schema, style, values, out)
    if q.op:
        out.append(q.op)
        _emit_query(q.right, schema, style, values, out)


def _block_units(sel: Select, star: int = -1) -> list[int]:
    """Tables named by units of this block (not its subqueries), in order of appearance.

    A bare ``*`` counts as ``star`` (the table the nofrom style will write it as), if given.
    """
    seen = []
    for toks in sel.clauses.values():
        for t in toks:
            if not isinstance(t, Tok):
                continue
            tab = t.table if t.kind == "unit" else (t.table if t.table >= 0 else star) \
                if t.kind == "star" else -1
            if tab >= 0 and tab not in seen:
                seen.append(tab)
    return seen


def _star_table(sel: Select, schema: Schema | None = None) -> int:
    """Which FROM table a bare ``*`` stands for in the nofrom style.

    Preferably a FROM table that no unit names (``count(*) FROM concert``), so that the star
    brings it back: the first such table, in schema order, whose choice lets restoration rebuild
    the gold FROM; when every table is named, the table of the first unit. Neither choice depends
    on the order of the FROM clause, so it survives a round trip through restored SQL.
    """
    tables = sel.from_.tables() if sel.from_ else []
    if not tables:
        return -1
    used = _block_units(sel)
    unnamed = sorted(set(t for t in tables if t not in used))
    if not unnamed:
        return used[0]
    if schema is not None and len(unnamed) > 1:
        for t in unnamed:
            if _same_from(sel.from_, restored_from(sel, schema, star=t)):
                return t
    return unnamed[0]


def _same_from(gold: FromClause, new: FromClause) -> bool:
    return (sorted(gold.tables()) == sorted(new.tables())
            and gold.join_conditions() == new.join_conditions())


def _emit_select(sel: Select, schema, style, values, out):
    star = _star_table(sel, schema) if style != "full" else -1
    order = [c for c in CLAUSES if c in sel.clauses]
    for clause in order:
        out.append(clause)
        _emit_toks(sel.clauses[clause], schema, style, values, out, star, clause)
        if clause == "select" and sel.from_ is not None:
            if style == "full" or _needs_from(sel, schema, keep_unrestorable=style in ("nofrom", "nofrom_tables"),
                                              tables_only=style == "nofrom_tables"):
                _emit_from(sel, schema, style, values, out, star)


def _needs_from(sel: Select, schema: Schema, keep_unrestorable: bool = True, tables_only: bool = False) -> bool:
    """nofrom keeps a block's FROM only where ``restore_from`` would not rebuild it exactly;
    nofrom_tables (``tables_only``) only where it would not rebuild its tables (as a multiset)."""
    fc = sel.from_
    if any(it.sub is not None for it in fc.items):
        return True    # a subquery in FROM cannot be inferred from units
    if not keep_unrestorable:
        return False
    if tables_only:
        return sorted(fc.tables()) != sorted(restored_from(sel, schema).tables())
    return not _restorable(sel, schema)


def restored_from(sel: Select, schema: Schema, star: int | None = None) -> FromClause:
    """The FROM clause ``restore_from`` builds for this block from its units alone."""
    if star is None:
        star = _star_table(sel, schema)
    return _build_from(_block_units(sel, star), schema)


def _restorable(sel: Select, schema: Schema) -> bool:
    return _same_from(sel.from_, restored_from(sel, schema))


def _emit_from(sel: Select, schema, style, values, out, star):
    fc = sel.from_
    out.append("from")
    for k, it in enumerate(fc.items):
        if k > 0:
            out.append("join")
        if it.sub is not None:
            out.append("(")
            _emit_query(it.sub, schema, style, values, out)
            out.append(")")
        else:
            out.append(schema.table_name(it.table))
        if it.on:
            out.append("on")
            _emit_toks(it.on, schema, style, values, out, star, "on")


def _emit_toks(toks, schema, style, values, out, star, clause):
    for t in toks:
        if isinstance(t, Query):
            out.append("(")
            _emit_query(t, schema, style, values, out)
            out.append(")")
        elif t.kind == "unit":
            out.append(t.text)
        elif t.kind == "star":
            tab = t.table if t.table >= 0 else star
            if style != "full" and tab >= 0:
                out.append(f"{schema.table_name(tab)}.*")
            else:
                out.append("*")
        elif t.kind in ("value", "num"):
            if clause == "limit" and t.kind == "num":
                out.append(t.raw)           # LIMIT 3 is part of the query's meaning
            elif values == "literal":
                out.append(t.raw)
            else:
                out.append(VALUE)
        else:
            out.append(t.text)


# ------------------------------------------------------------------------------------------
# target tokens -> Query tree, FROM restoration, SQL text
# ------------------------------------------------------------------------------------------
def tokens_to_query(tokens: list[str], schema: Schema) -> Query:
    """Parse a target token sequence (either style) back into a Query tree."""
    toks = []
    for s in tokens:
        low = s.lower()
        if low in KEYWORDS or low in SQL_SPELLING:
            toks.append(Tok("kw", low))
        elif low in OPERATORS and low != "*":
            toks.append(Tok("op", low))
        elif low == "*":
            toks.append(Tok("star", "*"))
        elif low in PUNCT:
            toks.append(Tok("punct", low))
        elif low == VALUE:
            toks.append(Tok("value", VALUE, raw=VALUE))
        elif low.endswith(".*") and schema.table_index(low[:-2]) is not None:
            toks.append(Tok("star", "*", table=schema.table_index(low[:-2])))
        elif schema.unit_index(low) is not None:
            ui = schema.unit_index(low)
            toks.append(Tok("unit", low, table=schema.unit_table[ui]))
        elif _NUM.match(s) or (len(s) >= 2 and s[0] in "'\"" and s[-1] == s[0]):
            toks.append(Tok("num" if _NUM.match(s) else "value", VALUE, raw=s))
        else:
            raise SQLError(f"unknown token {s!r} for database {schema.db_id}")
    if not toks:
        raise SQLError("empty token sequence")
    p = _Parser(toks)
    q = p.query()
    if p.i != len(toks):
        raise SQLError(f"unexpected token {toks[p.i].text!r}")
    for block in q.blocks():
        if block.from_ is not None:
            for it in block.from_.items:
                if it.sub is None:
                    it.table = schema.table_index(it._name)
                    if it.table is None:
                        raise SQLError(f"{it._name!r} is not a table of {schema.db_id}")
    return q


def join_tree(tables: list[int], schema: Schema) -> tuple[list[int], list[tuple[int, int, int, int]]]:
    """Connect ``tables`` through the FK graph: greedy shortest paths from the tree built so far.

    Returns (table order, edges (t1, c1, t2, c2)); a table no path reaches joins without ON.
    """
    if not tables:
        return [], []
    order = [tables[0]]
    edges = []
    for t in tables[1:]:
        if t in order:
            continue
        best = None
        for src in order:
            path = schema.shortest_path(src, t)
            if path is not None and (best is None or len(path) < len(best)):
                best = path
        if best is None:
            order.append(t)
            continue
        for e in best:
            if e[2] not in order:
                order.append(e[2])
                edges.append(e)
            elif e[0] not in order:
                order.append(e[0])
                edges.append(e)
    return order, edges


def _build_from(tables: list[int], schema: Schema) -> FromClause:
    order, edges = join_tree(tables, schema)
    new = FromClause()
    items = {}
    for t in order:
        it = FromItem(table=t)
        it._name = schema.table_name(t)
        items[t] = it
        new.items.append(it)
    for t1, c1, t2, c2 in edges:
        # join_tree adds one new table per edge; its ON clause is that edge
        joined = t2 if order.index(t2) > order.index(t1) else t1
        items[joined].on = [Tok("unit", schema.column_unit(c1), table=t1), Tok("op", "="),
                            Tok("unit", schema.column_unit(c2), table=t2)]
    return new


def restore_from(q: Query, schema: Schema) -> Query:
    """Give every SELECT block that lacks a FROM clause the one its units imply. In place."""
    for block in list(q.blocks()):
        units = _block_units(block)
        fc = block.from_
        if fc is not None:
            # a decoded FROM that misses a table its own columns use (a parser's mistake, never
            # gold) is rebuilt around all of them, so the SQL still names only tables it joins
            have = fc.tables()
            on_units = [t.table for toks in fc.on for t in toks if isinstance(t, Tok) and t.kind == "unit"]
            missing = [t for t in dict.fromkeys(units + on_units) if t not in have]
            if missing and all(it.sub is None for it in fc.items):
                block.from_ = _build_from(list(dict.fromkeys(have + missing)), schema)
            continue
        if not units:
            raise SQLError("cannot restore FROM: the block names no table")
        block.from_ = _build_from(units, schema)
    return q


_PLAIN_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@functools.lru_cache(maxsize=None)
def sql_ident(name: str) -> str:
    """A table or column name as written in SQL: bare, as Spider's gold writes it, where SQLite and
    :func:`lex` both read it back as that name; otherwise in backticks (``Home Town``,
    ``Official_ratings_(millions)``, ``From``), which SQLite accepts and :func:`lex` unquotes.
    Double quotes are not used: SQLite reads an unknown "name" as a string, and SParC's gold writes
    its values in them."""
    if _PLAIN_IDENT.fullmatch(name) and name.lower() not in KEYWORDS and _sqlite_takes_bare(name):
        return name
    return "`" + name.replace("`", "``") + "`"


def _sqlite_takes_bare(name: str) -> bool:
    # asked of SQLite itself: which keywords it also accepts as names differs between versions
    con = sqlite3.connect(":memory:")
    try:
        con.execute(f"CREATE TABLE {name} ({name} INT)")
        con.execute(f"SELECT {name}, T1.{name} FROM {name} AS T1 WHERE {name} = 1 "
                    f"GROUP BY {name} ORDER BY {name}")
        return True
    except sqlite3.Error:
        return False
    finally:
        con.close()


def to_sql(q: Query, schema: Schema) -> str:
    """Query tree (with FROM clauses) -> SQL text in the Spider style (T1, T2 aliases); names that
    SQL cannot take bare are quoted (:func:`sql_ident`)."""
    counter = [0]
    return _sql_query(q, schema, [], counter)


def _sql_query(q, schema, outer, counter):
    s = _sql_select(q.select, schema, outer, counter)
    if q.op:
        s += f" {q.op.upper()} " + _sql_query(q.right, schema, outer, counter)
    return s


def _sql_select(sel: Select, schema, outer, counter):
    fc = sel.from_
    aliases: dict[int, str] = {}
    from_sql = ""
    if fc is not None:
        multi = len(fc.items) > 1
        parts = []
        for it in fc.items:
            if it.sub is not None:
                parts.append("(" + _sql_query(it.sub, schema, outer, counter) + ")")
                continue
            name = sql_ident(schema.tables[it.table].name)
            if multi:
                counter[0] += 1
                a = f"T{counter[0]}"
                aliases.setdefault(it.table, a)
                parts.append(f"{name} AS {a}")
            else:
                aliases.setdefault(it.table, "")
                parts.append(name)
        scopes = [aliases] + outer
        pieces = [parts[0]]
        for k in range(1, len(parts)):
            piece = f"JOIN {parts[k]}"
            if fc.items[k].on:
                piece += " ON " + _sql_toks(fc.items[k].on, schema, scopes, counter, "on")
            pieces.append(piece)
        from_sql = " FROM " + " ".join(pieces)
    else:
        scopes = outer
    out = "SELECT " + _sql_toks(sel.clauses["select"], schema, [aliases] + outer, counter, "select")
    out += from_sql
    for clause in CLAUSES[1:]:
        if clause in sel.clauses:
            out += " " + SQL_SPELLING.get(clause, clause.upper()) + " " + \
                _sql_toks(sel.clauses[clause], schema, [aliases] + outer, counter, clause)
    return out


def _sql_toks(toks, schema, scopes, counter, clause) -> str:
    words: list[str] = []
    for t in toks:
        if isinstance(t, Query):
            words.append("(" + _sql_query(t, schema, scopes, counter) + ")")
            continue
        if t.kind == "unit":
            if "." not in t.text:
                raise SQLError(f"table {t.text!r} used where a column or value belongs")
            table, col = t.text.split(".", 1)
            ti = t.table
            alias = None
            for sc in scopes:
                if ti in sc:
                    alias = sc[ti]
                    break
            cname = sql_ident(schema.columns[schema.column_index(ti, col)].name)
            words.append(f"{alias}.{cname}" if alias else cname)
        elif t.kind == "star":
            words.append("*")
        elif t.kind in ("value", "num"):
            words.append(t.raw if t.raw != VALUE else '"value"')
        elif t.kind == "kw":
            words.append(SQL_SPELLING.get(t.text, t.text.upper() if t.text not in AGGREGATES else t.text))
        else:
            words.append(t.text)
    # glue: no space inside "count(" or before ")" and ","
    s = ""
    for w in words:
        if not s:
            s = w
        elif w in (")", ",") or s.endswith("("):
            s += w if w != "," else ","
        elif w == "(" and s.split(" ")[-1].lower() in AGGREGATES:
            s += w
        else:
            s += " " + w
    return s.replace(",", ", ").replace(",  ", ", ").replace(" ,", ",")


# ------------------------------------------------------------------------------------------
# convenience
# ------------------------------------------------------------------------------------------
def tokenize_sql(sql: str, schema: Schema, style: str = "full", values: str = "placeholder") -> list[str]:
    return to_tokens(parse_sql(sql, schema), schema, style, values)


def tokens_to_sql(tokens: list[str], schema: Schema) -> str:
    """Target tokens of either style -> executable SQL, FROM restored where it was removed."""
    q = tokens_to_query(tokens, schema)
    restore_from(q, schema)
    return to_sql(q, schema)


def from_signature(q: Query) -> list[tuple[tuple[int, ...], frozenset]]:
    """Per block: (sorted FROM tables, join conditions) — what restoration must get right."""
    return [(tuple(sorted(b.from_.tables())) if b.from_ else (), b.from_.join_conditions() if b.from_ else
             frozenset()) for b in q.blocks()]


def check_restore(sql: str, schema: Schema, pure: bool = False) -> str | None:
    """None when the nofrom round trip gives the gold tables and joins; else the reason.

    ``pure`` drops every FROM clause (EditSQL's form, plus the ``t.*`` star), instead of keeping
    the few that restoration cannot rebuild: it measures how far the FK graph alone goes.
    """
    gold = parse_sql(sql, schema)
    toks = to_tokens(gold, schema, "nofrom_all" if pure else "nofrom")
    back = tokens_to_query(toks, schema)
    restore_from(back, schema)
    g, r = from_signature(gold), from_signature(back)
    if len(g) != len(r):
        return f"block count differs ({len(g)} vs {len(r)})"
    for k, ((gt, gj), (rt, rj)) in enumerate(zip(g, r)):
        if gt != rt:
            names = lambda ts: ",".join(schema.table_name(t) for t in ts)  # noqa: E731
            return f"block {k}: tables {names(gt) or '-'} restored as {names(rt) or '-'}"
        if set(gj) != set(rj):
            fmt = lambda js: "; ".join(sorted(" = ".join(sorted(j)) for j in js)) or "none"  # noqa: E731
            return f"block {k}: joins [{fmt(gj)}] restored as [{fmt(rj)}]"
    return None
