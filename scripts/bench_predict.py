"""Prediction latency per turn, as the ``predict`` command sees it (``inference.Conversation``): a
conversation in progress, one new question at a time (its earlier turns are neither encoded nor
decoded again).

    python scripts/bench_predict.py --run RUN_DIR [--interactions 60] [--no_doc]

Replays the run's validation interactions (or the shipped tiny dev set) turn by turn: each turn is
encoded (nothing of it in any cache: a new question), decoded greedily and with beam 4, grammar
constraints on, and turned into SQL. Prints p50/p95 per turn for both, a final JSON line, and
rewrites its section of docs/performance.md. Without --run it trains nothing: it uses a freshly
initialised default model, whose decoding runs to the length limit, a pessimistic figure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts.bench_common import commit, machine, table, write_section  # noqa: E402


def load(run: str | None, device: str):
    from text2sql.config import TrainConfig
    from text2sql.train import Trainer, load_run
    if run:
        model, cfg, vocab = load_run(run, device=device)
        from text2sql.inference import _split_interactions
        from text2sql.train import make_examples
        items, schemas, targets = _split_interactions(cfg, None, "dev")
        return model, make_examples(items, schemas, targets, vocab), schemas, vocab, run
    import tempfile
    tr = Trainer(TrainConfig(epochs=0, cache_dir="", run_dir=tempfile.mkdtemp(), device=device),
                 log=lambda *a: None, progress=False)
    return tr.model, tr.valid_ex, tr.schemas, tr.vocab, "untrained default model"


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[k]


def replay(model, examples, schemas, vocab, beam: int) -> list[float]:
    from text2sql.decoding import ids_to_sql
    from text2sql.inference import Conversation
    model.disk_cache = None
    out = []
    for ex in examples:
        model._cache.clear()           # a new conversation: none of its turns encoded yet
        talk = Conversation(model, schemas[ex.db_id], beam=beam, constrained=True)
        for words in ex.words:
            t0 = time.perf_counter()
            ids_to_sql(talk.ask(words), vocab, schemas[ex.db_id])
            out.append(time.perf_counter() - t0)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a run folder written by train (default: an untrained model)")
    ap.add_argument("--interactions", type=int, default=60)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no_doc", action="store_true")
    args = ap.parse_args(argv)
    model, examples, schemas, vocab, what = load(args.run, args.device)
    examples = examples[:args.interactions]
    fig: dict = {"machine": machine(), "commit": commit(), "model": what,
                 "turns": sum(len(e) for e in examples)}
    print(f"{fig['machine']}; {what}; {fig['turns']} turns")
    replay(model, examples[:2], schemas, vocab, 1)                 # warm-up
    rows = []
    for name, beam in (("greedy", 1), ("beam4", 4)):
        lat = replay(model, examples, schemas, vocab, beam)
        p50, p95 = 1000 * percentile(lat, 50), 1000 * percentile(lat, 95)
        fig[f"{name}_p50_ms"], fig[f"{name}_p95_ms"] = round(p50, 1), round(p95, 1)
        rows.append([name, f"{p50:.0f}", f"{p95:.0f}"])
        print(f"{name}: per turn p50 {p50:.0f} ms, p95 {p95:.0f} ms")
    if not args.no_doc:
        md = (f"## Prediction latency (`scripts/bench_predict.py`)\n\nMachine: {fig['machine']}; commit "
              f"`{fig['commit']}`; model: {what}; {fig['turns']} turns of {len(examples)} validation "
              "interactions replayed as conversations (each turn a new question: encoded, decoded with "
              "grammar constraints, turned into SQL; earlier turns not decoded again).\n\n"
              + table(rows, ["decoding", "p50 ms per turn", "p95 ms per turn"]))
        write_section("bench_predict", md, fig)
    print(json.dumps(fig, sort_keys=True))


if __name__ == "__main__":
    main()
