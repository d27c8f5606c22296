#!/usr/bin/env bash
# The official SParC protocol: train on train.json, validate on dev.json (EditSQL's comparison).
#   scripts/train_sparc.sh [DATA_DIR] [extra train flags...]
# DATA_DIR holds train.json, dev.json and tables.json (default ../shared/data/sparc).
# Without CUDA the encoder is frozen and its outputs cached (--fix_bert); with CUDA it is fine-tuned
# in bf16 (--device cuda --amp). Extra flags after DATA_DIR override the defaults below.
# FROM-less targets (--remove_from) as EditSQL's reported figures use, and the loss averaged over
# target tokens (--loss_weighting per_step), which beat the summed loss in the ablations
# (docs/experiments.md; scripts/ablate_sparc.sh reruns them).
# Checkpoints go to logs/<run>/; `python -m text2sql train --resume logs/<run>` continues one.
set -euo pipefail
DATA="${1:-../shared/data/sparc}"
shift || true
if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  ENCODER=(--device cuda --amp --lr_bert 1e-5)
else
  ENCODER=(--fix_bert)
fi
exec python -m text2sql train --data "$DATA" --protocol official "${ENCODER[@]}" \
  --batch_size 16 --shuffle --epochs 30 --max_turn 5 --lr 1e-3 --train_eval_size 200 \
  --remove_from --loss_weighting per_step \
  --note "official split: SParC train -> dev" "$@"
