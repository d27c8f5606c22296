"""``python -m text2sql train``: data preparation, the training loop, evaluation and checkpoints.

A run folder ``logs/<Mon DD_HH-MM-SS>_<host>/`` holds ``config.json``, ``vocab.json``,
``metrics.jsonl`` (one object per split per evaluation), tensorboardX events, and ``best.pt`` /
``last.pt`` (and ``best_match.pt`` with ``--decode_valid``), each written to a temporary file and renamed so that a crash never leaves a torn
checkpoint. ``--resume RUN_DIR`` continues from ``last.pt`` (model, optimiser, schedule, RNG
states, data order) to the same result as a run that was never interrupted; ``best.pt`` and
``best_match.pt`` hold weights only (no optimiser state: nothing resumes from them). A frozen
encoder whose weights are the ones ``--bert`` loads is left out of every checkpoint and named by
its SHA-256 instead (``frozen_encoder``), which loading checks: MiniLM is 91 of a frozen run's
186 MB a checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict

import numpy as np
import torch

from .config import RESUME_MAY_CHANGE, TrainConfig
from .data import SHIPPED_DATA, Interaction, db_split, read_split, split_path, tables_path
from .decoder import NEG, mean_distribution
from .errors import ConfigError, DataError
from .metrics import Meter, sequence_loss
from .model import MODULES, Example, Text2SQL, module_of
from .schema import load_tables
from .sql_tokens import tokenize_sql
from .tensors import describe_machine
from .vocab import Vocab


class NonFiniteError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------
def target_tokens(inter: Interaction, schema, cfg: TrainConfig) -> list[list[str]]:
    style = ("nofrom_tables" if cfg.keep_from == "tables" else "nofrom") if cfg.remove_from else "full"
    out = []
    for t, turn in enumerate(inter.turns):
        try:
            out.append(tokenize_sql(turn.query, schema, style, cfg.values))
        except DataError as e:
            raise e.located(file=inter.source, interaction=inter.index, turn=t) from None
    return out


def load_data(cfg: TrainConfig, log=print):
    """-> (train interactions, valid interactions, schemas, target tokens by id(interaction))."""
    data = cfg.data or SHIPPED_DATA
    schemas = load_tables(tables_path(data, cfg.tables))
    if cfg.protocol == "db_split":
        split = read_split(split_path(data, "dev"), schemas)
        errors = list(split.errors)
        train, valid = db_split(split.interactions, cfg.db_split_train)
    else:
        tr = read_split(split_path(data, "train"), schemas)
        errors = list(tr.errors)
        train = tr.interactions
        dev_path = split_path(data, "dev")
        if os.path.exists(dev_path) and not os.path.isfile(data):
            dv = read_split(dev_path, schemas)
            errors += dv.errors
            valid = dv.interactions
        else:
            valid = []
    if cfg.tiny_dataset:
        train = train[:cfg.tiny_dataset]
        valid = list(train)
    targets, kept = {}, {"train": [], "valid": []}
    for name, items in (("train", train), ("valid", valid)):
        for inter in items:
            try:
                targets[id(inter)] = target_tokens(inter, schemas[inter.db_id], cfg)
                kept[name].append(inter)
            except DataError as e:
                errors.append(e)
    for e in errors:
        log(f"skipped: {e.line()}")
    if errors:
        log(f"skipped {len(errors)} bad item(s); see the lines above")
    if not kept["train"]:
        raise DataError("no usable training interactions", file=data)
    overlap = {i.db_id for i in kept["train"]} & {i.db_id for i in kept["valid"]}
    if overlap and not cfg.tiny_dataset:
        log(f"warning: {len(overlap)} database(s) are in both training and validation data")
    return kept["train"], kept["valid"], schemas, targets


def make_examples(items, schemas, targets, vocab: Vocab) -> list[Example]:
    out = []
    for inter in items:
        schema = schemas[inter.db_id]
        toks = targets[id(inter)]
        out.append(Example(db_id=inter.db_id, unit_texts=schema.unit_natural,
                           words=[t.words for t in inter.turns],
                           targets=[vocab.encode(t, schema) for t in toks], tokens=toks,
                           source=(inter.source, inter.index), table_units=table_units(schema),
                           unit_tables=schema.unit_table, unit_kinds=schema.unit_kinds()))
    return out


def table_units(schema) -> list[int]:
    return [j for j, u in enumerate(schema.units) if "." not in u]


def batches(examples: list[Example], cfg: TrainConfig, epoch: int):
    order = list(range(len(examples)))
    rng = random.Random(cfg.seed * 1000003 + epoch)    # data order is a function of (seed, epoch)
    if cfg.shuffle:
        rng.shuffle(order)
    if cfg.sort_by_turns:
        # similar lengths together, but the batches themselves still come in a shuffled order
        order.sort(key=lambda i: len(examples[i]))
    groups = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    if cfg.sort_by_turns and cfg.shuffle:
        rng.shuffle(groups)
    return [[examples[i] for i in g] for g in groups]


# ------------------------------------------------------------------------------------------
# model
# ------------------------------------------------------------------------------------------
def build_encoder(cfg: TrainConfig):
    from .encoder import SchemaEncoder, load_bert, resolve_bert, tiny_bert
    if cfg.bert == "tiny":
        torch.manual_seed(cfg.seed)
        bert, tok = tiny_bert(dropout=cfg.dropout, attention_dropout=cfg.bert_attention_dropout)
    else:
        over = ({} if cfg.bert_attention_dropout is None
                else {"attention_probs_dropout_prob": cfg.bert_attention_dropout})
        bert, tok = load_bert(resolve_bert(cfg.bert), **over)
    enc = SchemaEncoder(bert, tok, layers=cfg.bert_layers, stack=cfg.bert_mix)
    if cfg.fix_bert:
        enc.fix()
    elif cfg.tune_top_layers:
        enc.tune_top(cfg.tune_top_layers)
    elif cfg.grad_checkpointing:
        enc.recompute()
    # from_pretrained hands BERT back in eval mode: without this, anything that trains before
    # Trainer.run() sets the mode (the benchmarks did) fine-tunes BERT without dropout, and without
    # the checkpointing above, which only acts in training mode
    return enc.train()


def build_model(cfg: TrainConfig, vocab: Vocab) -> Text2SQL:
    cfg.check()
    torch.manual_seed(cfg.seed)
    enc = build_encoder(cfg)
    model = Text2SQL(enc, vocab, decoder_size=cfg.decoder_size, turn_size=cfg.turn_size,
                     max_turn=cfg.max_turn, dropout=cfg.dropout, unit_mask=cfg.unit_mask,
                     utterance_rnn=cfg.utterance_rnn, previous_utterances=cfg.previous_utterances,
                     joint_layers=cfg.joint_layers, previous_tables=cfg.previous_tables,
                     unit_types=cfg.unit_types, query_tables=cfg.query_tables,
                     link_bonus=cfg.link_bonus, input_feeding=not cfg.no_input_feeding)
    model.sample_previous = cfg.sample_previous
    model.from_less = cfg.remove_from        # the target style constrained decoding keeps to
    model.sample_chain = cfg.sample_chain
    if (cfg.fix_bert or cfg.tune_top_layers) and cfg.cache_dir:
        attach_disk_cache(model, cfg)
    if cfg.key_init:
        texts = [t.replace("_", " ").strip("<>") for t in vocab.tokens]
        with torch.no_grad():
            model.decoder.keyword_emb.weight.copy_(enc.embed_texts(texts))
    return model.to(cfg.device)


def attach_disk_cache(model: Text2SQL, cfg: TrainConfig):
    """The frozen encoder's disk cache, in the folder of its weights as they are now."""
    from .encoder_cache import EncoderCache, encoder_fingerprint
    model.disk_cache = EncoderCache(cfg.cache_dir, encoder_fingerprint(model.encoder))


