"""Training speed: batched interactions against EditSQL's regime (batch 1, turn by turn).

    python scripts/bench_train.py [--interactions 48] [--no_doc]

On the SParC-dev database split's training side (the shipped tiny set where ../shared is absent),
with the default encoder, it measures in one run:
  - training turns/s: batch 1 turn by turn (``--unbatched``, the EditSQL regime), then batches of 8
    and 16 interactions, fine-tuning (BERT in training mode, with and without its attention dropout)
    and with ``--fix_bert`` (warm encoder cache), and ``--fix_bert --no_input_feeding`` (the decoder
    whose teacher forcing runs in one pass). With ``--fix_bert`` the EditSQL regime is timed
    twice: as EditSQL runs it, the frozen BERT reading every turn again (``speedup_fix_bert`` is
    against this), and with the cache too (``speedup_fix_bert_batching_only``);
  - the same with ``--amp`` (bf16 autocast) where the device has bf16 units (a GPU, or a CPU
    whose oneDNN reports bf16 support, such as AVX512-BF16 or AMX): its ``speedup_*_amp`` are
    against EditSQL's regime as EditSQL runs it, in float32; ``*_same_precision`` against that
    regime under --amp too;
  - where --amp is timed on a CPU, the first and second call of a bf16 and a float32 product at
    shapes not seen before (oneDNN builds a bf16 kernel per shape, paid at every new batch);
  - the share of a fine-tuning step spent outside the encoder (forward + backward);
  - an epoch over SParC dev.json (1,203 turns) with ``--fix_bert`` and a warm cache;
  - peak resident memory of the process;
  - with a GPU: an epoch over dev.json fine-tuning in bf16 and the encoder's share of the GPU's
    matrix throughput.
Prints the figures, a final JSON line with all of them, and rewrites its section of
docs/performance.md. Not a test: nothing here passes or fails.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts.bench_common import SPARC, commit, machine, table, word_pieces, write_section  # noqa: E402

# dense bf16 matrix throughput of known GPUs (TFLOP/s, without sparsity), for the achieved share
PEAK_BF16 = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def quiet(*a, **k):
    pass


def trainer(fix_bert: bool, run_root: str, cache: str, device: str = "cpu", amp: bool = False, data=None,
            **extra):
    from text2sql.config import TrainConfig
    from text2sql.train import Trainer
    if data is None:
        data = dict(data=SPARC, protocol="db_split") if os.path.exists(SPARC) else {}
    cfg = TrainConfig(**data, fix_bert=fix_bert, epochs=1, batch_size=1, device=device, amp=amp,
                      cache_dir=cache, run_dir=tempfile.mkdtemp(dir=run_root), train_eval_size=1, **extra)
    return Trainer(cfg, log=quiet, progress=False)


def sync(device: str):
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_seconds(tr, examples, batch_size: int, unbatched: bool = False) -> float:
    """Seconds of training steps over ``examples`` in batches, after one untimed warm-up step
    (allocator, caches, kernels)."""
    from text2sql.metrics import Meter
    tr.cfg.batch_size, tr.cfg.unbatched = batch_size, unbatched
    batches = [examples[i:i + batch_size] for i in range(0, len(examples), batch_size)]
    meter = Meter(len(tr.vocab))
    tr.train_step(batches[0], meter)
    sync(tr.cfg.device)
    t0 = time.perf_counter()
    for b in batches:
        tr.train_step(b, meter)
    sync(tr.cfg.device)
    return time.perf_counter() - t0


def turns_per_s(tr, examples, batch_size: int, unbatched: bool, min_seconds: float = 5.0) -> float:
    """Turns per second over whole passes of ``examples``, repeated until ``min_seconds`` have
    been timed: one pass of 48 interactions at batch 16 is 3 steps (under a second with
    --fix_bert), and single passes that short moved by up to 2x from one call to the next.
    Each pass takes the interactions in another order, as ``--shuffle`` epochs do, so that its
    batches, and so the shapes of their tensors, are new: passes over the same batches would
    time only kernels already built for those shapes (oneDNN's bf16 products build one per shape)."""
    import random
    turns, seconds, order = 0, 0.0, list(examples)
    rng = random.Random(0)
    while seconds < min_seconds:
        seconds += train_seconds(tr, order, batch_size, unbatched)
        turns += sum(len(e) for e in order)
        rng.shuffle(order)
    return turns / seconds


def new_shape_ms(dtype, rows=range(20, 84), k: int = 1200, n: int = 600) -> tuple[float, float]:
    """(first call, second call) of a ``[M, k] x [k, n]`` product (the decoder's recurrent step), in
    ms averaged over the row counts M: a training batch brings row counts not seen before, and
    where the first call builds a kernel for the shape (oneDNN's bf16 matmul on a CPU), that cost
    is paid at every new batch."""
    import torch
    w = torch.randn(k, n).to(dtype)
    first = again = 0.0
    for m in rows:
        a = torch.randn(m, k).to(dtype)
        t0 = time.perf_counter()
        a @ w
        t1 = time.perf_counter()
        a @ w
        first, again = first + t1 - t0, again + time.perf_counter() - t1
    return 1e3 * first / len(rows), 1e3 * again / len(rows)


def warm_cache(tr, examples):
    """Encode ``examples`` once, untimed: the figures are for later epochs and later runs."""
    import torch
    with torch.no_grad():
        for i in range(0, len(examples), 32):
            tr.model.encode(tr.model.rows_of(examples[i:i + 32]))


def encoder_seconds(tr, examples, batch_size: int) -> float:
    """Forward + backward of the encoder alone over the same batches as a training epoch."""
    model = tr.model
    rows = [model.rows_of(examples[i:i + batch_size]) for i in range(0, len(examples), batch_size)]
    t0 = time.perf_counter()
    for r in rows:
        _, words, units = zip(*r)
        out = model.encoder(list(words), list(units))
        (out.utterance.sum() + out.units.sum()).backward()
    sync(tr.cfg.device)
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def dev_epoch(fix_bert: bool, run_root: str, cache: str, device: str, amp: bool, batch_size: int = 16):
    """Seconds of one training epoch over SParC dev.json (the cache warmed first, untimed)."""
    from text2sql.metrics import Meter
    from text2sql.train import batches
    tr = trainer(fix_bert, run_root, cache, device, amp,
                 data=dict(data=os.path.join(SPARC, "dev.json"), tables=os.path.join(SPARC, "tables.json")))
    tr.cfg.batch_size = batch_size
    if fix_bert:
        warm_cache(tr, tr.train_ex)
    meter = Meter(len(tr.vocab))
    sync(device)
    t0 = time.perf_counter()
    for b in batches(tr.train_ex, tr.cfg, 0):
        tr.train_step(b, meter)
    sync(device)
    return time.perf_counter() - t0, sum(len(e) for e in tr.train_ex), tr


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interactions", type=int, default=48, help="training interactions timed per setting")
    ap.add_argument("--device", default="cuda" if os.environ.get("BENCH_CUDA") else "cpu")
    ap.add_argument("--no_doc", action="store_true", help="do not rewrite docs/performance.md")
    args = ap.parse_args(argv)
    import torch
    fig: dict = {"machine": machine(), "commit": commit(), "device": args.device}
    run_root = tempfile.mkdtemp(prefix="bench_train_")
    cache = os.path.join(run_root, "cache")
    print(fig["machine"])
    rows = []
    # BERT trains in training mode (dropout on), as in a real run; on CPU its attention dropout
    # forces PyTorch's unfused attention kernel, hence the row without it
    modes = [("finetune", False, {}), ("finetune_att0", False, {"bert_attention_dropout": 0.0}),
             ("fix_bert", True, {}), ("fix_bert_no_input_feeding", True, {"no_input_feeding": True})]
    from text2sql.tensors import has_bf16
    amp_ok = has_bf16(args.device)    # elsewhere autocast emulates bf16, slower: the rows are left out
    fig["bf16_units"] = amp_ok
    if amp_ok:
        modes += [("finetune_amp", False, {"amp": True}),
                  ("finetune_att0_amp", False, {"amp": True, "bert_attention_dropout": 0.0}),
                  ("fix_bert_amp", True, {"amp": True})]
    for mode, fix, extra in modes:
        tr = trainer(fix, run_root, cache, args.device, **extra)
        ex = tr.train_ex[:args.interactions]
        if fix:
            warm_cache(tr, ex)
        base = turns_per_s(tr, ex, 1, unbatched=True)
        b1 = turns_per_s(tr, ex, 1, unbatched=False)
        b8 = turns_per_s(tr, ex, 8, unbatched=False)
        b16 = turns_per_s(tr, ex, 16, unbatched=False)
        best = max(b8, b16)
        fig.update({f"{mode}_turns_s_editsql_b1": round(base, 2), f"{mode}_turns_s_b1": round(b1, 2),
                    f"{mode}_turns_s_b8": round(b8, 2), f"{mode}_turns_s_b16": round(b16, 2),
                    f"speedup_{mode}": round(best / base, 2)})
        label = mode
        if extra.get("amp"):
            # EditSQL trains in float32: the headline ratio is against its regime as it runs
            fp32 = mode[:-len("_amp")]
            ref = fig[f"{fp32}_turns_s_editsql_nocache_b1" if fix else f"{fp32}_turns_s_editsql_b1"]
            fig.update({f"speedup_{mode}": round(best / ref, 2), f"speedup_{mode}_same_precision": round(best / base, 2)})
            rows.append([f"{mode} (--amp; EditSQL regime under --amp too)", f"{base:.1f}", f"{b1:.1f}", f"{b8:.1f}",
                         f"{b16:.1f}", f"{best / base:.1f}× ({best / ref:.1f}× against EditSQL's float32 regime"
                         + (", without the cache)" if fix else ")")])
            print(f"{mode}: turns/s  EditSQL regime under --amp {base:.1f} | batch 1 {b1:.1f} | batch 8 {b8:.1f} | "
                  f"batch 16 {b16:.1f} | speedup {best / base:.1f}x, {best / ref:.1f}x against EditSQL's float32 regime")
            del tr
            continue
        if extra.get("no_input_feeding"):
            # another decoder than EditSQL's (which feeds its attention back in): its own batch-1
            # regime is the fair ratio; the one against EditSQL's regime is what a user gains
            ref = fig["fix_bert_turns_s_editsql_nocache_b1"]
            fig.update({f"speedup_{mode}_against_editsql": round(best / ref, 2)})
            rows.append(["fix_bert, --no_input_feeding (its own batch-1 regime with the cache)", f"{base:.1f}",
                         f"{b1:.1f}", f"{b8:.1f}", f"{b16:.1f}",
                         f"{best / base:.1f}× ({best / ref:.1f}× against EditSQL's regime without the cache)"])
            print(f"{mode}: turns/s  batch 1 turn by turn {base:.1f} | batch 1 {b1:.1f} | batch 8 {b8:.1f} | "
                  f"batch 16 {b16:.1f} | speedup {best / base:.1f}x, {best / ref:.1f}x against EditSQL's regime")
            del tr
            continue
        if fix:
            # EditSQL has no cache: its frozen BERT reads every turn again, every epoch. The cached
            # figure above gives batching's share of the speed-up alone.
            tr.model.memoise = False
            nocache = turns_per_s(tr, ex, 1, unbatched=True)
            tr.model.memoise = True
            fig.update({"fix_bert_turns_s_editsql_nocache_b1": round(nocache, 2),
                        "speedup_fix_bert": round(best / nocache, 2),
                        "speedup_fix_bert_batching_only": round(best / base, 2)})
            rows.append(["fix_bert (EditSQL regime without the cache, as EditSQL runs)", f"{nocache:.1f}",
                         f"{b1:.1f}", f"{b8:.1f}", f"{b16:.1f}", f"{best / nocache:.1f}×"])
            print(f"fix_bert: EditSQL regime without the cache {nocache:.1f} turns/s | speedup {best / nocache:.1f}x")
            label = "fix_bert (the cache on both sides: batching alone)"
        rows.append([label, f"{base:.1f}", f"{b1:.1f}", f"{b8:.1f}", f"{b16:.1f}", f"{best / base:.1f}×"])
        print(f"{mode}: turns/s  EditSQL regime (batch 1, turn by turn) {base:.1f} | batch 1 {b1:.1f} | "
              f"batch 8 {b8:.1f} | batch 16 {b16:.1f} | speedup {best / base:.1f}x")
        if mode == "finetune":
            step = train_seconds(tr, ex, 16)
            enc = encoder_seconds(tr, ex, 16)
            fig["finetune_share_outside_encoder_b16"] = round(max(0.0, 1 - enc / step), 3)
            print(f"fine-tuning, batch 16: step {step:.2f} s over {len(ex)} interactions, encoder forward+backward "
                  f"{enc:.2f} s -> {100 * fig['finetune_share_outside_encoder_b16']:.0f}% of the step outside the encoder")
        del tr
    if amp_ok and not args.device.startswith("cuda"):
        for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            first, again = new_shape_ms(dt)
            fig.update({f"{name}_matmul_new_shape_ms": round(first, 3), f"{name}_matmul_same_shape_ms": round(again, 3)})
        print(f"[M, 1200] x [1200, 600] over 64 new row counts M: float32 {fig['fp32_matmul_new_shape_ms']:.2f} ms "
              f"first call, {fig['fp32_matmul_same_shape_ms']:.2f} ms again; bf16 {fig['bf16_matmul_new_shape_ms']:.2f} "
              f"ms first call, {fig['bf16_matmul_same_shape_ms']:.2f} ms again")
    if os.path.exists(SPARC):
        secs, turns, _ = dev_epoch(True, run_root, cache, args.device, False)
        fig.update({"dev_epoch_fix_bert_warm_s": round(secs, 1), "dev_epoch_turns": turns})
        print(f"epoch over SParC dev.json ({turns} turns), --fix_bert, warm cache, batch 16: {secs:.1f} s")
        if amp_ok and not args.device.startswith("cuda"):
            secs, _, _ = dev_epoch(True, run_root, cache, args.device, True)
            fig["dev_epoch_fix_bert_amp_warm_s"] = round(secs, 1)
            print(f"the same with --amp: {secs:.1f} s")
    if args.device.startswith("cuda") and os.path.exists(SPARC):
        secs, turns, tr = dev_epoch(False, run_root, cache, args.device, True)
        fig["gpu_dev_epoch_finetune_bf16_s"] = round(secs, 1)
        # achieved encoder throughput: 6 FLOPs per parameter per word piece (forward + backward)
        n_params = sum(p.numel() for p in tr.model.encoder.bert.parameters())
        pieces = sum(word_pieces(tr, tr.train_ex))
        enc = encoder_seconds(tr, tr.train_ex, 16)
        tflops = 6 * n_params * pieces / enc / 1e12
        name = torch.cuda.get_device_name(0)
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        fig["gpu_encoder_tflops"] = round(tflops, 2)
        if peak:
            fig["gpu_encoder_share_of_peak"] = round(tflops / peak, 4)
        print(f"GPU: dev epoch fine-tuning bf16 {secs:.1f} s; encoder {tflops:.1f} TFLOP/s"
              + (f" = {100 * tflops / peak:.1f}% of {peak:.0f}" if peak else ""))
    fig["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)
    print(f"peak resident memory: {fig['peak_rss_gib']:.2f} GiB")
    if not args.no_doc:
        md = (f"## Training speed (`scripts/bench_train.py`)\n\nMachine: {fig['machine']}; commit `{fig['commit']}`; "
              f"device {args.device}; the first {args.interactions} training interactions of the "
              f"{'SParC-dev DB split' if os.path.exists(SPARC) else 'shipped tiny set'}, default encoder "
              "(MiniLM). Turns per second of training (forward, backward, optimiser step):\n\n"
              + table(rows, ["encoder (finetune_att0: --bert_attention_dropout 0)", "EditSQL regime: batch 1, turn by turn", "batch 1 (turns batched)",
                             "batch 8", "batch 16", "speedup (best batched / EditSQL regime)"])
              + f"\n\nFine-tuning at batch 16: {100 * fig['finetune_share_outside_encoder_b16']:.0f}% of a step "
              "is spent outside the encoder's forward and backward pass.")
        if "dev_epoch_fix_bert_warm_s" in fig:
            md += (f" An epoch over SParC dev.json ({fig['dev_epoch_turns']} turns) with `--fix_bert` and a "
                   f"warm cache, batch 16: {fig['dev_epoch_fix_bert_warm_s']:.1f} s"
                   + (f" ({fig['dev_epoch_fix_bert_amp_warm_s']:.1f} s with `--amp`)." if "dev_epoch_fix_bert_amp_warm_s" in fig
                      else "."))
        if "bf16_matmul_new_shape_ms" in fig:
            md += (f" A `[M, 1200] x [1200, 600]` product (the decoder's recurrent step) over 64 row counts M "
                   f"not seen before: float32 {fig['fp32_matmul_new_shape_ms']:.2f} ms at the first call of "
                   f"each, {fig['fp32_matmul_same_shape_ms']:.2f} ms at the second; bf16 "
                   f"{fig['bf16_matmul_new_shape_ms']:.2f} and {fig['bf16_matmul_same_shape_ms']:.2f} ms.")
        md += f" Peak resident memory of the whole benchmark process: {fig['peak_rss_gib']:.2f} GiB."
        write_section("bench_train", md, fig)
    print(json.dumps(fig, sort_keys=True))


if __name__ == "__main__":
    main()
