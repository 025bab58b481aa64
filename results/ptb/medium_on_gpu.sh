#!/usr/bin/env bash
# Zaremba et al.'s and Gal & Ghahramani's medium models (2 x 650, 39 epochs each; Gal's
# with MC evaluation over 1,000 samples) on one GPU, in calls of at most MINUTES each.
#
#   bash results/ptb/medium_on_gpu.sh PTB_DIR WORKROOT [MINUTES]
#
# Each call trains for at most MINUTES (default 8) in all, pauses with a checkpoint
# (max_train_minutes) and exits; call it again with the same arguments until it prints
# "all done". A finished run is skipped, a paused one resumes from its last checkpoint.
# Results: WORKROOT/{zaremba_medium,gal_medium}/{metrics.jsonl,config.json,curves.png}.
# Needs jax with CUDA (pip install -U "jax[cuda12]") and the package ('.[train]').
set -euo pipefail
data=${1:?usage: medium_on_gpu.sh PTB_DIR WORKROOT [MINUTES]}
root=${2:?usage: medium_on_gpu.sh PTB_DIR WORKROOT [MINUTES]}
minutes=${3:-8}
deadline=$((SECONDS + minutes * 60))

finished() {  # the run logged its test evaluation (and the MC one when it has MC samples)
  local log=$1/metrics.jsonl want=$2
  [[ -f $log ]] && grep -q "\"split\": \"$want\"" "$log"
}

for variant in zaremba_medium gal_medium; do
  want=test
  [[ $variant == gal_* ]] && want=test_mc
  if finished "$root/$variant" "$want"; then continue; fi
  left=$(((deadline - SECONDS) / 60))
  if ((left < 2)); then
    echo "time is up for this call; run it again to continue"
    exit 0
  fi
  # MC evaluation of 1,000 samples runs after the last step, outside the time budget.
  python -m recurrent.train --config "ptb:$variant" \
    --config.data_dir="$data" --config.max_train_minutes="$((left - 1))" \
    --config.progress=False --workdir "$root/$variant"
  if ! finished "$root/$variant" "$want"; then
    echo "$variant paused; run this script again to continue"
    exit 0
  fi
done
echo "all done"
for variant in zaremba_medium gal_medium; do
  grep '"split": "test' "$root/$variant/metrics.jsonl"
done