def trainable(model: Text2SQL) -> tuple[list, list]:
    """-> (BERT's trainable parameters, the rest's): they get their own learning rates, and only
    the rest is clipped."""
    bert, rest = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (bert if module_of(n) == "encoder" else rest).append(p)
    return bert, rest


def make_optimizer(model: Text2SQL, cfg: TrainConfig):
    bert, rest = trainable(model)
    # the mix gets its own group only when it learns faster, so that earlier runs' optimiser
    # states (rest, then bert) still load
    mix = list(model.layer_mix.parameters()) if cfg.mix_lr_factor != 1.0 and model.layer_mix is not None else []
    in_mix = {id(p) for p in mix}
    named = [("rest", [p for p in rest if id(p) not in in_mix]), ("mix", mix),
             ("bert", [] if cfg.fix_bert else bert)]
    groups = [{"params": ps, "lr": base_lr(cfg, name), "name": name}
              for name, ps in named if ps or name == "rest"]
    # one fused kernel (or a few foreach ones) instead of a dozen ops per parameter tensor: with
    # BERT's 30k-row embedding matrix the per-tensor loop was a tenth of a fine-tuning step
    try:
        opt = torch.optim.Adam(groups, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.Adam(groups, foreach=True)
    warm = max(cfg.warmup, 0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    return opt, sched


def base_lr(cfg: TrainConfig, group: str) -> float:
    """The learning rate an optimiser group of make_optimizer's starts from (before warm-up)."""
    return {"rest": cfg.lr, "bert": cfg.lr_bert, "mix": cfg.lr * cfg.mix_lr_factor}[group]


def grad_norm_tensor(model: Text2SQL) -> torch.Tensor:
    """[len(MODULES)] gradient L2 norm per module, computed on the device without a host sync
    (NaN/inf where a module's gradient is not finite, 0 where it has none)."""
    by_module: dict[str, list[torch.Tensor]] = {m: [] for m in MODULES}
    for n, p in model.named_parameters():
        if p.grad is not None:
            by_module[module_of(n)].append(p.grad.detach())
    dev = next(model.parameters()).device
    out = []
    for m in MODULES:
        gs = by_module[m]
        if not gs:
            out.append(torch.zeros((), device=dev))
            continue
        norms = torch._foreach_norm(gs)                        # one kernel per dtype/device group
        out.append(torch.linalg.vector_norm(torch.stack([x.float() for x in norms])))
    return torch.stack(out)


class WeightAverage:
    """An exponential moving average of the trainable weights (``--ema``; Polyak averaging).

    The optimiser keeps training the raw weights; validation, ``best.pt``'s choice and decoding
    read the average, which smooths the step-to-step noise of the last epochs (the noise that makes
    ensembles of checkpoints gain). Frozen weights never change, so only trainable ones are kept.
    The decay is ``min(decay, (1 + n) / (10 + n))`` after n updates: early on the average follows
    the weights closely, instead of being dragged back to the random initialisation."""

    def __init__(self, model: torch.nn.Module, decay: float):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self):
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - d)

    @torch.no_grad()
    def _put(self, tensors: list[torch.Tensor]):
        for p, t in zip(self.params, tensors):
            p.copy_(t)

    def copy_to_model(self):
        """The model holds the averaged weights from now on (for decoding)."""
        self._put(self.shadow)

    @contextmanager
    def swapped_in(self):
        """The model holds the averaged weights inside the block, its own again after it."""
        raw = [p.detach().clone() for p in self.params]
        self.copy_to_model()
        try:
            yield
        finally:
            self._put(raw)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates,
                "weights": {n: s for n, s in zip(self.names, self.shadow)}}

    def load_state_dict(self, sd: dict, source: str | None = None):
        """``source``: the checkpoint file, named by the error if the average lacks a weight."""
        missing = [n for n in self.names if n not in sd["weights"]]
        if missing:
            raise DataError(f"the checkpoint's weight average lacks {len(missing)} trainable weights "
                            f"(first: {missing[0]})", file=source)
        with torch.no_grad():
            for n, s in zip(self.names, self.shadow):
                s.copy_(sd["weights"][n])
        self.updates = int(sd.get("updates", 0))


# ------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------
def atomic_save(obj, path: str):
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(path: str, text: str):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def rng_state():
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(s):
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])


# A frozen encoder's weights are those --bert loads, the same in every checkpoint of the run:
# checkpoints name them by a digest instead of holding them (frozen_encoder below), and loading
# takes them from the encoder it builds after checking the digest.
def frozen_encoder_keys(model: Text2SQL) -> list[str]:
    """The state entries of the encoder that training never changes (frozen parameters, buffers)."""
    learns = {n for n, p in model.named_parameters() if p.requires_grad}
    return [k for k in model.state_dict() if k.startswith("encoder.") and k not in learns]


