"""Inference commands: ``predict`` (questions about a database, turn by turn) and ``evaluate``
(decode a whole split and score it with the exact-set-match and execution evaluator).

``predict``: ask a trained parser questions about a database, turn by turn.

Questions come one per line (stdin or ``--input``); the conversation carries on from line to line,
each turn seeing the parser's own previous SQL, until a blank line starts a new one. Each turn
prints its SQL (FROM restored for FROM-less models), and with ``--execute`` the first rows of its
result, run read-only.
"""
from __future__ import annotations

import os
import sqlite3
import sys

from .errors import ConfigError, DataError

# what filling a decoded query's values may raise on a query the filler did not foresee: the
# unfilled query is kept (predict says why), never lost
FILL_ERRORS = (DataError, ValueError, KeyError, IndexError)
from .schema import Schema, connect_readonly, load_tables


def load_schema(args) -> Schema:
    if args.db:
        return Schema.from_sqlite(args.db, args.db_id)
    if not (args.tables and args.db_id):
        raise DataError("give --db PATH.sqlite, or --tables tables.json with --db_id ID")
    schemas = load_tables(args.tables)
    if args.db_id not in schemas:
        raise DataError(f"unknown database_id {args.db_id!r}", file=args.tables)
    return schemas[args.db_id]


def database_file(args) -> str | None:
    """The SQLite file of ``--db``, or for ``--tables T --db_id ID`` the Spider layout's
    ``database/ID/ID.sqlite`` beside T where it exists (for --execute and the values' cells)."""
    if args.db:
        return args.db
    if args.tables and args.db_id:
        from .data import database_dir, database_path
        root = database_dir(args.tables)
        path = database_path(root, args.db_id) if root else None
        return path if path and os.path.isfile(path) else None
    return None


def execute(db: str, sql: str, max_rows: int, timeout: float = 10.0):
    """(column names, first ``max_rows`` rows) of ``sql`` run read-only under a time limit."""
    from .evaluation import time_limit
    con = connect_readonly(db)
    try:
        with time_limit(con, timeout):
            cur = con.execute(sql)
            return [d[0] for d in cur.description or []], cur.fetchmany(max_rows)
    finally:
        con.close()


class Conversation:
    """A trained parser in conversation over one schema: ``ask`` takes the next question and gives
    its SQL (joint ids), seeing the earlier questions and the parser's own earlier SQL.

    The model's weights cannot change here, so its encoder is marked frozen: each turn's encoding is
    then computed once and kept, and a new question costs one encoder call whether the run was
    trained with ``--fix_bert`` or fine-tuned (otherwise question n re-encodes all n turns). Earlier
    turns are not decoded again either."""

    def __init__(self, model, schema: Schema, beam: int = 1, constrained: bool = True, ensemble=(),
                 length_penalty: float = 0.0, fill_values: bool = True, db_path: str | None = None):
        from .train import table_units
        from .values import ValueFiller
        self.model = model.eval()
        self.ensemble = [m.eval() for m in ensemble]
        for m in [self.model, *self.ensemble]:
            m.encoder.fix()
        self.schema, self.beam, self.constrained = schema, beam, constrained
        self.length_penalty = length_penalty
        self.tables = table_units(schema)
        self.kinds = schema.unit_kinds()
        # placeholders get literals from the questions (and the database's cells, given its file)
        self.db_path = db_path
        self.filler = ValueFiller(schema, db_path) if fill_values else None
        self.reset()

    def reset(self):
        """A new conversation (the kept encodings stay valid: same weights, same schema)."""
        self.words: list[list[str]] = []
        self.questions: list[str] = []
        self.done: list[list[int]] = []
        self.filled: list[str] | None = None     # the last turn's tokens, values filled in

    def ask_sql(self, question: str | list[str]) -> tuple[str, str | None]:
        """The next question -> (its SQL with values filled in where the conversation gives them,
        the reason it is not a well-formed query or None)."""
        from .decoding import ids_to_sql
        from .sql_tokens import tokens_to_sql
        ids = self.ask(question)
        sql, toks, problem = ids_to_sql(ids, self.model.vocab, self.schema)
        if problem or self.filler is None:
            return sql, problem
        try:
            self.filled = self.filler.fill(toks, self.questions, self.filled)
            return tokens_to_sql(self.filled, self.schema), None
        except FILL_ERRORS as e:                     # never lose the unfilled query
            self.filled = toks
            return sql, f"cannot place its values: {e}"

    def ask(self, question: str | list[str]) -> list[int]:
        """The next question (text, or words already tokenised) -> its SQL as joint ids."""
        from .data import tokenize_utterance
        from .model import Example
        self.words.append(tokenize_utterance(question) if isinstance(question, str) else list(question))
        self.questions.append(question if isinstance(question, str) else " ".join(question))
        ex = Example(db_id=self.schema.db_id, unit_texts=self.schema.unit_natural, words=list(self.words),
                     targets=[[] for _ in self.words], table_units=self.tables,
                     unit_tables=self.schema.unit_table, unit_kinds=self.kinds)
        # predict runs without gradients itself
        self.done = self.model.predict([ex], beam=self.beam, constrained=self.constrained,
                                       known=[self.done], ensemble=self.ensemble,
                                       length_penalty=self.length_penalty)[0]
        return self.done[-1]


