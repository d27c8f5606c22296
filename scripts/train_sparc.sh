#!/usr/bin/env bash
# The official SParC protocol: train on train.json, validate on dev.json (EditSQL's comparison).
#   scripts/train_sparc.sh [DATA_DIR] [RUN_DIR] [extra train flags...]
# DATA_DIR holds train.json, dev.json and tables.json (default ../shared/data/sparc); RUN_DIR is
# where the run goes (default logs/sparc_official). Extra flags after them override the defaults
# below for the first phase.
#
# The recipe of the best runs so far (docs/experiments.md, "Averaging the weights (--ema)" and
# the sixteenth and seventeenth sessions): FROM-less targets (--remove_from), as EditSQL's figures use;
# batch 16; the encoder's output a learnt scalar mix of all 7 of MiniLM's hidden states
# (--bert_layers 7 --bert_mix: over seeds 3 and 4, 43.14 question / 24.77 interaction match at beam
# 4 against 42.02 / 24.41 for the same seeds with the plain mean of the last 4, and both runs above
# all six seeds of that mean in question match; it needs about 10 GB of memory and 5.6 GB of disk
# for the frozen encoder's cache, against 4 GB and 0.8 GB: MIX=0 keeps the mean of the last 4,
# --bert_layers 4), read by EditSQL's utterance BiLSTM (--utterance_rnn); each DB unit marked by
# its kind and key role (--unit_types) and by whether the previous query used its table
# (--previous_tables); label smoothing 0.1 (over two seeds, +0.9 token / +2.8 string accuracy and
# +3.0 question / +1.5 interaction match against the three runs without it: docs/experiments.md,
# tenth session); validation, best.pt and decoding with a
# moving average of the weights (--ema 0.999: over four runs, +1.1 question / +0.9 interaction match
# against the same checkpoints' raw weights, eleventh session); --lr 3e-4 for 10 epochs, then a decay
# by hand to 1e-4 for epochs 11-16. Gold previous queries in training: over two seeds,
# --sample_previous 0.5 cost 0.8 token / 3.5 string points teacher-forced and moved decoded question
# match by +0.3, within the seed spread, so it is left to the extra flags. Dropout stays at its
# default 0.1: on seed 13, 0.3 (even over 24 epochs) and 0 ended 0.26 and 1.11 token / 3.0 and
# 4.2 question-match points under it (docs/experiments.md, twenty-eighth session). --decode_valid decodes dev
# greedily after each epoch (about 7 s) to log decoded question match and keep that epoch's best as
# best_match.pt, decoded at the end beside best.pt where it is another epoch; best.pt stays the run's figure.
# Without CUDA the encoder is frozen and its outputs cached (--fix_bert: about 67 minutes on one CPU
# thread, plus 20 to fill the cache the first time); with CUDA it is fine-tuned in bf16
# (--device cuda --amp --lr_bert 1e-5, not yet run). On CPU, extra flags with --tune_top_layers N
# fine-tune BERT's top N layers instead of freezing it all (their own --lr_bert; with the mean of
# the last 4 hidden states, since the mix is refused there). On a CPU the run stays in float32
# unless AMP=1: bf16 autocast (--amp, added only where oneDNN has bf16 kernels) is 1.2x faster per
# epoch on the AMD EPYC hosts this VM had until the thirteenth session, to the same figures within
# the seed spread, but 1.4x slower on the Intel host with AMX of the twenty-first session, and in
# the twentieth some --amp runs slowed epoch by epoch where float32 stayed steady
# (docs/experiments.md, twenty-first session). Measure it first (scripts/bench_train.py prints
# both); a resume keeps the run's precision.
# Re-running the script continues where it stopped: a finished phase is skipped, a stopped one
# resumed from its last.pt.
set -euo pipefail
# the whole script is one block, which bash reads before it runs any of it: bash reads a script
# as it goes, so an edit in place during a run's hours would otherwise have it resume
# at a byte offset of the new file when a phase ends (a syntax error, or the wrong command)
{
DATA="${1:-../shared/data/sparc}"
RUN="${2:-logs/sparc_official}"
shift 2 || shift $# || true
TUNE_TOP=0   # extra flags fine-tune the top layers: their own freezing, and no layer mix (refused)
if [[ " $* " == *" --tune_top_layers "* ]]; then TUNE_TOP=1; fi
if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  ENCODER=(--device cuda --amp --lr_bert 1e-5)
elif [ "$TUNE_TOP" = 1 ]; then
  ENCODER=()           # the top layers fine-tuned over the frozen rest (the flag's own freezing)
else
  ENCODER=(--fix_bert)
fi
if [ "${AMP:-0}" != 0 ] && [[ " ${ENCODER[*]} " != *" --amp "* ]] && python -c \
    "import sys; from text2sql.tensors import has_bf16; sys.exit(0 if has_bf16('cpu') else 1)"; then
  ENCODER+=(--amp)
fi

# the layer mix; not with --tune_top_layers, whose tuned layers give one output
if [ "${MIX:-1}" != 0 ] && [ "$TUNE_TOP" = 0 ]; then
  LAYERS=(--bert_layers 7 --bert_mix)
else
  LAYERS=(--bert_layers 4)
fi

epoch() {   # the epoch the run's last checkpoint is at (0 before it starts)
  python -c "import json,sys; print(json.load(open(sys.argv[1])).get('epoch', 0))" "$RUN/status.json" \
    2>/dev/null || echo 0
}

if [ ! -f "$RUN/last.pt" ]; then
  python -m text2sql train --data "$DATA" --protocol official "${ENCODER[@]}" \
    --batch_size 16 --shuffle --epochs 10 --max_turn 5 --lr 3e-4 --train_eval_size 200 \
    --remove_from "${LAYERS[@]}" --utterance_rnn --unit_types --previous_tables --label_smoothing 0.1 --ema 0.999 \
    --decode_valid --run_dir "$RUN" \
    --note "official split: SParC train -> dev" "$@"
elif [ "$(epoch)" -lt 10 ]; then
  python -m text2sql train --resume "$RUN" --epochs 10
fi
# phase 2: the same run, resumed at a third of the learning rate (recorded in resumes.jsonl)
if [ "$(epoch)" -lt 16 ]; then
  python -m text2sql train --resume "$RUN" --epochs 16 --lr 1e-4
fi
python -m text2sql evaluate --run "$RUN" --beam 4 --out "$RUN/beam4"
# and with a beam over whole interactions (each keeps its 2 best histories): +0.78 question match
# on average over five runs of the thirteenth session, in all five (docs/experiments.md, fourteenth)
python -m text2sql evaluate --run "$RUN" --beam 4 --turn_beam 2 --out "$RUN/beam4_turn2"
# the epoch with the best greedy decoded question match (--decode_valid), where it is another one
if [ -f "$RUN/best_match.pt" ] && python -c "import sys, torch; a, b = (torch.load(sys.argv[1] + f, map_location='cpu', \
    weights_only=False)['epoch'] for f in ('/best.pt', '/best_match.pt')); sys.exit(a == b)" "$RUN"; then
  python -m text2sql evaluate --run "$RUN/best_match.pt" --beam 4 --out "$RUN/best_match_beam4"
  python -m text2sql evaluate --run "$RUN/best_match.pt" --beam 4 --turn_beam 2 --out "$RUN/best_match_turn2"
fi
exit
}
