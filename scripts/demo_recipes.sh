#!/usr/bin/env bash
# Does a training recipe hold at `make demo`'s scale? Trains the demo's MoNet run (synthetic CT task,
# DEMO_EPOCHS passes over the training slices at batch 8, no time budget) once per recipe and seed,
# recipes alternating so that a noisy machine hits each alike, and prints each run's final validation
# Dice. The one-hour Task04 ablation (scripts/ablate_task04.py) measures recipes at the other end.
#
#   bash scripts/demo_recipes.sh WORK "FLAGS A" "FLAGS B" ...
#   e.g. bash scripts/demo_recipes.sh /tmp/demo_recipes "--recipe paper" ""     # the paper's vs the defaults
#
# WORK holds the synthetic task and its cache (made once, reused) and one results folder per run.
# Settings (environment): BIN (default .venv/bin), SEEDS (default "12345 2"), DEMO_EPOCHS (default 5),
# DEMO_BATCH (default 8).
set -euo pipefail

WORK=${1:?usage: demo_recipes.sh WORK "FLAGS" ["FLAGS" ...]}
shift
[ $# -gt 0 ] || { echo "give at least one recipe, as one quoted string of monet_train flags (\"\" = defaults)" >&2; exit 2; }
BIN=${BIN:-.venv/bin}
SEEDS=${SEEDS:-12345 2}
DEMO_EPOCHS=${DEMO_EPOCHS:-5}
DEMO_BATCH=${DEMO_BATCH:-8}
export MONET_raw=$WORK/raw MONET_preprocessed=$WORK/preprocessed
mkdir -p "$WORK"
if [ ! -f "$MONET_preprocessed/Task901_SyntheticCT/splits_final.json" ]; then
  "$BIN/monet_synthetic_task" -o "$MONET_raw" --kind ct --cases 12 --shape 96 80 24 > "$WORK/prepare.log" 2>&1
  "$BIN/monet_plan_and_preprocess" -t 901 -np 2 >> "$WORK/prepare.log" 2>&1
fi
echo "load $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs, $DEMO_EPOCHS passes at batch $DEMO_BATCH"
for seed in $SEEDS; do
  for i in $(seq 1 $#); do
    flags=${!i}
    run=$WORK/runs/seed${seed}_recipe$i
    rm -rf "$run"
    mkdir -p "$run"
    start=$(date +%s)
    # shellcheck disable=SC2086  # the recipe is a word list on purpose
    MONET_results=$run "$BIN/monet_train" -t 901 -m monet --epochs "$DEMO_EPOCHS" --batch-size "$DEMO_BATCH" \
      --seed "$seed" --prepare-precision none $flags > "$run/train.log" 2>&1
    dice=$(grep -o 'mean foreground Dice [0-9.]* ([^)]*)' "$run/train.log" | tail -1)
    echo "seed $seed recipe $i [${flags:-defaults}]: $(( $(date +%s) - start )) s, $dice"
  done
done
