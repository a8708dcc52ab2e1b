#!/usr/bin/env bash
# The paper's comparison (MoNet vs U-Net-16, U-Net-64, Attention U-Net; Table 1 / Fig. 4 / Fig. 5) on real
# MSD Task04_Hippocampus, fold 0 of the 70/30 split, in one work folder. docs/results.md shows its output.
#
#   scripts/reproduce_task04.sh [WORK] [steps|budget|all]     (default: ./task04_work all)
#
# WORK/raw/Task04_Hippocampus must hold the MSD task (tar -xf Task04_Hippocampus.tar -C WORK/raw), or set
# TASK04_SRC=/path/to/Task04_Hippocampus to have it linked there. Everything else is written under WORK:
#   WORK/preprocessed                      plans, slice cache, splits_final.json (shared by both parts)
#   WORK/results/Task04_Hippocampus        part "steps": every network for the same number of optimizer steps
#   WORK/results_budget/Task04_Hippocampus part "budget": every network for the same wall-clock budget
#   WORK/predictions/<part>/<model>        monet_predict's output for the 60 validation cases
#   WORK/val_images                        links to those cases' images (monet_predict's input)
# Each part's results folder gets leaderboard.csv (+ leaderboard.md, the same as a Markdown table),
# leaderboard.png, overlays/, training_curves.png and inspect/fig5_<case>.png (+ its per-layer CSV),
# and the pictures are copied to docs/img/ (IMG_DIR) as task04_<part>_*.png.
#
# Settings (environment variables):
#   BIN        folder of the monet_* commands (default .venv/bin)
#   EPOCHS, ITERS   part "steps": --epochs and --iters-per-epoch (default 2 x 50 = 100 optimizer steps)
#   BATCH      batch size of both parts (default 8; the plan's is 32)
#   BUDGET     part "budget": monet_train --time-budget per network, final validation included (default 5m)
#   BUDGET_ITERS  part "budget": steps per epoch (default 25). The budget is checked between epochs and every
#              epoch ends with an inner validation, so an epoch must be short next to the budget: at the
#              default 250 steps one U-Net-64 epoch alone takes far longer than 5 minutes on 2 cores.
#   THREADS    torch threads for training (default 2; on a shared machine 1 stalls less)
#   PREDICT_MODELS  networks whose validation cases monet_predict also predicts (default monet; monet_train's
#              final validation has already predicted them for every network, which the leaderboard uses)
#   NP         worker processes for preprocessing and evaluation (default 2)
#   CASE       validation case drawn by monet_inspect (default hippocampus_367 when it is a val case,
#              else the first val case)
#   IMG_DIR    where the pictures are copied (default docs/img; empty: not copied)
#   CONTEXT    --context-slices of the plans every network trains on (default 0: the paper's 2D slices, plans
#              monetPlans; 1: monet_plan_and_preprocess's default 2.5D input, plans monetPlans_ctx1)
set -euo pipefail

WORK=$(realpath -m "${1:-task04_work}")
PART=${2:-all}
case "$PART" in steps | budget | all) ;; *)
  echo "error: part must be steps, budget or all, not '$PART'" >&2
  exit 2
  ;;
esac
BIN=${BIN:-.venv/bin}
EPOCHS=${EPOCHS:-2}
ITERS=${ITERS:-50}
BATCH=${BATCH:-8}
BUDGET=${BUDGET:-5m}
BUDGET_ITERS=${BUDGET_ITERS:-25}
PREDICT_MODELS=${PREDICT_MODELS-monet}
THREADS=${THREADS:-2}
NP=${NP:-2}
IMG_DIR=${IMG_DIR-docs/img}
CONTEXT=${CONTEXT:-0}
PLANS=monetPlans
[ "$CONTEXT" = 0 ] || PLANS=monetPlans_ctx$CONTEXT
MODELS="monet unet16 unet64 attention_unet"
TASK=Task04_Hippocampus
export MONET_raw=$WORK/raw MONET_preprocessed=$WORK/preprocessed

mkdir -p "$MONET_raw"
if [ ! -d "$MONET_raw/$TASK" ]; then
  if [ -n "${TASK04_SRC:-}" ]; then
    ln -s "$(realpath "$TASK04_SRC")" "$MONET_raw/$TASK"
  else
    echo "error: $MONET_raw/$TASK not found. Download Task04_Hippocampus.tar (medicaldecathlon.com) and run" >&2
    echo "  tar -xf Task04_Hippocampus.tar -C $MONET_raw    (or set TASK04_SRC=/path/to/Task04_Hippocampus)" >&2
    exit 1
  fi
