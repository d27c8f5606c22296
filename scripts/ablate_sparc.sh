#!/usr/bin/env bash
# Ablations of the official-split recipe with the frozen, cached encoder (cheap enough for a CPU).
#   scripts/ablate_sparc.sh [DATA_DIR] [EPOCHS] [NAME...]
# Each NAME is one run, logs/ablate_<NAME>/, that differs from `base` in one knob (the last, in the
# two that helped most); with no NAME,
# all of them, in the order below. A run that already finished is skipped, one that stopped is
# resumed, so the script can be re-run after an interruption. Ends with `compare` over every run.
# The table in docs/experiments.md was made with this script.
set -euo pipefail
# one block, read whole before it runs (see scripts/train_sparc.sh): edits during a run are safe
{
DATA="${1:-../shared/data/sparc}"
EPOCHS="${2:-5}"
shift 2 || shift $# || true

# base = scripts/train_sparc.sh's CPU recipe as it stood before these ablations (FROM-less targets,
# summed loss); the recipe has since taken --loss_weighting per_step from them
BASE=(--data "$DATA" --protocol official --fix_bert --batch_size 16 --shuffle --max_turn 5
      --lr 1e-3 --train_eval_size 200 --remove_from)
declare -A KNOB=(
  [base]=""
  [with_from]="--remove_from=DROP"
  [key_init]="--key_init"
  [max_turn1]="--max_turn 1"
  [max_turn2]="--max_turn 2"
  [lr3e-4]="--lr 3e-4"
  [warmup200]="--warmup 200"
  [per_step]="--loss_weighting per_step"
  [batch4]="--batch_size 4"
  [per_step_key_init]="--loss_weighting per_step --key_init"
  [per_step_lr3e-4]="--loss_weighting per_step --lr 3e-4"
  [lr3e-4_dropout0.3]="--lr 3e-4 --dropout 0.3"
  [lr3e-4_batch8]="--lr 3e-4 --batch_size 8"
  [lr3e-4_utterance_rnn]="--lr 3e-4 --utterance_rnn"
  [lr3e-4_utterance_rnn_dropout0.3]="--lr 3e-4 --utterance_rnn --dropout 0.3"
  [lr3e-4_joint2]="--lr 3e-4 --joint_layers 2"
  [lr3e-4_previous3]="--lr 3e-4 --previous_utterances 3"
  [lr3e-4_bert_layers4]="--lr 3e-4 --bert_layers 4"
  [lr3e-4_bert_layers4_utterance_rnn]="--lr 3e-4 --bert_layers 4 --utterance_rnn"
  [lr3e-4_bert_layers7]="--lr 3e-4 --bert_layers 7"
)
ORDER=(base with_from key_init max_turn1 lr3e-4 warmup200 per_step max_turn2 batch4 per_step_key_init
       per_step_lr3e-4 lr3e-4_dropout0.3 lr3e-4_batch8 lr3e-4_utterance_rnn lr3e-4_utterance_rnn_dropout0.3
       lr3e-4_joint2 lr3e-4_previous3 lr3e-4_bert_layers4
       lr3e-4_bert_layers4_utterance_rnn lr3e-4_bert_layers7)
NAMES=("$@")
[ ${#NAMES[@]} -eq 0 ] && NAMES=("${ORDER[@]}")

runs=()
for name in "${NAMES[@]}"; do
  [ -n "${KNOB[$name]+x}" ] || { echo "unknown ablation: $name (known: ${ORDER[*]})" >&2; exit 2; }
  dir="logs/ablate_$name"
  runs+=("$dir")
  args=()
  for a in "${BASE[@]}"; do args+=("$a"); done
  # --remove_from=DROP removes the base's --remove_from instead of adding a flag
  if [ "${KNOB[$name]}" = "--remove_from=DROP" ]; then
    args=(); for a in "${BASE[@]}"; do [ "$a" = "--remove_from" ] || args+=("$a"); done
  else
    read -r -a extra <<< "${KNOB[$name]}"; args+=("${extra[@]}")
  fi
  state=$(python -c "import json,sys; print(json.load(open(sys.argv[1])).get('status',''))" \
          "$dir/status.json" 2>/dev/null || true)
  if [ "$state" = "finished" ]; then
    echo "== $name: finished, skipped"
  elif [ -f "$dir/last.pt" ]; then
    echo "== $name: resuming"
    python -m text2sql train --resume "$dir" --epochs "$EPOCHS"
  else
    echo "== $name: python -m text2sql train ${args[*]} --epochs $EPOCHS --run_dir $dir"
    python -m text2sql train "${args[@]}" --epochs "$EPOCHS" --run_dir "$dir" --note "ablation: $name"
  fi
done
python -m text2sql compare "${runs[@]}"
exit
}
