#!/usr/bin/env bash
# The README's fine-tuning table (issue 16): the digits `vit` baseline fine-tuned into same 3x3, valid 3x3 and
# valid 5x5 ConvShare form, one-shot and shrinking, against the same architectures trained from scratch.
#
#   bash scripts/finetune_grid.sh TEACHER_CKPT RUNS_DIR      # e.g. runs/teacher/vit/checkpoints/last.ckpt /tmp/ft_runs
#   python scripts/finetune_table.py RUNS_DIR                # the table, from RUNS_DIR/<method>_<arch>_e<epochs>/metrics.json
#   SEED=1 bash scripts/finetune_grid.sh ...                 # another seed: RUNS_DIR/seed1_<method>_<arch>_e<epochs>
#
# One run at a time (OMP_NUM_THREADS=1); a run whose metrics.json exists is skipped, so the script continues
# an interrupted grid. The teacher is `convshare train surgery=vit` (60 epochs, val/acc 0.975-0.983 over two runs).
set -uo pipefail
[ $# -eq 2 ] || { sed -n '2,10p' "$0"; exit 2; }
V=$1; RUNS=$2; SEED=${SEED:-0}
PREFIX=$([ "$SEED" = 0 ] || echo "seed${SEED}_")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
declare -A ARCH=([same3]="surgery.padding=same surgery.kernel_size=3"
                 [valid3]="surgery.kernel_size=3 surgery.out_policy=crop"
                 [valid5]="surgery.kernel_size=5 surgery.out_policy=crop")
declare -A SCRATCH=([same3]="experiment=same_k3" [valid3]="${ARCH[valid3]}" [valid5]="${ARCH[valid5]}")
for arch in same3 valid3 valid5; do
  for ep in 5 10 20 60; do
    for method in oneshot shrink scratch scratchlr; do
      d=$RUNS/${PREFIX}${method}_${arch}_e${ep}
      [ -f "$d/metrics.json" ] && continue
      case $method in  # fine-tunes and lr 1e-2 scratch at 5/10/20 epochs, default scratch also at 60
        scratch) warm=$([ "$ep" = 60 ] || echo optim.warmup_epochs=1)
                 cmd="convshare train ${SCRATCH[$arch]} trainer.max_epochs=$ep $warm" ;;
        scratchlr) [ "$ep" = 60 ] && continue
                   cmd="convshare train ${SCRATCH[$arch]} trainer.max_epochs=$ep optim.lr=1e-2 optim.warmup_epochs=1" ;;
        *) [ "$ep" = 60 ] && continue
           exp=$([ "$method" = shrink ] && echo finetune_shrink || echo finetune)
           cmd="convshare finetune experiment=$exp --source $V ${ARCH[$arch]} trainer.max_epochs=$ep" ;;
      esac
      rm -rf "$d"; echo "$(date +%T) $cmd"
      $cmd seed="$SEED" run.dir="$d" logger=csv > "$d.log" 2>&1 || echo "  failed: see $d.log"
    done
  done
done
