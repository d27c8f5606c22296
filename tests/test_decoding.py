"""Decoding: the grammar constraint, beam search, SQL output and the predict command."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from text2sql.config import TrainConfig
from text2sql.errors import ConfigError
from text2sql.decoding import Grammar, ids_to_sql
from text2sql.model import Example
from test_model import cfg_for, quiet
from text2sql.train import Trainer


@pytest.fixture
def trained(concert_data, tmp_path):
    tr = Trainer(cfg_for(concert_data, tmp_path, epochs=25, fix_bert=True, batch_size=1), log=quiet,
                 progress=False)
    tr.run()
    tr.model.eval()
    return tr


def _grammar_probe(schema):
    """A grammar over the bare vocabulary and the test schema, and ``ok(prefix, next, left=None)``:
    whether it allows token ``next`` after the tokens ``prefix``."""
    from text2sql.vocab import Vocab
    v = Vocab.build([], [])
    g = Grammar(v)
    size = len(v) + len(schema.units)
    ids = lambda toks: v.encode(toks, schema)[:-1]   # noqa: E731
    joint = lambda tok: v.index[tok] if tok in v.index else ids([tok])[0]   # noqa: E731
    ok = lambda toks, nxt, left=None: bool(g.allowed(ids(toks), size, left=left)[joint(nxt)])   # noqa: E731
    return v, g, size, ids, ok


def test_grammar_rules(concert_schema):
    v, g, size, ids, _ = _grammar_probe(concert_schema)
    first = g.allowed([], size)
    assert first.sum() == 1 and first[v.index["select"]]
    after_open = g.allowed(ids(["select", "count", "("]), size)
    assert not after_open[v.index[")"]] and not after_open[v.eos]
    inside = g.allowed(ids(["select", "count", "(", "singer.*"]), size)
    assert inside[v.index[")"]] and not inside[v.eos]
    done = g.allowed(ids(["select", "count", "(", "singer.*", ")"]), size)
    assert done[v.eos] and not done[v.index[")"]]
    assert not g.allowed(ids(["select", "singer.name", "where"]), size)[v.eos]
    assert not done[v.pad] and not done[v.go] and not done[v.unk]


def test_grammar_allows_each_clause_once_per_select(concert_schema):
    from text2sql.sql_tokens import tokens_to_sql
    v, _, size, ids, ok = _grammar_probe(concert_schema)
    w = ["select", "singer.name", "where", "singer.age", ">", "value"]
    assert ok(["select", "singer.name"], "where") and not ok(w, "where")
    assert ok(w, "order_by") and not ok(w + ["order_by", "singer.age", "limit", "value"], "limit")
    # a subquery has clauses of its own, and closing it returns to the outer SELECT's
    sub = ["select", "singer.name", "where", "singer.age", ">", "(", "select", "avg", "(", "singer.age", ")"]
    assert ok(sub, "where")
    assert not ok(sub + ["where", "singer.age", ">", "value", ")"], "where")
    assert ok(sub + ["where", "singer.age", ">", "value", ")"], "order_by")
    # the SELECT after a set operation starts afresh
    assert ok(w + ["intersect", "select", "singer.name"], "where")
    # JOIN and ON belong to a FROM clause, and FROM comes once
    f = ["select", "singer.name", "from", "singer"]
    assert ok(f, "join") and not ok(w, "join") and not ok(["select", "singer.name"], "join")
    assert not ok(f + ["where", "singer.age", ">", "value"], "join") and not ok(f, "from")
    # SELECT starts a query: first, after "(" or after a set operation, nowhere else
    assert not ok(["select", "singer.name"], "select") and not ok(w, "select")
    assert ok(w + ["intersect"], "select") and ok(w[:-1] + ["("], "select")
    # a clause or set operation never follows a token that still wants its operand (a model wrote
    # "select group_by friend.friend_id order_by ...": an empty SELECT list)
    for prefix in (["select"], ["select", "singer.name", ","], w[:-1], w[:-3] + ["and"],
                   ["select", "count", "("], ["select", "distinct"], w + ["intersect"]):
        for clause in ("where", "group_by", "having", "order_by", "limit", "intersect", "union", "except"):
            assert not ok(prefix, clause), (prefix, clause)
    assert ok(w, "group_by") and ok(w, "intersect") and ok(["select", "singer.name"], "order_by")
    # FROM-less targets: a query must name a DB unit before it ends, or FROM cannot be rebuilt
    bare = ["select", "count", "(", "*", ")"]
    assert ok(bare, "<eos>") and not bool(Grammar(v, from_less=True).allowed(ids(bare), size)[v.eos])
    assert bool(Grammar(v, from_less=True).allowed(ids(["select", "count", "(", "singer.*", ")"]), size)[v.eos])
    # a list item may not end as a copy of the item right before it ("select a.x , a.x")
    assert not ok(["select", "singer.name", ","], "singer.name") and ok(["select", "singer.name", ","], "singer.age")
    assert not ok(["select", "distinct", "singer.name", ","], "singer.name")
    agg = ["select", "count", "(", "singer.*", ")", ",", "count", "(", "singer.*"]
    assert not ok(agg, ")") and ok(["select", "count", "(", "singer.*", ")", ",", "max", "(", "singer.*"], ")")
    order = ["select", "singer.name", "order_by", "singer.age", "desc", ",", "singer.age"]
    assert not ok(order, "desc") and ok(order, "asc")
    assert not ok(["select", "singer.name", "group_by", "singer.name", ","], "singer.name")
    # only the item right before: SParC's dev gold repeats a column three items later
    assert ok(["select", "singer.name", ",", "singer.age", ","], "singer.name")
    assert ok(["select", "singer.name", "group_by"], "singer.name")
    assert ok(["select", "singer.name", "where", "singer.age", ">", "value", "and"], "singer.age")
    # a subquery keeps lists of its own, and an item holding one is like no other
    sub_list = ["select", "singer.name", "where", "singer.age", "in", "(", "select"]
    assert ok(sub_list, "singer.name") and not ok(sub_list + ["singer.age", ","], "singer.age")
    nested = ["select", "(", "select", "singer.age", ")", ",", "(", "select", "singer.age"]
    assert ok(nested, ")")
    # what the reader refuses, the grammar never produces
    with pytest.raises(Exception, match="appears twice"):
        tokens_to_sql(w + ["where", "singer.age", "<", "value"], concert_schema)


def test_grammar_puts_operators_and_parentheses_where_the_reader_takes_them(concert_schema):
    v, g, size, ids, ok = _grammar_probe(concert_schema)
    # R1: an aggregate is followed by "(" and nothing else ("select avg and value")
    for agg in ("count", "sum", "avg", "min", "max"):
        mask = g.allowed(ids(["select", agg]), size)
        assert mask.sum() == 1 and mask[v.index["("]], agg
    # R2: "(" right after from/join opens a subquery ("join ( enclosure.enclosure_id )")
    f = ["select", "singer.name", "from", "singer", "join"]
    for prefix in (f[:3] + ["("], f + ["("]):
        mask = g.allowed(ids(prefix), size)
        assert mask.sum() == 1 and mask[v.index["select"]], prefix
    assert ok(["select", "singer.name", "from"], "(") and ok(f, "(")
    # R3: "(" only where an operand is wanted, never after a complete one ("( * ( * ( * ...")
    w = ["select", "singer.name", "where", "singer.age"]
    for prefix in (["select", "count", "(", "*"], ["select", "singer.name"], w + [">", "value"],
                   ["select", "count", "(", "singer.*", ")"], ["select", "singer.name", "order_by", "singer.age", "desc"]):
        assert not ok(prefix, "("), prefix
    for prefix in (["select"], ["select", "count"], w + ["="], w + ["in"], w + ["not", "in"], ["select", "distinct"]):
        assert ok(prefix, "("), prefix
    assert ok(w + ["=", "("], "select") and ok(w + ["not", "in", "(", "select"], "singer.age")
    # R4: no binary operator right after a token that wants its operand, but "not in", "not like"
    for prefix in (["select"], w[:3], w + ["="], w + [">", "value", "and"], ["select", "singer.name", ","],
                   ["select", "distinct"], w + ["not"]):
        for op in ("and", "or", "=", "!=", "<", ">=", "+", "/", "like", "is", "on", "as"):
            if not (prefix[-1] == "not" and op == "like"):
                assert not ok(prefix, op), (prefix, op)
    for op in ("in", "like", "between"):
        assert ok(w + ["not"], op) and not ok(w[:3], op) and not ok(w + ["="], op) and ok(w, op), op
    assert ok(w + ["not", "like"], "value") and ok(w + ["not", "in", "("], "select")
    assert ok(w + [">", "value"], "and") and ok(w, "=") and ok(w, "-") and ok(w + ["="], "-")
    assert ok(w + ["between", "value"], "and") and ok(["select", "singer.age"], "+")


def test_grammar_after_an_operand_directions_joins_and_the_length_budget(concert_schema):
    v, g, size, ids, ok = _grammar_probe(concert_schema)
    s = ["select", "singer.name"]
    # after a complete operand: no second operand without its comma, no keyword out of place
    for nxt in ("singer.age", "value", "*", "count", "distinct", "right", "case", "select", "("):
        assert not ok(s, nxt), nxt
    for nxt in (",", "from", "where", "=", "not", "-", "glob", "<eos>", "union"):
        assert ok(s, nxt), nxt
    assert not ok(s + ["glob"], "glob") and ok(s + ["glob"], "value")
    # ASC / DESC end an ORDER BY item, once; not in another clause
    o = s + ["order_by", "singer.age"]
    assert ok(o, "desc") and ok(o, "asc") and not ok(o + ["desc"], "desc") and ok(o + ["desc"], "limit")
    assert not ok(s, "desc") and not ok(s + ["group_by", "singer.age"], "desc")
    # LEFT, RIGHT ... lead to a JOIN, only in FROM
    f = s + ["from", "singer"]
    assert ok(f, "left") and not ok(s, "left")
    mask = g.allowed(ids(f + ["left"]), size)
    assert mask[v.index["join"]] and mask[v.index["outer"]] and mask.sum() == 2
    mask = g.allowed(ids(f + ["left", "outer"]), size)
    assert mask[v.index["join"]] and mask.sum() == 1          # "left outer outer ..." cannot loop
    # the length budget: with just enough steps left, nothing that wants another operand comes
    deep = ["select", "count", "(", "singer.*"]        # depth 1: ")" and the end need 2 steps
    assert ok(deep, "=", left=10) and ok(deep, ",", left=10)
    assert not ok(deep, "=", left=3) and not ok(deep, ",", left=3) and ok(deep, ")", left=3)
    w = s + ["where", "singer.age", "="]              # wants an operand, then the end: 2 steps
    assert ok(w, "(", left=10) and not ok(w, "(", left=3) and ok(w, "value", left=3)
    # never an empty mask: where the budget would leave nothing, the usual rules stand
    assert g.allowed(ids(f + ["left"]), size, left=1).any()


def test_beam_of_one_is_greedy_and_beam_scores_no_worse(trained):
    model, ex = trained.model, trained.train_ex
    greedy = model.predict(ex)
    assert model.predict(ex, beam=1) == greedy
    # first turns (no previous query): compare sequence log-probabilities of beam 4 and greedy
    firsts = [Example(db_id=e.db_id, unit_texts=e.unit_texts, words=e.words[:1], targets=[[]]) for e in ex]
    g = [p[0] for p in model.predict(firsts)]
    b = [p[0] for p in model.predict(firsts, beam=4)]

    def score(seqs):
        exs = [Example(db_id=e.db_id, unit_texts=e.unit_texts, words=e.words[:1],
                       targets=[s + [model.vocab.eos]]) for e, s in zip(firsts, seqs)]
        with torch.no_grad():
            out = model(exs)
        lp = out.logp.gather(-1, out.targets.unsqueeze(-1)).squeeze(-1) * out.mask
        return lp.sum(-1)
    assert (score(b) >= score(g) - 1e-4).all()


def test_turn_beam_keeps_the_history_whose_follow_ups_score_best(concert_data, tmp_path, monkeypatch):
    """A scripted beam: a first turn offers A (log-prob -1) and B (-2); the next turn, read against
    A, scores at best -5, against B -0.5. Turn by turn the parser keeps A; a turn beam of 2 keeps B
    (-2.5 in all against -6). Each decoded turn's memory holds its own history's previous query."""
    from text2sql import decoding
    tr = Trainer(cfg_for(concert_data, tmp_path, fix_bert=True), log=quiet, progress=False)
    model = tr.model.eval()
    ex = [e for e in tr.train_ex if len(e) >= 3][:2]
    assert len(ex) == 2
    K = len(model.vocab)
    A, B, C, D = [K], [K + 1], [K + 2], [K + 3]          # units 0-3 of the schema, as one-token queries
    read = []

    def scripted(decoder, turn_state, mem, vocab, grammar, beam, max_len, length_penalty):
        prevs = [ids[m].tolist() for ids, m in zip(mem[0].prev_ids, mem[0].prev_mask)]
        read.append(prevs)
        table = {(): [(-1.0, A), (-2.0, B)], tuple(A): [(-5.0, C)], tuple(B): [(-0.5, D)]}
        return [table.get(tuple(p), [(-0.1, p)]) for p in prevs]     # later turns repeat their query
    monkeypatch.setattr(decoding, "beam_candidates", scripted)
    n = [len(e) for e in ex]
    assert model.predict(ex, beam=2) == [[A, C] + [C] * (k - 2) for k in n]
    read.clear()
    assert model.predict(ex, beam=2, turn_beam=2) == [[B, D] + [D] * (k - 2) for k in n]
    # the second turn was decoded once per history of each interaction, each against its own query
    assert read[1] == [A, B, A, B]
    # a conversation in progress keeps the turns already answered
    assert model.predict(ex, beam=2, turn_beam=2, known=[[A], []]) == [[A, C] + [C] * (n[0] - 2),
                                                                       [B, D] + [D] * (n[1] - 2)]
    with pytest.raises(ValueError, match="beam of at least 3"):
        model.predict(ex, beam=2, turn_beam=3)


def test_turn_beam_on_single_turns_is_beam_search(trained):
    model, ex = trained.model, trained.train_ex
    firsts = [Example(db_id=e.db_id, unit_texts=e.unit_texts, words=e.words[:1], targets=[[]],
                      table_units=e.table_units, unit_tables=e.unit_tables, unit_kinds=e.unit_kinds) for e in ex]
    for constrained in (False, True):
        assert model.predict(firsts, beam=3, turn_beam=3, constrained=constrained) == \
            model.predict(firsts, beam=3, constrained=constrained)
    # whole interactions, with an ensemble: one query per turn, each a query the grammar allows
    preds = model.predict(ex, beam=3, turn_beam=2, constrained=True, ensemble=[model])
    assert [len(p) for p in preds] == [len(e) for e in ex]
    assert all(ids_to_sql(q, model.vocab, trained.schemas[e.db_id])[2] is None for e, p in zip(ex, preds) for q in p)


class _ScriptedSearch:
    """A stand-in decoder for beam search: each row's next-token probabilities depend on its prefix
    alone (tokens: 0 go, 1 end, 2 a, 3 b)."""
    NEXT = {(): {1: 0.5, 2: 0.5}, (2,): {3: 0.9, 1: 0.1}, (2, 3): {1: 0.95, 2: 0.05}}

    def __init__(self, turns):
        self.turns, self.device = turns, torch.device("cpu")

    def start(self, owner):
        return [() for _ in range(len(owner))]

    def step(self, carry, tok):
        probs = torch.full((len(carry), 4), 1e-12)
        for i, prefix in enumerate(carry):
            for t, p in self.NEXT.get(prefix, {1: 1.0}).items():
                probs[i, t] = p
        return carry, probs.log()

    def choose(self, carry, idx, tok):
        rows = range(len(carry)) if idx is None else idx.tolist()
        return [carry[r] + (t,) for r, t in zip(rows, tok.tolist())]


def test_length_penalty_lets_a_longer_query_beat_a_shorter_one(monkeypatch):
    from types import SimpleNamespace
    from text2sql import decoding
    monkeypatch.setattr(decoding, "_stepper", lambda decoder, turn_state, mem: _ScriptedSearch(2))
    vocab = SimpleNamespace(go=0, eos=1)
    # ending at once: log 0.5 = -0.69; "a b": log 0.5 + log 0.9 + log 0.95 = -0.85, but over
    # ((5 + 3) / 6) ** 1 it is -0.64 against the short one's -0.69 / 1
    def best(**kw):                    # each turn's best finished query
        return [c[0][1] for c in decoding.beam_candidates(None, None, None, vocab, None, **kw)]
    assert best(beam=3) == [[], []]
    assert best(beam=3, length_penalty=1.0) == [[2, 3], [2, 3]]
    assert decoding.length_norm(3, 1.0) == 8 / 6 and decoding.length_norm(7, 0.0) == 1.0
    # a weak penalty does not overturn the sum: -0.85 / (8 / 6) ** 0.1 = -0.83 < -0.69
    assert best(beam=3, length_penalty=0.1) == [[], []]


def test_constrained_output_is_well_formed_even_untrained(concert_data, tmp_path):
    tr = Trainer(cfg_for(concert_data, tmp_path), log=quiet, progress=False)
    model = tr.model.eval()
    v = model.vocab
    for beam in (1, 3):
        preds = model.predict(tr.train_ex, beam=beam, constrained=True, max_len=30)
        for inter in preds:
            for seq in inter:
                toks = v.decode(seq + [v.eos], tr.schemas["concerts"])
                assert toks[0] == "select"
                depth = 0
                for t in toks:
                    depth += (t == "(") - (t == ")")
                    assert depth >= 0
                if len(seq) < 30:   # it chose to stop: only where a query can end
                    assert depth == 0


def test_ids_to_sql_restores_from(trained):
    s = trained.schemas["concerts"]
    v = trained.vocab
    ids = v.encode(["select", "count", "(", "concert.*", ")"], s)[:-1]
    sql, toks, problem = ids_to_sql(ids, v, s)
    assert sql == "SELECT count(*) FROM concert" and problem is None
    sql, _, problem = ids_to_sql(v.encode(["select", "where"], s)[:-1], v, s)
    assert problem and sql == "select where"


def test_predict_command_keeps_the_conversation(trained, concert_data, tmp_path):
    from conftest import ROOT
    questions = tmp_path / "q.txt"
    questions.write_text("Show all singers.\nWhich of them are older than 30?\n\nList stadium names.\n")
    p = subprocess.run([sys.executable, "-m", "text2sql", "predict", "--run", trained.run_dir,
                        "--tables", f"{concert_data}/tables.json", "--db_id", "concerts",
                        "--input", str(questions)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-800:]
    lines = p.stdout.strip().splitlines()
    assert [l for l in lines if l.startswith("[")] == [
        "[1] Show all singers.", "[2] Which of them are older than 30?", "[1] List stadium names."]
    sqls = [lines[i + 1] for i, l in enumerate(lines) if l.startswith("[")]
    assert all(s.startswith("SELECT") for s in sqls)
    # a run ensembled with itself answers alike
    q = subprocess.run([sys.executable, "-m", "text2sql", "predict", "--run", trained.run_dir,
                        "--ensemble", trained.run_dir, "--tables", f"{concert_data}/tables.json",
                        "--db_id", "concerts", "--input", str(questions)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert q.returncode == 0 and q.stdout == p.stdout, q.stderr[-800:]


def test_evaluate_command_end_to_end(trained, tmp_path):
    import json
    from conftest import ROOT
    out = tmp_path / "eval" / "new"            # --out makes the folder it names
    p = subprocess.run([sys.executable, "-m", "text2sql", "evaluate", "--run", trained.run_dir, "--split", "train",
                        "--out", str(out), "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-800:]
    report = json.loads(p.stdout)
    assert set(report) >= {"question_match", "interaction_match", "exec_acc", "by_hardness", "by_turn",
                           "unparsable", "teacher_forced"}
    assert report["exec_acc"] is None          # the fixture data has no .sqlite files
    rows = [json.loads(l) for l in open(out / "predictions.jsonl")]
    assert len(rows) == report["by_hardness"]["all"]["count"] == 10
    # question match counts exactly the rows the evaluator matched
    assert abs(report["question_match"] - 100.0 * sum(r["exact_match"] for r in rows) / len(rows)) < 1e-9
    # a turn whose tokens equal the gold's must be an exact match; teacher-forced string accuracy is
    # the greedy string-match rate only with gold previous queries, so that is not compared here
    assert all(r["exact_match"] for r in rows if r["string_match"])
    pred_lines = open(out / "predictions.txt").read().strip().split("\n\n")
    assert len(pred_lines) == 4
    # scoring the written files again through --gold/--pred gives the same figures
    q = subprocess.run([sys.executable, "-m", "text2sql", "evaluate", "--gold", str(out / "gold_train.txt"),
                        "--pred", str(out / "predictions.txt"), "--tables",
                        os.path.join(trained.cfg.data, "tables.json"), "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert q.returncode == 0, q.stderr[-800:]
    assert json.loads(q.stdout)["question_match"] == report["question_match"]
    # the error analysis of that report agrees with it: every wrong turn is placed once, and the
    # interactions it counts whole are the evaluator's interaction match
    a = subprocess.run([sys.executable, "-m", "text2sql", "analyse", str(out), "--json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert a.returncode == 0, a.stderr[-800:]
    an = json.loads(a.stdout)["reports"][str(out)]
    assert an["question_match"] == round(report["question_match"], 2)
    assert an["wrong"] == sum(not r["exact_match"] for r in rows)
    assert sum(k["count"] for k in an["first_error"].values()) == an["wrong"]
    assert abs(100.0 * an["first_wrong_turn"]["none"] / an["interactions"] - report["interaction_match"]) < 1e-9
    # the strict figures count the rows' strict matches
    assert report["metric"] == "official"
    assert abs(report["strict"]["question_match"] - 100.0 * sum(r["strict_match"] for r in rows) / len(rows)) < 1e-9
    # --rescore: a report of an older metric (figures and per-turn matches spoiled here, no strict
    # block) is scored again from the files beside it; teacher-forced figures and settings stay
    path = out / "eval_train.json"
    old = json.loads(path.read_text())
    spoiled = {k: v for k, v in old.items() if k not in ("strict", "metric")}
    spoiled["question_match"] = spoiled["interaction_match"] = -1.0
    path.write_text(json.dumps(spoiled))
    (out / "predictions.jsonl").write_text("".join(json.dumps({**r, "exact_match": not r["exact_match"]}) + "\n"
                                                   for r in rows))
    r = subprocess.run([sys.executable, "-m", "text2sql", "evaluate", "--rescore", str(out), "--json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-800:]
    line = json.loads(r.stdout)
    assert line["before"]["question_match"] == -1.0 and line["question_match"] == report["question_match"]
    again = json.loads(path.read_text())
    for key in ("question_match", "interaction_match", "strict", "metric", "teacher_forced", "decoding", "by_turn"):
        assert again[key] == report[key], key
    assert [json.loads(l) for l in open(out / "predictions.jsonl")] == rows
    # predictions of another split written into the same folder since: refused, not scored wrongly
    (out / "gold_dev.txt").write_text("SELECT 1\tconcerts\n")
    (out / "eval_dev.json").write_text(json.dumps({**report, "questions": 1}))
    r = subprocess.run([sys.executable, "-m", "text2sql", "evaluate", "--rescore", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "eval_dev.json" in r.stderr and "not of this report" in r.stderr
    # a folder without a report is refused in one line, naming it
    r = subprocess.run([sys.executable, "-m", "text2sql", "evaluate", "--rescore", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and str(tmp_path) in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_ensemble_decodes_the_argmax_of_the_members_mean_distribution(trained, concert_data, tmp_path):
    a = trained.model
    ex = trained.train_ex
    # an ensemble of a model with itself is that model
    for beam in (1, 3):
        assert a.predict(ex, beam=beam, ensemble=[a]) == a.predict(ex, beam=beam)
    # two half-trained models that disagree: every greedy token (unconstrained) is the argmax of their
    # mean probability, each model reading the ensemble's own previous prediction (replayed
    # teacher-forced), and the ensemble's output is neither model's own
    b, c = (Trainer(cfg_for(concert_data, tmp_path / f"m{seed}", epochs=4, fix_bert=True, batch_size=1, seed=seed),
                    log=quiet, progress=False) for seed in (1, 2))
    for t in (b, c):
        t.run()
    b, c = b.model.eval(), c.model.eval()
    preds = b.predict(ex, ensemble=[c], max_len=30)
    assert preds != b.predict(ex, max_len=30) and preds != c.predict(ex, max_len=30)
    replay = [Example(db_id=e.db_id, unit_texts=e.unit_texts, words=e.words,
                      targets=[p + [b.vocab.eos] for p in ps], table_units=e.table_units,
                      unit_tables=e.unit_tables, unit_kinds=e.unit_kinds) for e, ps in zip(ex, preds)]
    with torch.no_grad():
        outs = [m(replay) for m in (b, c)]
    mean = torch.logsumexp(torch.stack([o.logp for o in outs]), 0)            # [Nt, L, V]
    m = outs[0].mask
    for o in outs[1:]:
        assert torch.equal(o.targets, outs[0].targets)
    short = torch.tensor([len(p) < 30 for ps in preds for p in ps])          # stopped by choice
    keep = m & short.unsqueeze(1)
    assert keep.sum() > 10
    assert torch.equal(mean.argmax(-1)[keep], outs[0].targets[keep])
    # teacher-forced figures of the ensemble are those of the mean distribution on the gold targets
    from text2sql.train import evaluate
    with torch.no_grad():
        gold = [m(ex) for m in (b, c)]
    right = torch.logsumexp(torch.stack([o.logp for o in gold]), 0).argmax(-1) == gold[0].targets
    per_turn = (right | ~gold[0].mask).all(-1).float()
    tf = evaluate(b, ex, trained.cfg, ensemble=[c])
    assert abs(tf["string_acc"] - 100 * per_turn.mean().item()) < 1e-6
    assert tf["string_acc"] != evaluate(b, ex, trained.cfg)["string_acc"] or \
        tf["token_acc"] != evaluate(b, ex, trained.cfg)["token_acc"]


def test_evaluate_command_with_an_ensemble(trained, concert_data, tmp_path):
    import json
    base = [sys.executable, "-m", "text2sql", "evaluate", "--split", "train", "--json"]
    one = subprocess.run(base + ["--run", trained.run_dir, "--out", str(tmp_path / "one")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    two = subprocess.run(base + ["--run", trained.run_dir, "--ensemble", trained.run_dir, "--out",
                                 str(tmp_path / "two")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-800:]
    r1, r2 = json.loads(one.stdout), json.loads(two.stdout)
    assert r2["decoding"]["ensemble"] == [trained.run_dir, trained.run_dir] and r1["decoding"]["ensemble"] is None
    assert r2["question_match"] == r1["question_match"]
    assert abs(r2["teacher_forced"]["token_acc"] - r1["teacher_forced"]["token_acc"]) < 1e-6
    # a run with other targets cannot join: one line, no traceback
    odd = Trainer(cfg_for(concert_data, tmp_path / "odd", epochs=1, fix_bert=True, remove_from=True),
                  log=quiet, progress=False)
    odd.run()
    bad = subprocess.run(base + ["--run", trained.run_dir, "--ensemble", odd.run_dir], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--ensemble" in bad.stderr and "Traceback" not in bad.stderr


def test_evaluate_a_runs_last_checkpoint_and_a_snapshot_ensemble(trained, tmp_path):
    """--run RUN/last.pt decodes that checkpoint with the run's config and vocabulary, into RUN/last/
    (best.pt's report in RUN/ stays); --ensemble RUN/last.pt joins it to best.pt; `runs` shows the
    last.pt report without taking it as the run's own figure; a wrong checkpoint path is one line."""
    import json
    from text2sql import runs
    from text2sql.train import evaluate, load_run
    run = trained.run_dir
    base = [sys.executable, "-m", "text2sql", "evaluate", "--split", "train", "--json"]
    last = subprocess.run(base + ["--run", os.path.join(run, "last.pt")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert last.returncode == 0, last.stderr[-800:]
    r = json.loads(last.stdout)
    ck = r["decoding"]["checkpoint"]
    epochs = [json.loads(l)["epoch"] for l in open(os.path.join(run, "metrics.jsonl"))]
    assert ck["file"] == "last.pt" and ck["epoch"] == max(epochs) == 25
    assert os.path.exists(os.path.join(run, "last", "eval_train.json"))
    assert not os.path.exists(os.path.join(run, "eval_train.json"))
    # the teacher-forced figures are last.pt's own, computed here in-process
    model, cfg, _ = load_run(os.path.join(run, "last.pt"))
    assert model.checkpoint["file"] == "last.pt"
    tf = evaluate(model, trained.train_ex, cfg)
    assert abs(tf["token_acc"] - r["teacher_forced"]["token_acc"]) < 1e-6
    # a snapshot ensemble: best.pt with last.pt
    snap = subprocess.run(base + ["--run", run, "--ensemble", os.path.join(run, "last.pt"), "--out",
                                  str(tmp_path / "snap")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert snap.returncode == 0, snap.stderr[-800:]
    d = json.loads(snap.stdout)["decoding"]
    assert d["checkpoint"]["file"] == "best.pt" and [c["file"] for c in d["ensemble_checkpoints"]] == ["last.pt"]
    # `runs`: the report names its checkpoint, is current, and is not the run's own figure
    rep = [x for x in runs.load_run(run).reports if x.path == os.path.join("last", "eval_train.json")]
    assert len(rep) == 1 and rep[0].checkpoint == "last.pt" and not rep[0].stale
    assert "last.pt" in rep[0].describe() and not rep[0].own
    # a checkpoint that is not there, or a file that is not one: one line, no traceback
    for wrong in (os.path.join(run, "epoch3.pt"), os.path.join(run, "config.json")):
        bad = subprocess.run(base + ["--run", wrong], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert bad.returncode != 0 and wrong in bad.stderr and "Traceback" not in bad.stderr, bad.stderr[-800:]


def test_grammar_puts_tables_exactly_after_from_and_join(concert_schema):
    from text2sql.train import table_units
    v, g, size, ids, _ = _grammar_probe(concert_schema)
    g.tables = [table_units(concert_schema)]
    table_ids = [len(v) + j for j in table_units(concert_schema)]
    after_from = g.allowed(ids(["select", "singer.name", "from"]), size)
    assert after_from[table_ids].all() and after_from[v.index["("]]
    assert after_from.sum() == len(table_ids) + 1           # no column, no keyword
    after_select = g.allowed(ids(["select"]), size)
    assert not after_select[table_ids].any() and after_select[len(v) + concert_schema.unit_index("singer.name")]


def test_evaluate_on_the_shipped_tiny_data_reports_execution_accuracy(tmp_path):
    import json
    from conftest import ROOT
    from text2sql.config import TrainConfig
    cfg = TrainConfig(bert="tiny", tiny_dataset=4, fix_bert=True, epochs=40, decoder_size=64, turn_size=64,
                      dropout=0.0, lr=2e-3, run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"))
    tr = Trainer(cfg, log=quiet, progress=False).run()
    p = subprocess.run([sys.executable, "-m", "text2sql", "evaluate", "--run", tr.run_dir, "--split", "train",
                        "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-800:]
    r = json.loads(p.stdout)
    assert r["exec_acc"] is not None and 0.0 <= r["exec_acc"] <= 100.0
    assert r["by_hardness"]["all"]["count"] == sum(len(e) for e in tr.train_ex)
    # the shipped databases make execution accuracy real; the model learned some turns exactly
    rows = [json.loads(l) for l in open(os.path.join(tr.run_dir, "predictions.jsonl"))]
    assert any(r_["exact_match"] for r_ in rows)
    # re-scoring finds the databases the report names: execution accuracy is measured again, the same
    q = subprocess.run([sys.executable, "-m", "text2sql", "evaluate", "--rescore", tr.run_dir, "--json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert q.returncode == 0, q.stderr[-800:]
    again = json.load(open(os.path.join(tr.run_dir, "eval_train.json")))
    assert again["exec_acc"] == r["exec_acc"] and again["question_match"] == r["question_match"]


def test_conversation_encodes_each_turn_once_and_predicts_as_a_fresh_pass(concert_data, concert_schema, tmp_path):
    """predict's Conversation over a fine-tuned (not frozen) model: question n costs one encoder row,
    not n + 1, and gives what decoding the whole conversation afresh gives."""
    from text2sql.inference import Conversation
    from text2sql.model import Example
    from text2sql.train import table_units
    tr = Trainer(cfg_for(concert_data, tmp_path, cache_dir=""), log=quiet, progress=False)
    model = tr.model
    assert not model.encoder.fixed
    rows = []
    forward = model.encoder.forward
    model.encoder.forward = lambda utts, units, **kw: rows.append(len(utts)) or forward(utts, units, **kw)
    questions = ["Show all singers.", "Which of them are older than 30?", "Sort them by age."]
    talk = Conversation(model, concert_schema, beam=1, constrained=True)
    asked = [talk.ask(q) for q in questions]
    assert sum(rows) == 1 + len(questions)          # the pre-turn and each question, once
    model.encoder.fix(False)
    model._cache.clear()
    ex = Example(db_id="concerts", unit_texts=concert_schema.unit_natural, words=talk.words,
                 targets=[[] for _ in questions], table_units=table_units(concert_schema))
    assert model.predict([ex], constrained=True)[0] == asked


def _grammar_refusals(data_dir, remove_from, protocol="official"):
    """(gold tokens refused, tokens checked) over every gold target of a data directory."""
    from text2sql.train import load_data, make_examples
    from text2sql.vocab import Vocab
    cfg = TrainConfig(data=data_dir, remove_from=remove_from, protocol=protocol)
    train, valid, schemas, targets = load_data(cfg, log=quiet)
    vocab = Vocab.build([t for i in train for t in targets[id(i)]], [schemas[i.db_id] for i in train])
    g = Grammar(vocab, from_less=remove_from)
    refused, checked = [], 0
    for ex in make_examples(train + valid, schemas, targets, vocab):
        g.tables = [ex.table_units]
        size = len(vocab) + len(ex.unit_texts)
        for toks, ids in zip(ex.tokens, ex.targets):
            for i in range(len(ids)):
                if ids[i] == vocab.unk:     # a literal the training split never had: no grammar question
                    break
                checked += 1
                if not g.allowed(ids[:i], size)[ids[i]]:
                    refused.append((ex.db_id, " ".join(toks), i))
                    break
    return refused, checked


@pytest.mark.parametrize("remove_from", [False, True])
def test_grammar_never_refuses_a_gold_token_of_the_shipped_data(remove_from):
    refused, checked = _grammar_refusals(os.path.join(ROOT, "data", "spider_cosql", "tiny"), remove_from)
    assert checked > 500 and not refused, refused[:3]


@pytest.mark.parametrize("remove_from", [False, True])
def test_grammar_never_refuses_a_gold_token_of_sparc_dev(remove_from):
    from conftest import shared_path
    d = os.path.dirname(shared_path("sparc", "dev.json"))
    refused, checked = _grammar_refusals(d, remove_from, protocol="db_split")    # all of dev.json
    # One exception, by design: a self-join's gold ("select T1.name , T2.name from friend join
    # highschooler AS T1 ... join highschooler AS T2") reads "highschooler.name , highschooler.name"
    # once aliases are gone, an item repeating the one before, which the grammar refuses. Tokens
    # without aliases cannot say which copy of the table a column is from, so that SQL is lost anyway.
    def self_join(query):
        toks = query.split()
        tables = [toks[i + 1] for i, t in enumerate(toks[:-1]) if t in ("from", "join")]
        return len(tables) != len(set(tables))
    assert checked > 10000 and len(refused) <= 1 and all(self_join(q) for _, q, _ in refused), refused[:3]


def test_decode_valid_logs_decoded_match_and_keeps_the_best_match_checkpoint(concert_data, tmp_path):
    """--decode_valid decodes the validation set at each validation, as `evaluate` does: its logged
    question/interaction match is what `evaluate --run RUN/best_match.pt` reports for the checkpoint
    it kept (the averaged weights with --ema, saved with the raw ones), that checkpoint is the epoch
    with the best (question, interaction) match, and a resume keeps the best so far."""
    import json
    cfg = cfg_for(concert_data, tmp_path, epochs=10, fix_bert=True, batch_size=1, ema=0.9, decode_valid=1)
    Trainer(cfg, log=quiet, progress=False).run()
    run = cfg.run_dir
    rows = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
    dec = [r for r in rows if r["split"] == "valid_decoded"]
    assert [r["epoch"] for r in dec] == list(range(1, 11))
    assert all(r["beam"] == 1 and r["turns"] == 5 for r in dec)     # dev: the first 2 interactions
    top = max(dec, key=lambda r: (r["question_match"], r["interaction_match"], -r["epoch"]))
    ck = torch.load(os.path.join(run, "best_match.pt"), map_location="cpu", weights_only=False)
    assert ck["epoch"] == top["epoch"] and ck["best_match"] == [top["question_match"], top["interaction_match"]]
    assert "ema" in ck and set(ck["model"]) >= set(ck["ema"]["weights"])
    out = subprocess.run([sys.executable, "-m", "text2sql", "evaluate", "--run", os.path.join(run, "best_match.pt"),
                          "--beam", "1", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-800:]
    r = json.loads(out.stdout)
    assert r["decoding"]["checkpoint"]["epoch"] == top["epoch"]
    assert abs(r["question_match"] - top["question_match"]) < 1e-9
    assert abs(r["interaction_match"] - top["interaction_match"]) < 1e-9
    # a resume reads the best match so far from last.pt and only a better one replaces best_match.pt
    again = Trainer(TrainConfig(resume=run, epochs=12), log=quiet, progress=False)
    assert again.best_match == [top["question_match"], top["interaction_match"]]
    again.run()
    rows = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
    dec = [r for r in rows if r["split"] == "valid_decoded"]
    assert [r["epoch"] for r in dec] == list(range(1, 13))
    top = max(dec, key=lambda r: (r["question_match"], r["interaction_match"], -r["epoch"]))
    ck = torch.load(os.path.join(run, "best_match.pt"), map_location="cpu", weights_only=False)
    assert ck["epoch"] == top["epoch"]
    # compare's plot gains a panel of the decoded curve
    import matplotlib.axes
    from text2sql.__main__ import main
    drawn = []
    real_plot = matplotlib.axes.Axes.plot

    def spy(self, *args, **kw):
        drawn.append((list(args[1]) if len(args) > 1 else None, kw.get("label", "")))
        return real_plot(self, *args, **kw)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(matplotlib.axes.Axes, "plot", spy)
        assert main(["compare", run, "--plot", str(tmp_path / "decoded.png")]) == 0
    assert [ys for ys, label in drawn if label.endswith("(greedy)")] == [[r["question_match"] for r in dec]]
    with pytest.raises(ConfigError, match="--decode_valid"):
        TrainConfig(decode_valid=-1).check()
