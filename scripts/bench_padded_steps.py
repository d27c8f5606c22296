"""Teacher forcing with and without skipping the steps past each target's end, in one process.

    python scripts/bench_padded_steps.py [--interactions 96] [--batch_size 16] [--repeats 3] [--recipe]

Times training steps (forward, backward, optimiser) with ``--fix_bert`` and a warm cache on the
SParC-dev database split's training side (the shipped tiny set where ../shared is absent),
alternating the two decoder paths pass by pass: ``Decoder._outputs_stepped`` given the targets'
lengths (the default since commit ba6846d), and the same with the lengths withheld, which runs
every row for every step. ``--recipe`` adds the flags of scripts/train_sparc.sh. Prints the best
pass of each, their ratio, and a JSON line. Not a test: nothing here passes or fails; the figures
in docs/performance.md ("Skipping the steps past each target's end") came from it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts.bench_common import machine  # noqa: E402
from scripts.bench_train import trainer  # noqa: E402

RECIPE = dict(remove_from=True, bert_layers=7, bert_mix=True, utterance_rnn=True, unit_types=True,
              previous_tables=True, label_smoothing=0.1, ema=0.999, max_turn=5)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interactions", type=int, default=96)
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--recipe", action="store_true", help="the flags of scripts/train_sparc.sh")
    ap.add_argument("--cache_dir", default=".cache/encoder")
    args = ap.parse_args()
    import text2sql.decoder as D
    from text2sql.metrics import Meter
    tr = trainer(True, tempfile.mkdtemp(), args.cache_dir, **(RECIPE if args.recipe else {}))
    ex = tr.train_ex[:args.interactions]
    batches = [ex[i:i + args.batch_size] for i in range(0, len(ex), args.batch_size)]
    tr.cfg.batch_size = args.batch_size
    meter = Meter(len(tr.vocab))
    skipping = D.Decoder._outputs_stepped

    def every_step(self, turn_state, emb, mem, lengths=None):
        return skipping(self, turn_state, emb, mem, None)

    for b in batches[:2]:                  # warm-up: allocator, caches
        tr.train_step(b, meter)
    seconds = {"every_step": [], "skipping": []}
    try:
        for _ in range(args.repeats):
            for name, fn in (("every_step", every_step), ("skipping", skipping)):
                D.Decoder._outputs_stepped = fn
                t0 = time.perf_counter()
                for b in batches:
                    tr.train_step(b, meter)
                seconds[name].append(time.perf_counter() - t0)
    finally:
        D.Decoder._outputs_stepped = skipping
    turns = sum(len(e) for e in ex)
    figures = {f"{k}_turns_s": round(turns / min(v), 1) for k, v in seconds.items()}
    figures["ratio"] = round(figures["skipping_turns_s"] / figures["every_step_turns_s"], 2)
    figures.update(machine=machine(), recipe=args.recipe, batch_size=args.batch_size, turns=turns)
    print(machine())
    for k, v in seconds.items():
        print(f"{k}: passes {', '.join(f'{s:.1f}' for s in v)} s; best {turns / min(v):.1f} turns/s")
    print(f"ratio {figures['ratio']}x")
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
