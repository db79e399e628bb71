#!/usr/bin/env bash
# The GPU check in one command: everything only a GPU can show, in under 8 minutes, into ONE summary.
#
#   bash scripts/gpu_check.sh                  # on a machine with a CUDA GPU
#   bash scripts/gpu_check.sh --dry-run        # anywhere: the gpu tests collect and skip, every
#                                              # command exists and accepts its arguments, configs compose;
#                                              # the gpu tests' bodies run on the CPU (wave's left out)
#   docker run --gpus all -v "$PWD/gpu-check:/app/gpu-check" IMAGE bash scripts/gpu_check.sh
#
# Steps (each under its own time limit; a step that fails or times out is reported, the rest still run):
#   1. environment: torch, CUDA device, Triton, C compiler; are the Philox normals bit-identical?
#   2. pytest -m gpu (tests/test_gpu.py): every conv backend and surgery variant forward + backward on
#      CUDA in float32 and bf16-mixed, the compiled four-pass camera on Triton == the eager chain with
#      the same draws, Philox words CPU == CUDA, fourier under its memory budget
#   3. bench/throughput.py --device cuda   (training throughput of the variants; per-layer impls)
#   4. bench/optics.py --device cuda       (optical vs direct training step; fourier time and peak memory)
#   5. bench/attention.py --device cuda    (attention-metric overhead on a validation epoch)
#   6. convshare train trainer=gpu trainer.max_epochs=2 (bf16-mixed, the embedded digits)
#
# Output: $OUT/summary.md (the one file to read and paste) and $OUT/logs/<step>.log (full outputs).
# Options: --out DIR (default gpu-check), --dry-run. Environment: PYTHON (default python).
set -uo pipefail

OUT=gpu-check
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --dry-run, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
mkdir -p "$OUT/logs"
SUMMARY="$OUT/summary.md"
DETAILS="$OUT/logs/details.part"
FAILED=0
START=$(date +%s)

# the commands of the real run (the dry run checks these very arguments)
GPU_TESTS=(-m pytest tests/test_gpu.py -m gpu -q -rs -p no:cacheprovider)
THROUGHPUT=(bench/throughput.py --device cuda --rounds 3 --layers)
OPTICS=(bench/optics.py --device cuda --rounds 3)
ATTENTION=(bench/attention.py --device cuda --rounds 3)
TRAIN=(trainer=gpu trainer.max_epochs=2 logger=csv "run.root=$OUT/runs")

{
  echo "# GPU check ($([ "$DRY" = 1 ] && echo "dry run, no GPU used" || echo "CUDA"))"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  echo "| step | status | seconds | command |"
  echo "|---|---|---:|---|"
} > "$SUMMARY"
: > "$DETAILS"

# step NAME LIMIT_S TAIL_LINES CMD...: run CMD under a time limit, log it, add a row and its output's tail
step() {
  local name="$1" limit="$2" tail_lines="$3"
  shift 3
  local log="$OUT/logs/$name.log" t0 rc status
  t0=$(date +%s)
  echo ">>> $name: $*"
  timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="TIMEOUT (${limit} s)"; FAILED=1 ;;
    *) status="FAILED (exit $rc)"; FAILED=1 ;;
  esac
  echo "| $name | $status | $(($(date +%s) - t0)) | \`$*\` |" >> "$SUMMARY"
  {
    echo
    echo "## $name: $status"
    echo
    echo '```text'
    tail -n "$tail_lines" "$log"
    echo '```'
  } >> "$DETAILS"
  echo "    $status"
}

if [ "$DRY" = 1 ]; then
  # one process (the imports once): the gpu tests collect and skip, every command of the real run
  # exists and accepts its arguments (each option is in its --help), the train overrides compose
  step dry-run 120 30 env GPU_TESTS="${GPU_TESTS[*]}" BENCHES="${THROUGHPUT[*]};${OPTICS[*]};${ATTENTION[*]}" \
    TRAIN="${TRAIN[*]}" "$PYTHON" scripts/gpu_check_dry_run.py
  # the gpu tests' bodies on the CPU (wave's are left out: ~50 s here), so that they cannot rot between the
  # days a GPU is lent; the memory-budget test needs CUDA's allocator statistics and skips
  step gpu-tests-on-cpu 180 15 env CONVSHARE_GPU_TESTS_DEVICE=cpu "$PYTHON" "${GPU_TESTS[@]}" -k "not wave"
else
  # time limits add up to 450 s (7.5 min): the check ends within 8 minutes even when a step hangs
  step environment 30 30 bash -c "nvidia-smi -L; $PYTHON scripts/gpu_check_dry_run.py --environment"
  step gpu-tests 150 40 "$PYTHON" "${GPU_TESTS[@]}"
  step throughput 60 40 "$PYTHON" "${THROUGHPUT[@]}"
  step optics 90 30 "$PYTHON" "${OPTICS[@]}"
  step attention 45 30 "$PYTHON" "${ATTENTION[@]}"
  step train 75 15 "$PYTHON" -m lightning_convshare train "${TRAIN[@]}"
fi

{
  echo
  echo "Total $(($(date +%s) - START)) s. Full logs: $OUT/logs/."
  cat "$DETAILS"
} >> "$SUMMARY"
rm -f "$DETAILS"
echo
echo "summary: $SUMMARY"
[ "$FAILED" = 0 ] || { echo "some steps failed; see $SUMMARY" >&2; exit 1; }
