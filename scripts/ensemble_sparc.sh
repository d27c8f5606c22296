#!/usr/bin/env bash
# The best interaction match so far, in one command: the four-run ensemble of the README's results
# table (docs/experiments.md, fourteenth and fifteenth sessions), decoded with a beam over whole
# interactions.
#   scripts/ensemble_sparc.sh [DATA_DIR] [LOG_DIR] [extra train flags...]
# DATA_DIR as for scripts/train_sparc.sh (default ../shared/data/sparc); the members and the
# ensemble's report go under LOG_DIR (default logs). Extra flags go to every member's training.
#
# Members, each trained and evaluated by scripts/train_sparc.sh (which skips what is done, so a
# stopped run of this script continues where it stopped):
#   recipe_s3        the recipe, seed 3, float32 (AMP=0)
#   recipe_s3_amp    the recipe, seed 3, bf16 autocast -- where the CPU has bf16 units and no GPU
#                    is present; elsewhere that run would repeat the first one's settings, so
#                    recipe_s5 (seed 5) takes its place
#   recipe_s4        the recipe, seed 4 (recipe_s4_amp where bf16 autocast is on)
#   prevutt3_s4      the same plus --previous_utterances 3 (prevutt3_s4_amp likewise)
# then `evaluate --ensemble ... --beam 4 --turn_beam 2` into LOG_DIR/ensemble4/beam4_turn2.
# Measured on the 2-core VM with bf16 units: 45.47 question / 29.15 interaction match on SParC dev
# (official metric). On CPU, each member takes about 60-90 minutes with the encoder frozen; they
# run one after the other here (start them by hand with scripts/train_sparc.sh to run them side
# by side, one thread each, then run this script to add what is missing and the ensemble).
set -euo pipefail
# the whole script is one block, which bash reads before it runs any of it: bash reads a script
# as it goes, so an edit in place during a run's hours would otherwise have it resume
# at a byte offset of the new file when a phase ends (a syntax error, or the wrong command)
{
DATA="${1:-../shared/data/sparc}"
LOGS="${2:-logs}"
shift 2 || shift $# || true
HERE="$(cd "$(dirname "$0")" && pwd)"
# the members were measured with the recipe's earlier encoder output, the mean of the last 4 hidden
# states; the recipe's layer mix (its default since) would make them other runs than the measured ones
export MIX=0

# the members were measured with bf16 autocast on a CPU with bf16 units: AMP=1 for them unless
# AMP=0 is set (scripts/train_sparc.sh keeps float32 on a CPU by default)
export AMP="${AMP:-1}"
# does scripts/train_sparc.sh add --amp here (no GPU, a CPU with bf16 units, AMP not 0)?
if [ "$AMP" != 0 ] && python -c "import sys, torch; from text2sql.tensors import has_bf16; \
sys.exit(0 if not torch.cuda.is_available() and has_bf16('cpu') else 1)"; then
  SUFFIX=_amp
  SECOND=("$LOGS/recipe_s3_amp" --seed 3)
else
  SUFFIX=
  if python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    SUFFIX=_amp      # on a GPU every member fine-tunes in bf16
  fi
  SECOND=("$LOGS/recipe_s5$SUFFIX" --seed 5)
fi

AMP=0 "$HERE/train_sparc.sh" "$DATA" "$LOGS/recipe_s3" --seed 3 "$@"
"$HERE/train_sparc.sh" "$DATA" "${SECOND[0]}" "${SECOND[@]:1}" "$@"
"$HERE/train_sparc.sh" "$DATA" "$LOGS/recipe_s4$SUFFIX" --seed 4 "$@"
"$HERE/train_sparc.sh" "$DATA" "$LOGS/prevutt3_s4$SUFFIX" --seed 4 --previous_utterances 3 "$@"

python -m text2sql evaluate --run "$LOGS/recipe_s3" \
    --ensemble "${SECOND[0]}" "$LOGS/recipe_s4$SUFFIX" "$LOGS/prevutt3_s4$SUFFIX" \
    --beam 4 --turn_beam 2 --out "$LOGS/ensemble4/beam4_turn2"
exit
}
