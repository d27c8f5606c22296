"""Peak memory and step time of fine-tuning on SParC's longest schemas, with and without
``--grad_checkpointing``.

    python scripts/bench_memory.py [--batch_size N] [--device cpu] [--no_doc]

A training epoch's peak memory is set by its heaviest batch: the interactions whose turns carry the
most word pieces (every turn re-reads its whole schema, in several 512-piece passes on the big
databases). This takes the ``--batch_size`` heaviest interactions of SParC train.json and runs two
training steps on them (BERT in training mode, dropout on) in a fresh process per setting (so each peak is its own), reporting the peak
resident memory (CPU) or peak allocated memory (GPU) and the second step's time. It also prints the
word pieces per turn of train.json and dev.json: the reason fine-tuning runs slower on train than the
dev-based figures of ``bench_train.py`` suggest. Needs ``../shared/data/sparc``. Not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts.bench_common import SPARC, commit, machine, table, word_pieces, write_section  # noqa: E402

SETTINGS = {"finetune": dict(), "finetune + --grad_checkpointing": dict(grad_checkpointing=True),
            "finetune + --bert_attention_dropout 0": dict(bert_attention_dropout=0.0),
            "finetune + --bert_attention_dropout 0 --grad_checkpointing":
                dict(bert_attention_dropout=0.0, grad_checkpointing=True),
            "--fix_bert (cache in memory)": dict(fix_bert=True)}
# (setting, batch size). Fine-tuning without checkpointing stops at batch 2: on a 24 GiB machine batch 8 of the
# heaviest interactions would not fit (about 7 GiB per heavy interaction on CPU, where BERT's
# attention with dropout runs PyTorch's math kernel and keeps every [heads, T, T] matrix).
PLAN = [("finetune", 2), ("finetune + --grad_checkpointing", 2), ("finetune + --bert_attention_dropout 0", 2),
        ("finetune + --bert_attention_dropout 0 --grad_checkpointing", 2), ("--fix_bert (cache in memory)", 2),
        ("finetune + --grad_checkpointing", 8), ("finetune + --bert_attention_dropout 0 --grad_checkpointing", 8),
        ("--fix_bert (cache in memory)", 8)]


def child(name: str, batch_size: int, device: str) -> dict:
    import torch
    from scripts.bench_train import trainer
    from text2sql.metrics import Meter
    flags = dict(SETTINGS[name])
    tr = trainer(flags.pop("fix_bert", False), tempfile.mkdtemp(prefix="bench_memory_"), "", device,
                 data=dict(data=SPARC, protocol="official"), **flags)
    per_ex = [sum(word_pieces(tr, [e])) for e in tr.train_ex]
    heavy = sorted(range(len(per_ex)), key=per_ex.__getitem__, reverse=True)[:batch_size]
    batch = [tr.train_ex[i] for i in heavy]
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    meter = Meter(len(tr.vocab))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    tr.train_step(batch, meter)
    t0 = time.perf_counter()
    tr.train_step(batch, meter)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    out = {"setting": name, "step_s": round(secs, 2), "turns": sum(len(e) for e in batch),
           "pieces": sum(per_ex[i] for i in heavy),
           "rss_before_gib": round(base_rss, 2),
           "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)}
    if device.startswith("cuda"):
        out["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    if name == "finetune":
        train = word_pieces(tr, tr.train_ex)
        valid = word_pieces(tr, tr.valid_ex)
        out["pieces_per_turn_train"] = round(sum(train) / len(train), 1)
        out["pieces_per_turn_dev"] = round(sum(valid) / len(valid), 1)
        out["pieces_per_turn_train_max"] = max(train)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch_size", type=int, help="one batch size for every setting (default: the plan "
                                                   "in PLAN, batch 2 and 8)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no_doc", action="store_true", help="do not rewrite docs/performance.md")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.batch_size, args.device)))
        return
    if not os.path.exists(SPARC):
        sys.exit(f"bench_memory: needs SParC at {SPARC}")
    fig: dict = {"machine": machine(), "commit": commit(), "device": args.device}
    print(fig["machine"])
    plan = [(name, args.batch_size) for name in SETTINGS] if args.batch_size else PLAN
    rows, results = [], []
    for name, bs in plan:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", name, "--batch_size",
                               str(bs), "--device", args.device], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"bench_memory: {name}, batch {bs} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        key = (name.split()[0].strip("-") + ("_att0" if "attention_dropout 0" in name else "")
               + ("_ckpt" if "checkpointing" in name else "") + f"_b{bs}")
        fig[f"{key}_peak_rss_gib"] = r["peak_rss_gib"]
        fig[f"{key}_step_s"] = r["step_s"]
        if "peak_gpu_gib" in r:
            fig[f"{key}_peak_gpu_gib"] = r["peak_gpu_gib"]
        for k in ("pieces_per_turn_train", "pieces_per_turn_dev", "pieces_per_turn_train_max"):
            if k in r:
                fig[k] = r[k]
        peak = f"{r['peak_rss_gib']:.2f}" + (f" (GPU {r['peak_gpu_gib']:.2f})" if "peak_gpu_gib" in r else "")
        rows.append([name, bs, f"{r['turns']} / {r['pieces']}", peak, f"{r['rss_before_gib']:.2f}", f"{r['step_s']:.1f}",
                     f"{r['turns'] / r['step_s']:.2f}"])
        print(f"{name}, batch {bs}: peak {peak} GiB (before the steps {r['rss_before_gib']:.2f}), step {r['step_s']:.1f} s "
              f"over {r['turns']} turns, {r['pieces']} word pieces")
    print(f"word pieces per turn: train.json {fig['pieces_per_turn_train']} (max {fig['pieces_per_turn_train_max']}), "
          f"dev.json {fig['pieces_per_turn_dev']}")
    if not args.no_doc:
        md = (f"## Memory on long schemas (`scripts/bench_memory.py`)\n\nMachine: {fig['machine']}; commit "
              f"`{fig['commit']}`; device {args.device}. One training step (the second of two; BERT in training "
              "mode) on the B SParC train.json interactions with the most word pieces (the heaviest batch an "
              "epoch can draw), each row in its own process:\n\n"
              + table(rows, ["setting", "B", "turns / word pieces", "peak memory GiB", "GiB before the steps",
                             "step s", "turns/s"])
              + f"\n\nWord pieces BERT reads per turn (utterance + whole schema, all passes): train.json "
              f"{fig['pieces_per_turn_train']} on average (at most {fig['pieces_per_turn_train_max']}), dev.json "
              f"{fig['pieces_per_turn_dev']}.")
        write_section("bench_memory", md, fig)
    print(json.dumps(fig, sort_keys=True))


if __name__ == "__main__":
    main()
