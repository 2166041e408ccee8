#!/usr/bin/env bash
# The GPU check (issue 23): everything that needs CUDA, in one run of at most 10 minutes on one GPU, ending with one
# markdown table to paste into docs/.
#
#   experiments/gpu_check.sh              # run it (on a machine with a CUDA GPU, after `make install`)
#   experiments/gpu_check.sh --dry-run    # print the steps and their commands, run nothing (any machine)
#
# Steps (each under its own time limit; their sum is 570 s):
#   gpu_tests       pytest -m gpu: the CUDA-only tests (features on CUDA, the FSDP re-executed fit)      120 s
#   seqrec_gpu      goracs-run: SmolLM2 SeqRec on ML-100K with features=gpu trainer=gpu eval=gpu, end to end 180 s
#   fsdp_1gpu       goracs-run: the same job fine-tuned with trainer=fsdp on 1 GPU (single node)          120 s
#   bench_features  experiments/bench_features.py --device cuda (gradient-feature throughput)             60 s
#   bench_pipeline  experiments/bench_pipeline.py --device cuda (every stage against its floor, bf16)      90 s
#
# Expected output: one line per step while it runs, then
#   | step | status | seconds | figures |
#   |---|---|---|---|
#   | gpu_tests | ok | 41 | 3 passed |
#   | seqrec_gpu | ok | 150 | test/loss 2.1, ndcg@10 0.05, time/features_s 6.0, time/train_s 60, time/eval_s 40 |
#   | ... |
# (status ok, failed (exit code) or timeout; the figures are read from each step's metrics.json or last lines).
# Every step's full log is in $GPU_CHECK_OUT/<step>.log (default outputs/gpu_check/<timestamp>/).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac

PY=${PY:-.venv/bin/python}
RUN=${RUN:-.venv/bin/goracs-run}
OUT=${GPU_CHECK_OUT:-outputs/gpu_check/$(date +%Y%m%d-%H%M%S)}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled
# A small SmolLM2 SeqRec job: 200 train / 50 valid / 50 test samples (pinned: the CPU default is smaller), GORACS at
# budget 64, 2 epochs.
JOB=(model=smollm2 data=ml100k task=seqrec selection=goracs budget=64 logger=none
     data.max_train=200 data.max_valid=50 data.max_test=50
     trainer.lightning.max_epochs=2 trainer.lightning.accumulate_grad_batches=1 eval.ranking_rows=20
     "paths.cache_dir=$OUT/cache")

STEPS=(gpu_tests seqrec_gpu fsdp_1gpu bench_features bench_pipeline)
declare -A LIMIT=([gpu_tests]=120 [seqrec_gpu]=180 [fsdp_1gpu]=120 [bench_features]=60 [bench_pipeline]=90)
declare -A CMD
CMD[gpu_tests]="$PY -m pytest -q -p no:xdist -m gpu tests"
CMD[seqrec_gpu]="$RUN ${JOB[*]} features=gpu trainer=gpu eval=gpu hydra.run.dir=$OUT/seqrec_gpu"
CMD[fsdp_1gpu]="$RUN ${JOB[*]} features=gpu trainer=fsdp trainer.lightning.devices=1 eval=gpu hydra.run.dir=$OUT/fsdp_1gpu"
CMD[bench_features]="$PY experiments/bench_features.py --device cuda --n 128 --batch-size 32 --json-out $OUT/bench_features.json"
CMD[bench_pipeline]="$PY experiments/bench_pipeline.py --device cuda --dtypes bfloat16 --repeats 1 --override trainer=gpu"

if [[ $DRY == 1 ]]; then
  echo "gpu_check dry run: output folder $OUT"
  total=0
  for step in "${STEPS[@]}"; do
    printf '%-15s %4ss  %s\n' "$step" "${LIMIT[$step]}" "${CMD[$step]}"
    total=$((total + LIMIT[$step]))
  done
  echo "total time limit: ${total} s"
  exit 0
fi

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: nothing to check")' || exit 1
mkdir -p "$OUT"

figures() {  # the figures of one step: metrics.json keys for the goracs-run steps, the last lines otherwise
  local step=$1 log=$2
  if [[ -f "$OUT/$step/metrics.json" ]]; then
    "$PY" - "$OUT/$step/metrics.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
keys = ["status", "test/loss", "test/ndcg@10", "time/features_s", "time/select_s", "time/train_s", "time/eval_s",
        "run/dtype"]
print(", ".join(f"{k} {m[k]:.4g}" if isinstance(m[k], float) else f"{k} {m[k]}" for k in keys if k in m))
EOF
  elif [[ $step == gpu_tests ]]; then
    grep -Eo '[0-9]+ (passed|failed|skipped|error)[^=]*' "$log" | tail -1
  else
    grep -Ev '^\s*$' "$log" | tail -3 | tr '\n' ' ' | cut -c1-300
  fi
}

ROWS=()
for step in "${STEPS[@]}"; do
  log="$OUT/$step.log"
  echo "== $step (limit ${LIMIT[$step]} s): ${CMD[$step]}"
  start=$(date +%s)
  timeout "${LIMIT[$step]}" bash -c "${CMD[$step]}" >"$log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  case $rc in
    0) status=ok ;;
    124) status=timeout ;;
    *) status="failed ($rc)" ;;
  esac
  echo "   $status in ${secs} s (log $log)"
  ROWS+=("| $step | $status | $secs | $(figures "$step" "$log") |")
done

echo
echo "| step | status | seconds | figures |"
echo "|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