def load_ensemble(args, cfg, vocab) -> list:
    """The models of ``--ensemble RUN ...``, checked against the main run's: one vocabulary and one
    target style, or the mean of their distributions means nothing."""
    from .train import TARGET_KEYS, load_run
    out = []
    for path in args.ensemble or []:
        m, c, _ = load_run(path, device=args.device, raw=args.raw_weights)
        if any(getattr(c, k) != getattr(cfg, k) for k in TARGET_KEYS):
            raise DataError(f"--ensemble: {path} writes other targets than {args.run} (remove_from, "
                            "keep_from or values differ)")
        if m.vocab.tokens != vocab.tokens:
            raise DataError(f"--ensemble: {path} has another keyword vocabulary than {args.run}")
        out.append(m)
    return out


def _check_raw_weights(args, model):
    if args.raw_weights and model.checkpoint["weights"] is None:
        raise ConfigError(f"--raw_weights: {args.run} was trained without --ema, so it has one set of "
                          "weights (the raw ones); leave the flag out")


def run(args) -> int:
    # torch and nltk load here, not when the CLI builds its parser: every command starts fast
    from .train import load_run
    schema = load_schema(args)
    model, cfg, vocab = load_run(args.run, device=args.device, raw=args.raw_weights)
    _check_raw_weights(args, model)
    talk = Conversation(model, schema, beam=args.beam, constrained=not args.no_constraints,
                        ensemble=load_ensemble(args, cfg, vocab), length_penalty=args.length_penalty,
                        fill_values=not args.no_fill_values, db_path=database_file(args))
    stream = open(args.input, encoding="utf-8") if args.input else sys.stdin
    for line in stream:
        question = line.strip()
        if not question:
            talk.reset()   # a blank line ends the conversation
            continue
        sql, problem = talk.ask_sql(question)
        print(f"[{len(talk.words)}] {question}")
        print(sql)
        if problem:
            print(f"  (not a well-formed query: {problem})")
        elif args.execute:
            if '"value"' in sql:
                print("  (the query holds value placeholders the questions did not fill: write the value "
                      "as the database has it, or in quotes)" if talk.filler else
                      "  (the query holds value placeholders: --no_fill_values is on)")
            if not talk.db_path:
                print("  (--execute needs --db PATH.sqlite, or database/<db_id>/<db_id>.sqlite beside --tables)")
            else:
                try:
                    cols, rows = execute(talk.db_path, sql, args.max_rows)
                    print("  " + " | ".join(cols))
                    for r in rows:
                        print("  " + " | ".join(str(v) for v in r))
                except sqlite3.Error as e:
                    print(f"  (execution failed: {e})")
        sys.stdout.flush()
    return 0


LENGTH_PENALTY_HELP = ("with --beam: rank finished queries by their log-probability over ((5 + length) / 6) "
                       "** ALPHA (GNMT's), so that a longer query is not lost for having more factors "
                       "(default: 0, the plain sum)")
