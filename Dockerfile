# lightning_convshare on a GPU, with what torch.compile needs at run time: Triton builds each kernel's
# launcher with a C compiler against the Python headers (python:*-slim ships the headers; build-essential
# adds gcc), so `optics=optical` (compile: true) works, on the CPU too. The torch is the one the suite runs
# on; its PyPI wheel brings the CUDA libraries and Triton, the host's driver comes with `--gpus all`.
#
#   docker build -t convshare .
#   docker run --gpus all convshare                                   # convshare train (the default)
#   docker run --gpus all -e WANDB_API_KEY convshare convshare train trainer=gpu
#   docker run --gpus all -v "$PWD/gpu-check:/app/gpu-check" convshare bash scripts/gpu_check.sh
#                                                                     # the GPU check: gpu-check/summary.md
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential git \
    && rm -rf /var/lib/apt/lists/*

ARG TORCH_VERSION=2.14.1
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}"

WORKDIR /app
# the package and everything it reads at run time (conf/ is also packaged into the wheel)
COPY pyproject.toml README.md ./
COPY lightning_convshare ./lightning_convshare
COPY conf ./conf
COPY sweeps ./sweeps
RUN pip install --no-cache-dir ".[dev]"
# what the GPU check runs: the script, the benchmarks and the tests marked gpu (with their conftest)
COPY scripts ./scripts
COPY bench ./bench
COPY tests ./tests

# runs, W&B files and checkpoints go under /app/runs (mount a volume there to keep them)
ENV WANDB_DIR=/app/runs
CMD ["convshare", "train"]
