#!/bin/bash
# Multi-node DDP training with torchrun. Run this script on every node:
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 scripts/torchrun_ddp.sh [overrides]   # on node0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 scripts/torchrun_ddp.sh [overrides]   # on node1
#
# torchrun starts one process per GPU and sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT;
# Lightning detects them (TorchElasticEnvironment) and does not launch processes itself. All
# ranks name their run directory runs/<surgery>-torchrun-<rdzv id>, so pass the same RDZV_ID on
# every node (a new one per training run). On one machine, `torchrun --standalone` needs none of this:
#
#   torchrun --standalone --nproc-per-node=4 "$(which convshare)" train trainer=ddp trainer.devices=4
set -euo pipefail
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
GPUS="${GPUS:-$(nvidia-smi -L | wc -l)}"
MASTER_ADDR="${MASTER_ADDR:-localhost}"
MASTER_PORT="${MASTER_PORT:-29500}"
RDZV_ID="${RDZV_ID:-convshare-$(date +%Y%m%d)}"

exec torchrun --nnodes="$NNODES" --node-rank="$NODE_RANK" --nproc-per-node="$GPUS" \
  --rdzv-backend=static --rdzv-id="$RDZV_ID" --master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT" \
  "$(which convshare)" train trainer=ddp trainer.num_nodes="$NNODES" trainer.devices="$GPUS" "$@"