def weights_digest(state: dict, keys: list[str]) -> str:
    """SHA-256 over the named tensors' names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for k in sorted(keys):
        t = state[k].detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def full_state(model: Text2SQL, ck: dict, state: dict, path: str) -> dict:
    """``state`` (a checkpoint's weights) with the frozen encoder weights the checkpoint left out
    taken from ``model``, whose encoder must be the one the run trained over (same digest)."""
    omitted = ck.get("frozen_encoder")
    if not omitted:
        return state
    own = model.state_dict()
    keys = omitted["keys"]
    lacking = [k for k in keys if k not in own]
    if lacking or weights_digest(own, keys) != omitted["sha256"]:
        raise DataError(f"this checkpoint was saved without its frozen encoder, --bert {omitted['bert']!r} "
                        f"(weights sha256 {omitted['sha256'][:16]}…), and the encoder built here has other "
                        f"weights" + (f" ({len(lacking)} of those tensors missing, first: {lacking[0]})" if lacking
                                      else "") + ": give the same --bert as that run", file=path)
    return {**{k: own[k] for k in keys}, **state}


def checkpoint_path(path: str) -> tuple[str, str]:
    """(run folder, checkpoint file name) for a run given as its folder (its ``best.pt``) or as one
    of the checkpoints in it (``RUN/last.pt``): the config and vocabulary beside it are the run's."""
    if os.path.isfile(path):
        run_dir, which = os.path.split(os.path.normpath(path))
        if not which.endswith(".pt"):
            raise DataError(f"{path}: not a run folder or a checkpoint (.pt) in one")
        return run_dir or ".", which
    if path.endswith(".pt"):
        raise DataError(f"{path}: no such checkpoint")
    return path, "best.pt"


def require_run(run_dir: str, *files: str):
    """A one-line DataError unless ``run_dir`` is a run folder (config.json, vocab.json) holding
    ``files``: what a command that reads a run says first, instead of a traceback."""
    if not os.path.isdir(run_dir):
        raise DataError(f"{run_dir}: no such run folder")
    missing = [f for f in ("config.json", "vocab.json") if not os.path.isfile(os.path.join(run_dir, f))]
    if missing:
        raise DataError(f"{run_dir}: not a run folder (no {' or '.join(missing)}: train writes them when it starts)")
    for f in files:
        if not os.path.isfile(os.path.join(run_dir, f)):
            why = {"best.pt": "the run has not finished an epoch yet",
                   "last.pt": "the run has not finished an epoch yet, so there is nothing to resume"}.get(f, "")
            raise DataError(f"{run_dir}: no {f}" + (f" ({why})" if why else ""))


def init_weights(model: Text2SQL, path: str, cfg: TrainConfig) -> dict:
    """``--init_from``: ``model`` takes the weights of the checkpoint at ``path``, the averaged ones
    where it kept ``--ema`` (its validated weights; the average covers only what trained there, and
    the weights it froze are the same either way). A checkpoint that does not fit the model is a
    one-line ConfigError naming the model flags that differ."""
    from .config import MODEL_KEYS
    try:
        ck = torch.load(path, map_location=cfg.device, weights_only=False)
    except Exception as e:
        raise DataError(f"cannot read the checkpoint: {type(e).__name__}: {' '.join(str(e).split())[:200]}",
                        file=path) from None
    state = full_state(model, ck, dict(ck["model"]), path)
    if "ema" in ck:
        state.update(ck["ema"]["weights"])
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shape:
        theirs = ck.get("config", {})
        differ = [f"--{k} {theirs[k]!r} there, {getattr(cfg, k)!r} here" for k in MODEL_KEYS
                  if k in theirs and theirs[k] != getattr(cfg, k)]
        parts = []
        for label, keys in (("weights it lacks", missing), ("weights this model lacks", unexpected),
                            ("of another shape", shape)):
            if keys:
                parts.append(f"{len(keys)} {label} (first: {keys[0]})")
        what = "; ".join(parts)
        raise ConfigError(f"--init_from {path}: its model does not fit this run's: {what}"
                          + (f"; model flags that differ: {', '.join(differ)}" if differ else ""))
    model.load_state_dict(state)
    if model.disk_cache is not None:     # the frozen encoder's weights are the checkpoint's now
        attach_disk_cache(model, cfg)
    return {"epoch": ck.get("epoch"), "step": ck.get("step"), "weights": "averaged" if "ema" in ck else "raw"}


def slim_checkpoint(path: str) -> tuple[int, int, str]:
    """Rewrites a checkpoint saved before frozen encoders were left out (see ``Trainer.checkpoint``)
    in the current form: without the frozen weights where they are ``--bert``'s, and, but for
    ``last.pt``, without optimiser state. -> (bytes before, bytes after, what was done)."""
    run_dir, which = checkpoint_path(path)
    path = os.path.join(run_dir, which)
    before = os.path.getsize(path)
    cfg = TrainConfig.load(run_dir)
    cfg.cache_dir = ""              # only the weights are needed, not the encoder's cache
    model = build_model(cfg, Vocab.load(os.path.join(run_dir, "vocab.json")))
    keys = frozen_encoder_keys(model)
    ck = torch.load(path, map_location="cpu", weights_only=False)
    done, changed = [], False
    if not keys:
        done.append("its encoder trained: kept")
    elif "frozen_encoder" in ck:
        done.append("frozen encoder already left out")
    elif any(k not in ck["model"] for k in keys):
        raise DataError("lacks frozen encoder weights but names no digest for them", file=path)
    else:
        digest = weights_digest(model.state_dict(), keys)
        if weights_digest(ck["model"], keys) != digest:
            done.append(f"its frozen encoder is not --bert {cfg.bert!r}'s (--init_from a tuned run?): kept")
        else:
            ck["model"] = {k: v for k, v in ck["model"].items() if k not in set(keys)}
            ck["frozen_encoder"] = {"sha256": digest, "keys": keys, "bert": cfg.bert}
            done.append(f"frozen encoder left out ({len(keys)} tensors)")
            changed = True
    if which != "last.pt" and "optimizer" in ck:
        for k in ("optimizer", "scheduler", "rng"):
            ck.pop(k, None)
        done.append("optimiser state dropped")
        changed = True
    if changed:
        atomic_save(ck, path)
    return before, os.path.getsize(path), "; ".join(done)


def write_init_record(run_dir: str, path: str, info: dict):
    """``init.json``: the checkpoint an ``--init_from`` run started from, and after how many epochs
    of training in all (``offset``: its epoch plus its own run's offset, where that run too started
    from another), so that ``compare --plot`` draws the run's epochs after its parent's."""
    parent = os.path.join(os.path.dirname(path), "init.json")
    before = 0
    if os.path.isfile(parent):
        try:
            with open(parent, encoding="utf-8") as f:
                before = int(json.load(f).get("offset") or 0)
        except (ValueError, TypeError, AttributeError, OSError):
            before = 0      # a damaged record only costs the plot its offset
    atomic_write_text(os.path.join(run_dir, "init.json"), json.dumps(
        {"from": path, "epoch": info["epoch"], "step": info["step"], "weights": info["weights"],
         "offset": before + int(info["epoch"] or 0)}) + "\n")


def load_run(run_dir: str, device: str = "cpu", which: str | None = None, raw: bool = False):
    """A trained model (in eval mode) and its config from a run folder (for evaluation and
    prediction): its ``best.pt``, or ``which``, or the checkpoint ``run_dir`` names
    (``RUN/last.pt``). A run trained with ``--ema`` gives its averaged weights, the ones it
    validated with, unless ``raw``."""
    if which is None:
        run_dir, which = checkpoint_path(run_dir)
    require_run(run_dir, which)
    cfg = TrainConfig.load(run_dir)
    cfg.device = device
    vocab = Vocab.load(os.path.join(run_dir, "vocab.json"))
    model = build_model(cfg, vocab)
    path = os.path.join(run_dir, which)
    ckpt = torch.load(path, map_location=device, weights_only=False)
    model.load_state_dict(full_state(model, ckpt, ckpt["model"], path))
    averaged = "ema" in ckpt and not raw
    if averaged:
        avg = WeightAverage(model, ckpt["ema"]["decay"])
        avg.load_state_dict(ckpt["ema"], source=path)
        avg.copy_to_model()
    # which weights these are: an evaluation report names them, so that a report written before
    # the run trained on (and found a new best) can be told apart from a current one
    model.checkpoint = {"file": which, "epoch": ckpt.get("epoch"), "step": ckpt.get("step"),
                        # None for a run without --ema: it has one set of weights
                        "weights": "averaged" if averaged else ("raw" if "ema" in ckpt else None)}
    return model.eval(), cfg, vocab


# ------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------
def autocast(cfg: TrainConfig):
    """bfloat16 autocast with ``--amp`` (a no-op context otherwise). bf16 keeps fp32's exponent
    range, so unlike fp16 it needs no loss scaling; log_softmax and the losses stay in fp32."""
    dev = torch.device(cfg.device).type
    return torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=bool(cfg.amp))