RAW_WEIGHTS_HELP = ("for runs trained with --ema: the optimiser's own weights instead of their moving "
                    "average (the default, which the run validated with); for --ensemble runs too")
NO_FILL_HELP = ("keep the \"value\" placeholders a run trained with placeholder values writes, instead "
                "of filling them from the questions: numbers they write, spans that equal a cell of the "
                "compared column (with --db), quoted or capitalised spans, the previous query's literals")
RUN_HELP = "a run folder written by train (its best.pt), or one of its checkpoints: RUN/last.pt"
ENSEMBLE_HELP = ("more runs trained like --run (same data, same target style), as folders or "
                 "checkpoints (RUN/last.pt: a snapshot ensemble with the run's best.pt): each decoding "
                 "step uses the mean of all the models' distributions")


def add_predict_command(sub):
    p = sub.add_parser("predict", help="translate questions (one per line) into SQL with a trained run")
    p.add_argument("--run", required=True, help=RUN_HELP)
    p.add_argument("--db", help="a SQLite database (its schema is read from the file)")
    p.add_argument("--tables", help="tables.json, with --db_id, instead of --db (its database/<db_id>/"
                                    "<db_id>.sqlite, where it exists, is then the database)")
    p.add_argument("--db_id", help="which schema of --tables (or a name for --db)")
    p.add_argument("--input", help="a file of questions (default: standard input)")
    p.add_argument("--beam", type=int, default=1, help="beam size (1: greedy)")
    p.add_argument("--length_penalty", type=float, default=0.0, metavar="ALPHA", help=LENGTH_PENALTY_HELP)
    p.add_argument("--no_constraints", action="store_true", help="turn grammar-constrained decoding off")
    p.add_argument("--ensemble", nargs="+", metavar="RUN", help=ENSEMBLE_HELP)
    p.add_argument("--raw_weights", action="store_true", help=RAW_WEIGHTS_HELP)
    p.add_argument("--execute", action="store_true", help="run each query read-only and print rows")
    p.add_argument("--no_fill_values", action="store_true", help=NO_FILL_HELP)
    p.add_argument("--max_rows", type=int, default=5, help="rows printed with --execute")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------------------
# evaluate
# ------------------------------------------------------------------------------------------
def _split_interactions(cfg, data: str | None, split: str):
    """The interactions a run validates on (or ``split`` of ``data``), with schemas and targets."""
    from dataclasses import replace
    from .train import load_data
    from .data import SHIPPED_DATA, split_path
    c = replace(cfg, data=data or cfg.data, tiny_dataset=0 if data else cfg.tiny_dataset)
    # the file this split comes from (the database split cuts both sides from dev.json)
    source = split_path(c.data or SHIPPED_DATA, "train" if split == "train" and c.protocol != "db_split" else "dev")

    def log(line, *a, **k):
        # what the reader left out of this split is said, as train says it: a score over fewer
        # items than the file holds must not pass for one over all of them
        if line.startswith(f"skipped: {source}:"):
            print(line, file=sys.stderr)

    if split == "train":
        train, _, schemas, targets = load_data(c, log=log)
        return train, schemas, targets
    _, valid, schemas, targets = load_data(c, log=log)
    return valid, schemas, targets


def evaluate_run(args) -> dict:
    import torch
    # a context, not a global switch: a Python caller (a notebook, a test) that evaluates and then
    # trains in the same process must get its gradients back
    with torch.no_grad():
        return _evaluate_run(args)


