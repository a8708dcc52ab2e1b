#!/usr/bin/env bash
# The demo's commands, in one place: `make demo` runs this script, tests/test_demo.py runs it on a smaller
# budget. Synthetic CT task -> plan and preprocess -> train the four networks -> predict the test images
# -> leaderboard, box plots and overlays; then it says where every output is.
#
# Settings (environment variables; `make demo` passes its own of the same names):
#   BIN           folder holding the monet_* commands (default .venv/bin)
#   MONET_raw, MONET_preprocessed, MONET_results   data roots (default ./monet_data/{raw,preprocessed,results})
#   DEMO_DIR      where the test-image predictions go, under DEMO_DIR/predictions (default ./monet_data)
#   DEMO_EPOCHS   epochs of the small networks, DEMO_MODELS (default 5); an epoch is one pass over the
#                 training slices (the demo task: 166 slices, 21 steps at batch 8)
#   DEMO_SMOKE_EPOCHS  epochs of the big ones, DEMO_SMOKE_MODELS (default 1): a smoke run, which shows the
#                 network runs end to end (they need several times MoNet's CPU time, docs/performance.md)
#   DEMO_BATCH    batch size (default 8)
#   DEMO_MODELS   networks trained for DEMO_EPOCHS (default "monet unet16")
#   DEMO_SMOKE_MODELS  networks trained for DEMO_SMOKE_EPOCHS (default "unet64 attention_unet")
#   DEMO_CASES, DEMO_SHAPE   synthetic training cases (default 12) and case size "X Y Z" (default 96 80 24)
#   DEMO_NP       worker processes for preprocessing and evaluation (default 2)
set -euo pipefail

BIN=${BIN:-.venv/bin}
DEMO_DIR=${DEMO_DIR:-$PWD/monet_data}
export MONET_raw=${MONET_raw:-$DEMO_DIR/raw}
export MONET_preprocessed=${MONET_preprocessed:-$DEMO_DIR/preprocessed}
export MONET_results=${MONET_results:-$DEMO_DIR/results}
DEMO_EPOCHS=${DEMO_EPOCHS:-5}
DEMO_SMOKE_EPOCHS=${DEMO_SMOKE_EPOCHS:-1}
DEMO_BATCH=${DEMO_BATCH:-8}
DEMO_MODELS=${DEMO_MODELS-monet unet16}
DEMO_SMOKE_MODELS=${DEMO_SMOKE_MODELS-unet64 attention_unet}
DEMO_CASES=${DEMO_CASES:-12}
DEMO_SHAPE=${DEMO_SHAPE:-96 80 24}
DEMO_NP=${DEMO_NP:-2}
TASK=Task901_SyntheticCT
PREDICTIONS=$DEMO_DIR/predictions/$TASK/monet
start=$(date +%s)

# shellcheck disable=SC2086  # DEMO_SHAPE and DEMO_MODELS are word lists on purpose
"$BIN/monet_synthetic_task" -o "$MONET_raw" --kind ct --cases "$DEMO_CASES" --shape $DEMO_SHAPE
"$BIN/monet_plan_and_preprocess" -t 901 -np "$DEMO_NP"
# Budgets are whole passes over the training slices at batch DEMO_BATCH (no --iters-per-epoch cap), so the
# leaderboard's epochs / train_steps columns mean what they say. --continue: a rerun keeps finished
# networks and resumes an interrupted one.
for model in $DEMO_MODELS; do
  "$BIN/monet_train" -t 901 -m "$model" --epochs "$DEMO_EPOCHS" --batch-size "$DEMO_BATCH" --continue
done
# Smoke runs skip the reduced-precision checks that monet_train runs after training on a CPU with native
# bf16 / VNNI (--prepare-precision auto): for the two 31M-parameter networks they took about a minute each.
for model in $DEMO_SMOKE_MODELS; do
  "$BIN/monet_train" -t 901 -m "$model" --epochs "$DEMO_SMOKE_EPOCHS" --batch-size "$DEMO_BATCH" --continue \
    --prepare-precision none
done
"$BIN/monet_predict" -i "$MONET_raw/$TASK/imagesTs" -o "$PREDICTIONS" -t 901 -m monet --overwrite
"$BIN/monet_evaluate" -t 901 -np "$DEMO_NP"

results=$MONET_results/$TASK
cat <<EOF

Demo finished in $(( $(date +%s) - start )) s. Each epoch is one pass over the training slices at batch $DEMO_BATCH.
  ${DEMO_MODELS:-(none)}: $DEMO_EPOCHS epoch(s) each, the same budget: a demo-sized comparison on synthetic data.
  ${DEMO_SMOKE_MODELS:-(none)}: $DEMO_SMOKE_EPOCHS epoch(s) each: SMOKE RUNS (they run end to end; their Dice is not
  the network's). The leaderboard's epochs / train_steps / train_s columns and the box plot's labels
  give every row's budget; train longer with e.g. make demo DEMO_SMOKE_EPOCHS=5.

Where everything is:
  synthetic task (NIfTI)     $MONET_raw/$TASK
  plans, slice cache, split  $MONET_preprocessed/$TASK
  trained networks           $results/<model>__monetPlans_ctx1/fold_0/
                             (checkpoint_final.pth, checkpoint_best.pth, training_log.csv, progress.png,
                              config.json, validation/*.nii.gz + summary.json)
  leaderboard                $results/leaderboard.csv, leaderboard.png
  overlays                   $results/overlays/<model>__monetPlans_ctx1_{median,worst}.png
  test-image predictions     $PREDICTIONS

The commands are in $BIN: run them as $BIN/monet_train ..., or first
  source $BIN/activate
and then monet_train, monet_predict, monet_evaluate, ... (each has --help). The data roots above are
MONET_raw, MONET_preprocessed, MONET_results; export them to work on these folders from another shell.
EOF
