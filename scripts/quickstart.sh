#!/usr/bin/env bash
# The main job on the offline default data (Fashion-MNIST): install everything, train a teacher, build its category
# cost matrix, train the student alone, with KD and with WKD-L, and print a table of validation top-1.
# Interrupted? Run it again: finished runs are skipped and an unfinished one resumes from its last checkpoint.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/install.sh"
RUNS=runs/fashion_mnist

fit() {  # fit CONFIG_NAME: train configs/fashion_mnist/NAME.yaml into runs/fashion_mnist/NAME
  local name=$1 dir=$RUNS/$1 resume=()
  if grep -qs '"complete": true' "$dir/summary.json"; then
    echo "[quickstart] $name: finished earlier, skipped ($dir)"
    return
  fi
  compgen -G "$dir/checkpoints/last*.ckpt" >/dev/null && resume=(--ckpt_path last)  # last.ckpt or last-interrupted.ckpt
  echo "[quickstart] wkd fit -c configs/fashion_mnist/$name.yaml ${resume[*]}"
  wkd fit -c "configs/fashion_mnist/$name.yaml" "${resume[@]}"
}

fit teacher
if [ ! -f "$RUNS/ir/class_mean_cosine.pt" ]; then
  echo "[quickstart] wkd-ir -c configs/fashion_mnist/ir.yaml --overwrite true"
  wkd-ir -c configs/fashion_mnist/ir.yaml --overwrite true  # files of an interrupted earlier attempt are redone
fi
fit vanilla
fit kd
fit wkd_l
echo
wkd summary "$RUNS/teacher" "$RUNS/vanilla" "$RUNS/kd" "$RUNS/wkd_l"