@torch.no_grad()
def evaluate(model: Text2SQL, examples: list[Example], cfg: TrainConfig, batch_size: int | None = None,
             ensemble: list[Text2SQL] = ()) -> dict:
    """Teacher-forced metrics; with ``ensemble`` (models on the same vocabulary), of the mean of all
    the models' distributions, as ensemble decoding uses them."""
    models = [model, *ensemble]
    was = [m.training for m in models]
    for m in models:
        m.eval()
    meter = Meter(len(model.vocab))
    bs = batch_size or max(cfg.batch_size, 8)
    for i in range(0, len(examples), bs):
        batch = examples[i:i + bs]
        with autocast(cfg):
            outs = [m(batch) for m in models]
        out = outs[0]
        logp = mean_distribution([o.logp for o in outs])
        loss, kw, db = sequence_loss(logp, out.targets, out.mask, len(model.vocab), cfg.loss_weighting,
                                     len(batch))
        meter.add(logp, out.targets, out.mask, out.turn_index)
        meter.add_loss(*torch.stack([loss, kw, db]).tolist())
    for m, w in zip(models, was):
        m.train(w)
    return meter.summary()


# ------------------------------------------------------------------------------------------
# distillation
# ------------------------------------------------------------------------------------------
# the flags that decide what a training target is: a teacher trained on other targets scores
# sequences the student never writes
TARGET_KEYS = ("remove_from", "keep_from", "values")


