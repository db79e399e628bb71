# CUDA-capable PyTorch base; `docker run --gpus all IMAGE` trains the default, and any
# `convshare ...` command line can be given instead, e.g.
#   docker run --gpus all -e WANDB_API_KEY IMAGE convshare train trainer=gpu
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

WORKDIR /workspace/lightning_convshare
COPY pyproject.toml README.md ./
COPY lightning_convshare ./lightning_convshare
COPY conf ./conf
COPY sweeps ./sweeps
RUN pip install --no-cache-dir .

# runs, W&B files and checkpoints go under /workspace/runs (mount a volume there to keep them)
WORKDIR /workspace
ENV WANDB_DIR=/workspace/runs
CMD ["convshare", "train"]