fi

stamp() { echo "== $(date -u +%H:%M:%S) load:$(cut -d' ' -f1-3 /proc/loadavg) $*"; }

stamp "plan and preprocess"
"$BIN/monet_plan_and_preprocess" -t 4 -np "$NP" --context-slices "$CONTEXT"
SPLIT=$MONET_preprocessed/$TASK/splits_final.json

# monet_predict's input: links to the fold-0 validation images (the 30 % hold-out, 60 cases).
mkdir -p "$WORK/val_images"
"$BIN/python" - "$SPLIT" "$MONET_raw/$TASK/imagesTr" "$WORK/val_images" <<'EOF'
import json, os, sys
split, images, out = sys.argv[1:]
for case in json.load(open(split))[0]["val"]:
    link = os.path.join(out, f"{case}_0000.nii.gz")
    if not os.path.lexists(link):
        os.symlink(os.path.join(images, f"{case}.nii.gz"), link)
EOF
CASE=${CASE:-$("$BIN/python" -c "import json,sys; v=json.load(open(sys.argv[1]))[0]['val']; \
print('hippocampus_367' if 'hippocampus_367' in v else v[0])" "$SPLIT")}

# One part: train the four networks (flags in $@), predict the val cases, leaderboard, CPU time per 150
# slices, box plot, overlays, training curves and the activation figure.
run_part() {
  local part=$1 results=$2
  shift 2
  export MONET_results=$results
  for model in $MODELS; do
    stamp "$part: train $model $*"
    "$BIN/monet_train" -t 4 -m "$model" -p "$PLANS" --batch-size "$BATCH" --num-threads "$THREADS" --continue "$@"
  done
  for model in $PREDICT_MODELS; do
    stamp "$part: predict the validation cases with $model"
    "$BIN/monet_predict" -i "$WORK/val_images" -o "$WORK/predictions/$part/$model" -t 4 -m "$model" -p "$PLANS" -f 0
    "$BIN/monet_evaluate" -ref "$MONET_raw/$TASK/labelsTr" -pred "$WORK/predictions/$part/$model" \
      --split "$SPLIT" --fold 0 -np "$NP"
  done
  # CPU seconds per 150 slices of 256 x 256 (the paper's Table 2 setting; reported per 150 whatever --slices
  # is): the networks' speed, not their training, so it is measured once and copied to the other part.
  if [ -f "$WORK/benchmark.csv" ]; then
    cp "$WORK/benchmark.csv" "$results/$TASK/benchmark.csv"
  else
    stamp "$part: CPU seconds per 150 slices"
    "$BIN/monet_benchmark" -m $MODELS --slices 30 --repeats 2 --threads "$THREADS" --update-leaderboard 4 \
      -o "$WORK/benchmark_rows.csv"
    cp "$results/$TASK/benchmark.csv" "$WORK/benchmark.csv"
  fi
  stamp "$part: leaderboard, box plot, overlays"
  "$BIN/monet_evaluate" -t 4 -np "$NP"
  "$BIN/python" scripts/leaderboard_table.py "$results/$TASK/leaderboard.csv" >"$results/$TASK/leaderboard.md"
  stamp "$part: activations (Fig. 5) on $CASE"
  "$BIN/monet_inspect" -t 4 -m $MODELS -p "$PLANS" --case "$CASE" -o "$results/$TASK/inspect/fig5_$CASE.png"
  "$BIN/python" scripts/plot_curves.py "$results/$TASK" -o "$results/$TASK/training_curves.png"
  if [ -n "$IMG_DIR" ]; then
    mkdir -p "$IMG_DIR"
    cp "$results/$TASK/leaderboard.png" "$IMG_DIR/task04_${part}_boxplot.png"
    cp "$results/$TASK/training_curves.png" "$IMG_DIR/task04_${part}_curves.png"
    cp "$results/$TASK/inspect/fig5_$CASE.png" "$IMG_DIR/task04_${part}_fig5.png"
    for f in "$results/$TASK"/overlays/*_median.png; do
      cp "$f" "$IMG_DIR/task04_${part}_overlay_$(basename "${f%%__*}").png"
    done
  fi
  stamp "$part: done: $results/$TASK/leaderboard.csv"
}

if [ "$PART" != budget ]; then
  run_part steps "$WORK/results" --epochs "$EPOCHS" --iters-per-epoch "$ITERS"
fi
if [ "$PART" != steps ]; then
  run_part budget "$WORK/results_budget" --time-budget "$BUDGET" --iters-per-epoch "$BUDGET_ITERS"
fi