class Teachers:
    """--distill: trained runs whose mean distribution (as their ensemble decodes with it) over
    each training turn's gold prefix the student also learns from.

    A teacher is deterministic here (eval mode, gold previous queries), so each turn's distribution
    is computed once, the first time a batch holds its interaction, and kept on the host as
    [L_t, K + units of its schema]; later epochs only look it up. Teachers with the student's frozen
    encoder share its in-memory encoder cache, so their vectors are not held twice."""

    def __init__(self, paths: list[str], cfg: TrainConfig, student: Text2SQL, log=print):
        from .encoder_cache import encoder_fingerprint
        self.models, self.store = [], {}
        # (the fingerprint covers the weights and which layers the vectors hold)
        shared = encoder_fingerprint(student.encoder) if student.encoder.fixed else None
        self.calls = 0                      # teacher forward passes (tests: once per interaction)
        for path in paths:
            if not os.path.exists(path):
                raise DataError(f"--distill {path}: no such run folder or checkpoint")
            # building a model reseeds torch's generator: keep the student's stream as it was
            with torch.random.fork_rng(devices=[]):
                model, tcfg, vocab = load_run(path, device=cfg.device)
            differ = [f"--{k} {getattr(tcfg, k)} (here {getattr(cfg, k)})" for k in TARGET_KEYS
                      if getattr(tcfg, k) != getattr(cfg, k)]
            if differ:
                raise ConfigError(f"--distill {path}: trained on other targets: " + ", ".join(differ))
            if vocab.tokens != student.vocab.tokens:
                raise ConfigError(f"--distill {path}: its vocabulary ({len(vocab)} keywords) is not this run's "
                                  f"({len(student.vocab)}); a teacher must be trained on the same targets")
            if shared and model.encoder.fixed and encoder_fingerprint(model.encoder) == shared:
                # the same frozen vectors: one memory cache, and this run's disk cache
                model._cache, model.disk_cache = student._cache, student.disk_cache
            for p in model.parameters():
                p.requires_grad_(False)
            self.models.append(model)
            log(f"distilling from {path} ({model.checkpoint['file']}, epoch {model.checkpoint['epoch']}, "
                f"{model.checkpoint['weights'] or 'its'} weights)")

    @torch.no_grad()
    def _compute(self, examples: list[Example], cfg: TrainConfig):
        self.calls += 1
        with autocast(cfg):
            outs = [m(examples) for m in self.models]
        logp = mean_distribution([o.logp.float() for o in outs]).cpu()          # [Nt, L, K + U]
        if cfg.distill_temperature != 1.0:
            # impossible outputs stay NEG-sized (NEG / T is still exp-zero)
            logp = torch.log_softmax(logp / cfg.distill_temperature, -1)
        K, row = len(self.models[0].vocab), 0
        for ex in examples:
            width = K + len(ex.unit_texts)
            for t, target in enumerate(ex.targets):
                self.store[(id(ex), t)] = logp[row, :len(target), :width].clone()
                row += 1

    def logp(self, examples: list[Example], like: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
        """The teachers' log-probabilities for the turns of ``examples`` in the student's layout:
        ``like`` is its logp [Nt, L, V]; what a turn's schema lacks, or padding, is NEG."""
        todo = [ex for ex in examples if (id(ex), 0) not in self.store]
        if todo:
            self._compute(todo, cfg)
        out = torch.full(like.shape, NEG, dtype=torch.float32)
        row = 0
        for ex in examples:
            for t in range(len(ex)):
                q = self.store[(id(ex), t)]
                out[row, :q.shape[0], :q.shape[1]] = q
                row += 1
        return out.to(like.device, non_blocking=True)


# ------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------
def check_run_dir(cfg: TrainConfig):
    """A folder that already holds a trained run is never trained over: its checkpoints and
    metrics would be replaced. One that holds only a config and vocabulary (a run stopped before
    its first epoch ended) may start again."""
    if cfg.run_dir and os.path.isdir(cfg.run_dir):
        held = sorted(f for f in os.listdir(cfg.run_dir) if f.endswith(".pt") or f == "metrics.jsonl")
        if held:
            how = (f"--resume {cfg.run_dir} continues it" if "last.pt" in held else
                   "it has no last.pt to resume from; remove the folder to start it again")
            raise ConfigError(f"--run_dir {cfg.run_dir} already holds a run ({', '.join(held[:3])}): "
                              f"{how}; a new run needs another folder")


def new_run_dir(cfg: TrainConfig) -> str:
    """The run's folder, made; ``check_run_dir`` has refused a --run_dir that holds a run."""
    if cfg.run_dir:
        os.makedirs(cfg.run_dir, exist_ok=True)
        return cfg.run_dir
    base = os.path.join(cfg.logdir, time.strftime("%b%d_%H-%M-%S") + "_" + socket.gethostname())
    path, k = base, 1
    while os.path.exists(path):
        k += 1
        path = f"{base}_{k}"
    os.makedirs(path)
    return path


@contextmanager
def _nothing():
    yield


class _NoWriter:
    """Ranks other than 0 log nothing."""
    def add_scalar(self, *a, **k):
        pass

    def flush(self):
        pass

    def close(self):
        pass


class Trainer:
    def __init__(self, cfg: TrainConfig, log=print, progress: bool = True):
        self._fresh = None            # (run folder, whether it existed, its files then), once made
        try:
            self._build(cfg, log, progress)
        except BaseException:
            # a run that fails while it is set up (a teacher or --init_from checkpoint that does
            # not fit, bad data) leaves no half-written folder for `runs` to list
            self._discard_fresh_dir()
            raise

    def _discard_fresh_dir(self):
        if self._fresh is None:
            return
        path, existed, before = self._fresh
        import shutil
        for f in set(os.listdir(path)) - before if os.path.isdir(path) else ():
            full = os.path.join(path, f)
            shutil.rmtree(full, ignore_errors=True) if os.path.isdir(full) else os.remove(full)
        if not existed and os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)

    def _build(self, cfg: TrainConfig, log, progress: bool):
        from .distributed import setup
        resume_dir = cfg.resume
        changed = {}
        if resume_dir and cfg.init_from:
            # (a resumed run that started from --init_from keeps it in its saved config, harmlessly)
            raise ConfigError("--init_from cannot go with --resume: a resumed run continues from its own last.pt")
        if resume_dir:
            require_run(resume_dir, "last.pt")
            saved = TrainConfig.load(resume_dir)
            # from the command line, the flags given; from Python, the values off their defaults
            given = getattr(cfg, "given", None)
            # any other flag given with a new value would be silently ignored: the run's model,
            # data and batches are its saved config's
            fixed = sorted(k for k in (given or ()) if k not in RESUME_MAY_CHANGE and k != "resume"
                           and getattr(cfg, k) != getattr(saved, k))
            if fixed:
                raise ConfigError(f"--resume {resume_dir}: " + ", ".join(
                    f"--{k} {getattr(cfg, k)} (the run has {getattr(saved, k)})" for k in fixed)
                    + " cannot change on a resume; only " + ", ".join(f"--{k}" for k in RESUME_MAY_CHANGE)
                    + " may. Start a new run, or --init_from this one")
            for k in RESUME_MAY_CHANGE:
                new = getattr(cfg, k)
                asked = k in given if given is not None else new != TrainConfig.__dataclass_fields__[k].default
                if asked and new != getattr(saved, k):
                    changed[k] = [getattr(saved, k), new]
                    setattr(saved, k, new)
            saved.resume = resume_dir
            cfg = saved
        cfg.check()                  # before anything is loaded or written
        if not resume_dir:
            check_run_dir(cfg)       # on every rank, before rank 0 makes the folder the others wait for
        self.dist, cfg.device = setup(cfg.device)
        self.log = log if self.dist.main else (lambda *a, **k: None)
        log = self.log
        self.progress = progress and self.dist.main
        self.cfg = cfg
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        train, valid, self.schemas, targets = load_data(cfg, log)
        init = checkpoint_path(cfg.init_from) if cfg.init_from and not resume_dir else None
        if init and not all(os.path.isfile(os.path.join(init[0], f)) for f in (init[1], "vocab.json")):
            raise DataError(f"--init_from {cfg.init_from}: no {init[1]} and vocab.json in {init[0]}")
        if resume_dir:
            self.run_dir = resume_dir
            self.vocab = Vocab.load(os.path.join(resume_dir, "vocab.json"))
        else:
            if init:     # the keyword layer's rows are that vocabulary's
                self.vocab = Vocab.load(os.path.join(init[0], "vocab.json"))
            else:
                # the vocabulary is a function of the data, so every rank builds the same one
                self.vocab = Vocab.build([t for i in train for t in targets[id(i)]],
                                         [self.schemas[i.db_id] for i in train])
            existed = bool(cfg.run_dir) and os.path.isdir(cfg.run_dir)
            before = set(os.listdir(cfg.run_dir)) if existed else set()
            self.run_dir = self.dist.broadcast_object(new_run_dir(cfg) if self.dist.main else None)
            if self.dist.main:
                self._fresh = (self.run_dir, existed, before)
                self.vocab.save(os.path.join(self.run_dir, "vocab.json"))
                cfg.save(self.run_dir)
        self.train_ex = make_examples(train, self.schemas, targets, self.vocab)
        self.valid_ex = make_examples(valid, self.schemas, targets, self.vocab)
        if init:
            unknown = sorted({t for e in self.train_ex for toks, ids in zip(e.tokens, e.targets)
                              for t, k in zip(toks, ids) if k == self.vocab.unk})
            if unknown:
                log(f"warning: {len(unknown)} keyword(s) of the training targets are not in "
                    f"{cfg.init_from}'s vocabulary and train as <unk>: " + " ".join(unknown[:10]))
        self.valid_items = valid         # their gold SQL, for --decode_valid
        n = cfg.train_eval_size or len(self.train_ex)
        self.train_eval_ex = self.train_ex[:n]
        self.model = build_model(cfg, self.vocab)
        # the frozen encoder as --bert loads it: checkpoints leave it out for as long as it stays so
        frozen = frozen_encoder_keys(self.model)
        package = weights_digest(self.model.state_dict(), frozen) if frozen else None
        if init:
            info = init_weights(self.model, os.path.join(*init), cfg)
            log(f"initialised from {os.path.join(*init)} (epoch {info['epoch']}, {info['weights']} weights)")
            if self.dist.main:
                write_init_record(self.run_dir, os.path.join(*init), info)
        self.dist.broadcast_params(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.rest = trainable(self.model)[1]
        self.opt, self.sched = make_optimizer(self.model, cfg)
        self.epoch, self.step, self.best, self.skipped = 0, 0, -1.0, 0
        self.best_match = None           # --decode_valid: best_match.pt's [question, interaction] match
        self.elapsed = 0.0
        # what this process runs on, for the train rows and status.json: a resumed run may
        # continue on another host, at another speed
        self.machine = describe_machine()
        self.average = None
        if resume_dir:
            path = os.path.join(resume_dir, "last.pt")
            ck = torch.load(path, map_location=cfg.device, weights_only=False)
            self.model.load_state_dict(full_state(self.model, ck, ck["model"], path))
            self.opt.load_state_dict(ck["optimizer"])
            self.sched.load_state_dict(ck["scheduler"])
            self.epoch, self.step, self.best = ck["epoch"], ck["step"], ck["best"]
            self.best_match = ck.get("best_match")
            self.skipped, self.elapsed = ck.get("skipped", 0), ck.get("elapsed", 0.0)
            set_rng_state(ck["rng"])
            # the optimiser's saved state holds the old learning rates: a changed one replaces them
            self.sched.base_lrs = [base_lr(cfg, g["name"]) for g in self.opt.param_groups]
            for g, base in zip(self.opt.param_groups, self.sched.base_lrs):
                g["lr"] = base * self.sched.lr_lambdas[0](self.sched.last_epoch)
            # the run's best figure so far came from the weights it validated then; after a switch
            # between raw and averaged ones it says nothing about the new ones
            if "ema" in changed:
                self.best, self.best_match = -1.0, None
            log(f"resumed {resume_dir} after epoch {self.epoch} (step {self.step})"
                + "".join(f"; {k} {a} -> {b}" for k, (a, b) in changed.items()))
            if changed and self.dist.main:
                with open(os.path.join(resume_dir, "resumes.jsonl"), "a") as f:
                    f.write(json.dumps({"after_epoch": self.epoch, "step": self.step, "changed": changed}) + "\n")
                cfg.save(resume_dir)
        # (after --init_from, or a resume of a run that saved them, the frozen weights may be another
        # run's, and are then kept in every checkpoint)
        self.teachers = Teachers(cfg.distill, cfg, self.model, log) if cfg.distill else None
        self.frozen = None
        if frozen and (not (init or resume_dir) or weights_digest(self.model.state_dict(), frozen) == package):
            self.frozen = {"sha256": package, "keys": frozen, "bert": cfg.bert}
        if cfg.ema:     # from the weights as loaded; a resume that switches it on starts it here
            self.average = WeightAverage(self.model, cfg.ema)
            if resume_dir and "ema" in ck:
                self.average.load_state_dict(ck["ema"], source=os.path.join(resume_dir, "last.pt"))
        if self.dist.main:
            from tensorboardX import SummaryWriter
            self.writer = SummaryWriter(self.run_dir)
        else:
            self.writer = _NoWriter()
        log(f"run folder: {self.run_dir}")
        log(f"train: {len(self.train_ex)} interactions, {sum(len(e) for e in self.train_ex)} turns; "
            f"valid: {len(self.valid_ex)} interactions, {sum(len(e) for e in self.valid_ex)} turns; "
            f"vocabulary: {len(self.vocab)} keywords"
            + (f"; {self.dist.world} processes" if self.dist.enabled else ""))

    # ---- checkpoints -------------------------------------------------------------------------
    def checkpoint(self, resumable: bool = True) -> dict:
        """The raw weights (the optimiser's; resuming needs them) and, with ``--ema``, their
        average, which ``load_run`` gives for decoding; the optimiser, schedule and RNG states where
        ``resumable`` (``last.pt``: best.pt's would double a frozen run's file for nothing). A frozen
        encoder that is still ``--bert``'s is named by its digest, not stored."""
        state = self.model.state_dict()
        if self.frozen:
            for k in self.frozen["keys"]:
                del state[k]
        ck = {"model": state, "epoch": self.epoch, "step": self.step,
              "best": self.best, "best_match": self.best_match, "skipped": self.skipped,
              "elapsed": self.elapsed, "config": asdict(self.cfg), "vocab": self.vocab.tokens}
        if resumable:
            ck.update(optimizer=self.opt.state_dict(), scheduler=self.sched.state_dict(), rng=rng_state())
        if self.frozen:
            ck["frozen_encoder"] = self.frozen
        if self.average is not None:
            ck["ema"] = self.average.state_dict()
        return ck

    def validated(self):
        """The weights validation and decoding read: the average with ``--ema``, else the model's."""
        return self.average.swapped_in() if self.average is not None else _nothing()

    @torch.no_grad()
    def decoded_validation(self) -> dict:
        """The validation set decoded as ``evaluate --beam N`` decodes it (constrained, each turn
        reading the previous turn's prediction) and scored by the project's evaluator: teacher-forced
        token accuracy picks best.pt, and a run's figures can pick another checkpoint (with
        --fix_bert, best.pt's decoded question match trailed the last epoch's by up to 1.7 points)."""
        from .decoding import ids_to_sql
        from .evaluation import score_interactions
        was = self.model.training
        self.model.eval()
        preds = []
        for i in range(0, len(self.valid_ex), 16):       # evaluate's --batch_size
            preds += self.model.predict(self.valid_ex[i:i + 16], beam=self.cfg.decode_valid, constrained=True)
        self.model.train(was)
        gold, sqls = [], []
        for inter, p in zip(self.valid_items, preds):
            schema = self.schemas[inter.db_id]
            gold.append([(t.query, inter.db_id) for t in inter.turns])
            sqls.append([ids_to_sql(ids, self.vocab, schema)[0] for ids in p])
        return score_interactions(gold, sqls, self.schemas)

    # ---- one step ----------------------------------------------------------------------------
    def train_step(self, batch: list[Example], meter: Meter) -> float:
        """One optimiser step on a global batch (this rank computes its share). Reads back from
        the device once, for the non-finite guard and the logged figures."""
        cfg = self.cfg
        self.opt.zero_grad(set_to_none=True)
        local = self.dist.shard(batch)
        K = len(self.vocab)
        dev = torch.device(cfg.device)
        if cfg.loss_weighting == "per_step":
            # the global token count, so that the summed gradients are one process's
            denom = self.dist.all_reduce_(torch.tensor(float(sum(len(t) for e in local for t in e.targets)),
                                                       device=dev))
        else:
            denom = float(len(batch))
        out = None
        if local:
            with autocast(cfg):
                out = self.model.forward_unbatched(local) if cfg.unbatched else self.model(local)
            teacher = self.teachers.logp(local, out.logp, cfg) if self.teachers is not None else None
            loss, kw, db = sequence_loss(out.logp.float(), out.targets, out.mask, K, cfg.loss_weighting,
                                         len(batch), denominator=denom, smoothing=cfg.label_smoothing,
                                         teacher=teacher, distill=cfg.distill_weight)
            total = loss if out.relevance_loss is None else loss + out.relevance_loss / self.dist.world
            total.backward()
        else:   # a global batch smaller than the world leaves this rank idle: it adds zeros
            loss = kw = db = total = torch.zeros((), device=dev)
        self.dist.all_reduce_grads(self.params)
        figures = self.dist.all_reduce_(torch.stack([total.detach().float(), loss.detach().float(),
                                                     kw.detach().float(), db.detach().float()]))
        vals = torch.cat([figures, grad_norm_tensor(self.model)]).tolist()     # the step's one sync
        total_v, loss_v, kw_v, db_v = vals[:4]
        norms = dict(zip(MODULES, vals[4:]))
        bad = {m for m, v in norms.items() if not math.isfinite(v)}
        if not math.isfinite(total_v) or bad:
            what = f"non-finite loss ({total_v})" if not math.isfinite(total_v) else "non-finite gradient"
            where = ", ".join(sorted(bad)) or "none (the loss itself)"
            msg = (f"{what} at epoch {self.epoch + 1} step {self.step + 1}; modules with non-finite "
                   f"gradients: {where}; batch: " + ", ".join(f"{s[0]}#{s[1]}" for s in
                                                            (e.source for e in batch)))
            if cfg.skip_nonfinite:
                self.skipped += 1
                self.opt.zero_grad(set_to_none=True)
                self.log(f"skipped step: {msg}")
                self.writer.add_scalar("train/skipped_steps", self.skipped, self.step)
                return float("nan")
            path = os.path.join(self.run_dir, f"debug_step{self.step + 1}.pt")
            if self.dist.main:
                atomic_save({**self.checkpoint(), "message": msg,
                             "batch": [e.source for e in batch]}, path)
            raise NonFiniteError(f"{msg}; debug checkpoint: {path}")
        if cfg.clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.rest if p.grad is not None], cfg.clip, foreach=True)
        self.opt.step()
        self.sched.step()
        if self.average is not None:
            self.average.update()
        self.step += 1
        if out is not None:
            meter.add(out.logp.detach(), out.targets, out.mask, None)
        meter.add_loss(loss_v, kw_v, db_v)
        w = self.writer
        w.add_scalar("train_step/loss", loss_v, self.step)
        w.add_scalar("train_step/keyword_loss", kw_v, self.step)
        w.add_scalar("train_step/db_loss", db_v, self.step)
        for m, v in norms.items():
            w.add_scalar(f"grad_norm/{m}", v, self.step)
        for g in self.opt.param_groups:
            w.add_scalar(f"lr/{g['name']}", g["lr"], self.step)
        return loss_v

    def record(self, split: str, metrics: dict):
        row = {"epoch": self.epoch, "step": self.step, "split": split,
               **{k: metrics[k] for k in ("loss", "keyword_loss", "db_loss", "token_acc", "string_acc",
                                          "keyword_acc", "db_acc", "turns")},
               "token_acc_pooled": metrics["token_acc_pooled"], "seconds": round(self.elapsed, 2)}
        if "train_loss" in metrics:      # the mean loss of the epoch's optimiser steps
            row["train_loss"] = metrics["train_loss"]
            row["machine"] = self.machine
        mix = getattr(self.model, "layer_mix", None)
        if mix is not None:              # --bert_mix: what the weights scored here give each layer
            row["layer_mix"] = [round(w, 4) for w in mix.weights().tolist()]
        with open(os.path.join(self.run_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
        for k in ("loss", "keyword_loss", "db_loss", "token_acc", "token_acc_pooled", "string_acc",
                  "keyword_acc", "db_acc"):
            self.writer.add_scalar(f"{split}/{k}", metrics[k], self.epoch)
        for i, w in enumerate(row.get("layer_mix", ())):     # hidden state i of the mixed ones, lowest first
            self.writer.add_scalar(f"{split}/layer_mix_{i}", w, self.epoch)
        return row

    def run(self):
        from tqdm import tqdm
        cfg = self.cfg
        self.model.train()
        if self.epoch >= cfg.epochs or self.out_of_steps():
            self.log(f"nothing to do: the run is at epoch {self.epoch} of --epochs {cfg.epochs}"
                     + (f", step {self.step} of --max_steps {cfg.max_steps}" if cfg.max_steps else "")
                     + " (raise them with --resume RUN --epochs N to train on)")
        self.write_status("running")
        while self.epoch < cfg.epochs and not self.out_of_steps():
            start = time.time()
            meter = Meter(len(self.vocab))
            bs = batches(self.train_ex, cfg, self.epoch)
            turns_done = 0
            bar = tqdm(bs, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", disable=not self.progress,
                       leave=False, file=sys.stderr)
            for k, batch in enumerate(bar):
                loss = self.train_step(batch, meter)
                turns_done += sum(len(e) for e in batch)
                if self.progress and k % 10 == 0:
                    bar.set_postfix(turns_s=f"{turns_done / max(time.time() - start, 1e-9):.1f}",
                                    loss=f"{loss:.3f}")
                if self.out_of_steps():
                    break
            bar.close()
            self.epoch += 1
            self.elapsed += time.time() - start
            train_loss = meter.summary()["loss"]
            line = f"epoch {self.epoch}: train loss {train_loss:.4f}"
            if self.dist.main:
                line += self.end_of_epoch(train_loss)
                self.log(line)
            self.dist.barrier()      # the other ranks wait while rank 0 evaluates and saves
        self.writer.close()
        self.write_status("finished")
        return self

    def out_of_steps(self) -> bool:
        return bool(self.cfg.max_steps) and self.step >= self.cfg.max_steps

    def end_of_epoch(self, train_loss: float) -> str:
        """Evaluation, checkpoints and status, on rank 0 -> the rest of the epoch's log line."""
        cfg = self.cfg
        line, new_match = "", False
        last = self.epoch == cfg.epochs or self.out_of_steps()
        if self.epoch % cfg.eval_every == 0 or last:
            t0 = time.time()
            if self.valid_ex and self.average is not None:
                # the raw weights too, so that one run measures what the average adds
                raw = evaluate(self.model, self.valid_ex, cfg)
                self.record("valid_raw", raw)
                line += f" | raw valid tok {raw['token_acc']:.2f} str {raw['string_acc']:.2f}"
            with self.validated():
                tr = evaluate(self.model, self.train_eval_ex, cfg)
                self.record("train", {**tr, "train_loss": train_loss})
                line += f" | train tok {tr['token_acc']:.2f} str {tr['string_acc']:.2f}"
                if self.valid_ex:
                    va = evaluate(self.model, self.valid_ex, cfg)
                    self.record("valid", va)
                    line += (f" | valid loss {va['loss']:.4f} tok {va['token_acc']:.2f} str "
                             f"{va['string_acc']:.2f} kw {va['keyword_acc']:.2f} db {va['db_acc']:.2f}")
                    score = va["token_acc"]
                    if cfg.decode_valid:
                        t1 = time.time()
                        dec = self.decoded_validation()
                        match = [dec["question_match"], dec["interaction_match"]]
                        row = {"epoch": self.epoch, "step": self.step, "split": "valid_decoded",
                               "beam": cfg.decode_valid, "question_match": match[0],
                               "interaction_match": match[1], "turns": dec["questions"],
                               "decode_seconds": round(time.time() - t1, 2), "seconds": round(self.elapsed, 2)}
                        with open(os.path.join(self.run_dir, "metrics.jsonl"), "a") as f:
                            f.write(json.dumps(row) + "\n")
                        self.writer.add_scalar("valid_decoded/question_match", match[0], self.epoch)
                        self.writer.add_scalar("valid_decoded/interaction_match", match[1], self.epoch)
                        line += f" | decoded qm {match[0]:.2f} im {match[1]:.2f}"
                        if self.best_match is None or match > self.best_match:
                            self.best_match, new_match = match, True
                            line += " +"
                else:
                    score = tr["token_acc"]
            self.elapsed += time.time() - t0
            if score > self.best:
                self.best = score
                atomic_save(self.checkpoint(resumable=False), os.path.join(self.run_dir, "best.pt"))
                line += " *"
            if new_match:        # saved as best.pt is, outside validated(): the raw weights stay the model's
                atomic_save(self.checkpoint(resumable=False), os.path.join(self.run_dir, "best_match.pt"))
        line += f" | {self.elapsed:.0f}s"
        atomic_save(self.checkpoint(), os.path.join(self.run_dir, "last.pt"))
        self.writer.flush()
        self.write_status("running")
        return line

    def write_status(self, status: str, error: str | None = None):
        """``status.json``: running (rewritten every epoch), finished, failed or diverged.

        ``runs`` reads it; pid and host let it tell a live run from one that was killed."""
        if not self.dist.main:
            return
        row = {"status": status, "epoch": self.epoch, "epochs": self.cfg.epochs, "step": self.step,
               "best_valid_token_acc": self.best, "skipped_steps": self.skipped,
               "pid": os.getpid(), "host": socket.gethostname(), "machine": self.machine,
               "updated": time.time()}
        if error:
            row["error"] = error
        atomic_write_text(os.path.join(self.run_dir, "status.json"), json.dumps(row))


def main(cfg: TrainConfig) -> int:
    trainer = Trainer(cfg)
    try:
        trainer.run()
        trainer.dist.close()
    except NonFiniteError as e:
        trainer.write_status("diverged", str(e))
        print(f"error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        trainer.write_status("failed", "interrupted")
        raise
    except Exception as e:
        trainer.write_status("failed", f"{type(e).__name__}: {' '.join(str(e).split())[:500]}")
        raise
    return 0