def _evaluate_run(args) -> dict:
    import json
    from .decoding import ids_to_sql
    from .evaluation import evaluate_files, matches, write_gold, write_predictions
    from .train import checkpoint_path, evaluate as teacher_forced, load_run, make_examples
    if args.turn_beam > 1 and (args.beam < args.turn_beam or args.use_gold_previous):
        raise ConfigError(f"--turn_beam {args.turn_beam} needs --beam {args.turn_beam} or more, and "
                          "predicted previous queries (not --use_gold_previous): it keeps the best "
                          "queries of each turn's beam as the histories the next turn reads")
    run_dir, which = checkpoint_path(args.run)
    model, cfg, vocab = load_run(run_dir, which=which, device=args.device, raw=args.raw_weights)
    model.eval()
    _check_raw_weights(args, model)
    ensemble = load_ensemble(args, cfg, vocab)
    items, schemas, targets = _split_interactions(cfg, args.data, args.split)
    examples = make_examples(items, schemas, targets, vocab)
    tf = teacher_forced(model, examples, cfg, ensemble=ensemble)
    preds = []
    for i in range(0, len(examples), args.batch_size):
        preds += model.predict(examples[i:i + args.batch_size], use_gold_previous=args.use_gold_previous,
                               beam=args.beam, constrained=not args.no_constraints, ensemble=ensemble,
                               length_penalty=args.length_penalty, turn_beam=args.turn_beam)
    # another checkpoint's report goes beside best.pt's, not over it: RUN/last.pt -> RUN/last/
    out_dir = args.out or (run_dir if which == "best.pt" else os.path.join(run_dir, os.path.splitext(which)[0]))
    os.makedirs(out_dir, exist_ok=True)     # --out may name a folder that does not exist yet
    gold_path = os.path.join(out_dir, f"gold_{args.split}.txt")
    pred_path = os.path.join(out_dir, "predictions.txt")
    from .data import SHIPPED_DATA, database_dir, tables_path
    data = args.data or cfg.data or SHIPPED_DATA
    tables, db_dir = tables_path(data, cfg.tables), database_dir(data)
    fill = _value_filling(args, schemas, db_dir)
    sql_by_inter, rows = [], []
    for inter, ex, p in zip(items, examples, preds):
        schema = schemas[inter.db_id]
        sqls, questions, previous = [], [], None
        for t, (turn, ids) in enumerate(zip(inter.turns, p)):
            sql, toks, problem = ids_to_sql(ids, vocab, schema)
            questions.append(turn.utterance)
            if fill is not None and not problem:
                sql, previous = fill(inter, t, toks, questions, previous, sql)
            sqls.append(sql)
            rows.append({"interaction": inter.index, "turn": t, "db_id": inter.db_id,
                         "utterance": turn.utterance, "gold": turn.query, "predicted": sql,
                         "tokens": toks, "gold_tokens": ex.tokens[t], "exact_match": None,
                         "strict_match": None,
                         "string_match": toks == ex.tokens[t], "problem": problem})
        sql_by_inter.append(sqls)
    write_gold(gold_path, [[(t.query, inter.db_id) for t in inter.turns] for inter in items])
    write_predictions(pred_path, sql_by_inter)
    turn_matches: list = []      # the evaluator's own verdict per turn, for the rows
    report = evaluate_files(gold_path, pred_path, tables, db_dir, turns=turn_matches)
    _set_row_matches(rows, turn_matches, schemas)
    with open(os.path.join(out_dir, "predictions.jsonl"), "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    report["teacher_forced"] = tf
    if fill is not None:
        report["values"] = fill.counts
    report["decoding"] = {"run": args.run, "tables": tables, "db_dir": db_dir,
                          "beam": args.beam, "length_penalty": args.length_penalty, "turn_beam": args.turn_beam,
                          "constrained": not args.no_constraints,
                          "use_gold_previous": args.use_gold_previous, "split": args.split,
                          "fill_values": fill is not None,
                          "ensemble": [args.run, *args.ensemble] if args.ensemble else None,
                          "checkpoint": model.checkpoint,
                          "ensemble_checkpoints": [m.checkpoint for m in ensemble] or None}
    with open(os.path.join(out_dir, f"eval_{args.split}.json"), "w") as f:
        json.dump(report, f, indent=1)
    try:
        from tensorboardX import SummaryWriter
        w = SummaryWriter(run_dir)
        tag = f"eval_{args.split}_beam{args.beam}"
        for k in ("question_match", "interaction_match", "exec_acc"):
            if report.get(k) is not None:
                w.add_scalar(f"{tag}/{k}", report[k], 0)
        w.close()
    except ImportError:
        pass
    return report


def _value_filling(args, schemas: dict, db_dir: str | None):
    """A function that fills one decoded turn's placeholders (see :mod:`text2sql.values`), reading
    ``db_dir``'s databases where they exist, and counts the slots; None with --no_fill_values.
    Values do not change question or interaction match (the metric ignores them); they make the
    predictions runnable, and so execution accuracy meaningful."""
    if args.no_fill_values:
        return None
    from .data import database_path
    from .sql_tokens import SQLError, tokenize_sql, tokens_to_sql
    from .values import VALUE, ValueFiller
    fillers: dict[str, ValueFiller] = {}

    def fill(inter, t, toks, questions, previous, sql):
        schema = schemas[inter.db_id]
        if inter.db_id not in fillers:
            path = database_path(db_dir, inter.db_id) if db_dir else None
            fillers[inter.db_id] = ValueFiller(schema, path if path and os.path.isfile(path) else None)
        if args.use_gold_previous:      # the history the turn was decoded against
            try:
                previous = tokenize_sql(inter.turns[t - 1].query, schema, "full", "literal") if t > 0 else None
            except SQLError:
                previous = None
        slots = sum(x == VALUE for x in toks)
        fill.counts["slots"] += slots
        try:          # as predict: a filling that fails keeps the unfilled query, counted unfilled
            filled = fillers[inter.db_id].fill(toks, questions, previous)
            out = tokens_to_sql(filled, schema), filled
        except FILL_ERRORS:
            fill.counts["failed"] += 1
            return sql, toks
        fill.counts["filled"] += slots - sum(x == VALUE for x in filled)
        return out
    fill.counts = {"slots": 0, "filled": 0, "failed": 0}
    return fill


def format_report(r: dict) -> str:
    lines = [*([f"warning: {r['misaligned']}"] if r.get("misaligned") else []),f"question match     {r['question_match']:.2f}",
             f"interaction match  {r['interaction_match']:.2f}",
             *([f"strict (join conditions and DISTINCT compared too): question {r['strict']['question_match']:.2f}, "
                f"interaction {r['strict']['interaction_match']:.2f}"] if r.get("strict") else []),
             f"execution accuracy {'-' if r.get('exec_acc') is None else format(r['exec_acc'], '.2f')}",
             *([f"values placed     {r['values']['filled']} of {r['values']['slots']} placeholder slots"]
               if r.get("values") else [])]
    if "by_hardness" in r:
        lines.append("by hardness: " + ", ".join(
            f"{k} {v.get('exact', 0):.1f} ({v.get('count', 0)})" for k, v in r["by_hardness"].items()))
    if "by_turn" in r:
        lines.append("by turn:     " + ", ".join(
            f"{k}: {v.get('exact', 0):.1f} ({v.get('count', 0)})" for k, v in r["by_turn"].items()))
    if r.get("teacher_forced"):
        tf = r["teacher_forced"]
        lines.append(f"teacher-forced: token {tf['token_acc']:.2f} (pooled {tf['token_acc_pooled']:.2f}), "
                     f"string {tf['string_acc']:.2f}, keyword {tf['keyword_acc']:.2f}, DB {tf['db_acc']:.2f}")
    if r.get("partial") and any(v is not None for v in r["partial"].values()):
        lines.append("partial-match F1: " + ", ".join(
            f"{k} {v:.1f}" for k, v in r["partial"].items() if v is not None))
    if r.get("unparsable"):
        lines.append(f"unparsable: {len(r['unparsable'])}")
        for u in r["unparsable"][:20]:
            lines.append(f"  interaction {u.get('interaction')} turn {u.get('turn')}: {u.get('reason')}")
    return "\n".join(lines)


def _report_tables(folder: str, report: dict, tables: str | None) -> tuple[str, str | None]:
    """(tables.json, database folder or None) of a report: --tables, else those the report names,
    else (older reports) those of the config of the run it decoded: the folder itself, the run
    above an ``--out RUN/NAME`` folder, or an ensemble's first member."""
    from .config import TrainConfig
    from .data import SHIPPED_DATA, database_dir, tables_path
    dec = report.get("decoding") if isinstance(report.get("decoding"), dict) else {}
    if isinstance(dec.get("tables"), str) and os.path.isfile(dec["tables"]):
        db_dir = dec.get("db_dir") if isinstance(dec.get("db_dir"), str) and os.path.isdir(dec["db_dir"]) else None
        return tables or dec["tables"], db_dir
    members = dec.get("ensemble") if isinstance(dec.get("ensemble"), list) else []
    runs = [dec.get("run")] if isinstance(dec.get("run"), str) else []
    for run in [*runs, folder, os.path.dirname(os.path.normpath(folder)), *members[:1]]:
        if run and os.path.isfile(os.path.join(run, "config.json")):
            cfg = TrainConfig.load(run)
            data = cfg.data or SHIPPED_DATA
            return tables or tables_path(data, cfg.tables), database_dir(data)
    if tables:
        return tables, None
    raise DataError(f"{folder}: no config.json of the run it decoded (the folder, the one above it, or "
                    "its report's first ensemble member); pass --tables tables.json")


def _set_row_matches(rows: list[dict], turn_matches: list[tuple[bool, bool]], schemas: dict):
    """Each predictions.jsonl row's ``exact_match`` and ``strict_match``: the evaluator's verdict
    on the same turn (rows and gold file in the same order), or, for rows that do not line up
    with it (an edited file), the two matched again from the row's own queries."""
    from .evaluation import matches
    aligned = len(rows) == len(turn_matches)
    for i, r in enumerate(rows):
        if aligned:
            r["exact_match"], r["strict_match"] = turn_matches[i]
            continue
        try:
            r["exact_match"], r["strict_match"] = matches(r["gold"], r["predicted"], schemas[r["db_id"]])
        except Exception:   # the evaluator lists what it cannot parse; here it is simply wrong
            r["exact_match"] = r["strict_match"] = False


def rescore(folder: str, tables: str | None = None) -> list[dict]:
    """Score every ``eval_<split>.json`` in an ``evaluate`` output folder again from the gold and
    prediction files beside it, with this version's metric (a report written before it followed the
    official script has strict figures only). The teacher-forced figures and the decoding settings
    are kept; predictions.jsonl's per-turn matches are rewritten to agree. Files are replaced
    atomically, so an interrupted rescore leaves the old report whole."""
    import json
    from .evaluation import read_gold, read_predictions, score_interactions
    from .train import atomic_write_text
    names = sorted(n for n in os.listdir(folder) if n.startswith("eval_") and n.endswith(".json")) \
        if os.path.isdir(folder) else []
    if not names:
        raise DataError(f"{folder}: no eval_<split>.json report of evaluate here")
    out = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not a readable report ({e})") from None
        split = name[len("eval_"):-len(".json")]
        gold, pred = os.path.join(folder, f"gold_{split}.txt"), os.path.join(folder, "predictions.txt")
        for need in (gold, pred):
            if not os.path.isfile(need):
                raise DataError(f"{path}: {os.path.basename(need)} is not beside it, so it cannot be re-scored")
        # evaluate writes one predictions.txt per folder: a folder scored on two splits keeps only the
        # last one's, and scoring the other split's gold against it would be silently wrong
        gold_sql, pred_sql = read_gold(gold), read_predictions(pred)
        pred_shape = [len(b) for b in pred_sql]
        if pred_shape != [len(b) for b in gold_sql] or old.get("questions", sum(pred_shape)) != sum(pred_shape):
            raise DataError(f"{path}: predictions.txt beside it is not of this report (other interactions or "
                            "turns: evaluate wrote another split here since)")
        tables_file, db_dir = _report_tables(folder, old, tables)
        schemas = load_tables(tables_file)
        turn_matches: list = []
        report = score_interactions(gold_sql, pred_sql, schemas, db_dir, turns=turn_matches)
        for key in ("teacher_forced", "decoding"):
            if key in old:
                report[key] = old[key]
        rows_path = os.path.join(folder, "predictions.jsonl")
        if os.path.isfile(rows_path):
            with open(rows_path, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
            # rows line up with the files when each names the gold and prediction at its position
            flat = [(g, p) for gi, pi in zip(gold_sql, pred_sql) for (g, _), p in zip(gi, pi)]
            if len(rows) != len(flat) or any((r.get("gold", "").strip(), r.get("predicted", "").strip())
                                             != (g.strip(), p.strip()) for r, (g, p) in zip(rows, flat)):
                turn_matches = []        # matched again row by row
            _set_row_matches(rows, turn_matches, schemas)
            atomic_write_text(rows_path, "".join(json.dumps(r) + "\n" for r in rows))
        atomic_write_text(path, json.dumps(report, indent=1))
        out.append({"report": path, "before": {k: old.get(k) for k in ("question_match", "interaction_match")},
                    **{k: report[k] for k in ("question_match", "interaction_match", "strict")}})
    return out


def run_evaluate(args) -> int:
    import json
    if args.rescore:
        if args.run or args.gold or args.pred:
            raise ConfigError("--rescore reads the files an earlier evaluate wrote; it takes no --run, --gold or --pred")
        done = [r for folder in args.rescore for r in rescore(folder, args.tables)]
        for r in done:
            b = r["before"]
            print(json.dumps(r) if args.json else
                  f"{r['report']}: question / interaction match {r['question_match']:.2f} / "
                  f"{r['interaction_match']:.2f} (was {b['question_match']:.2f} / {b['interaction_match']:.2f}); "
                  f"strict {r['strict']['question_match']:.2f} / {r['strict']['interaction_match']:.2f}")
        return 0
    if args.run:
        report = evaluate_run(args)
    else:
        if not (args.gold and args.pred and args.tables):
            raise DataError("evaluate needs --run RUN_DIR, or --gold FILE --pred FILE --tables tables.json")
        from .evaluation import evaluate_files
        report = evaluate_files(args.gold, args.pred, args.tables, args.db_dir)
    if args.json and report.get("misaligned"):
        print(f"warning: {report['misaligned']}", file=sys.stderr)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def add_evaluate_command(sub):
    p = sub.add_parser("evaluate", help="decode a split with a trained run and score it (question/"
                                        "interaction match, execution), or score any prediction file")
    p.add_argument("--run", help=RUN_HELP)
    p.add_argument("--data", help="data directory (default: the run's)")
    p.add_argument("--split", default="dev", choices=["dev", "train"],
                   help="dev: what the run validates on; train: its training data")
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--length_penalty", type=float, default=0.0, metavar="ALPHA", help=LENGTH_PENALTY_HELP)
    p.add_argument("--turn_beam", type=int, default=1, metavar="K",
                   help="a beam over whole interactions: keep each interaction's K best histories "
                        "(predicted queries so far, ranked by their summed beam scores), decode each "
                        "next turn against each history's last query, and keep the K best extensions "
                        "(needs --beam K or more; default 1: each turn keeps only its best query)")
    p.add_argument("--no_constraints", action="store_true")
    p.add_argument("--no_fill_values", action="store_true", help=NO_FILL_HELP + " (question and "
                   "interaction match ignore values; execution accuracy needs them)")
    p.add_argument("--use_gold_previous", action="store_true",
                   help="feed each turn the gold previous query instead of the predicted one")
    p.add_argument("--ensemble", nargs="+", metavar="RUN", help=ENSEMBLE_HELP + " (the teacher-forced "
                   "figures too)")
    p.add_argument("--raw_weights", action="store_true", help=RAW_WEIGHTS_HELP)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--out", help="where predictions and the report go (default: the run folder)")
    p.add_argument("--gold", help="official gold file: SQL<TAB>db_id lines, blank line between interactions")
    p.add_argument("--pred", help="predictions: one SQL per line, blank line between interactions")
    p.add_argument("--tables", help="tables.json for --gold/--pred")
    p.add_argument("--db_dir", help="database/<db>/<db>.sqlite root, for execution accuracy")
    p.add_argument("--rescore", nargs="+", metavar="DIR",
                   help="score evaluate output folders again (eval_<split>.json with its gold and "
                        "predictions files) with this version's metric, keeping their teacher-forced figures")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run_evaluate)
