# The gradsweep image: Ray head and workers, the MLflow server and optuna-dashboard all run it.
#   docker compose build            (or: docker build -t gradsweep .)
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0

# torch first and from its CPU index: an open install would pull a multi-GB CUDA build. The gpu
# profile rebuilds with TORCH_INDEX_URL empty (pip's default index: CUDA wheels).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"; \
    else \
        pip install "torch==$TORCH_VERSION"; \
    fi

WORKDIR /app
# ray[default] adds the Ray dashboard, mlflow[auth] the server's optional basic auth; the
# project's own pins keep both at the versions gradsweep is tested with.
COPY pyproject.toml README.md ./
COPY search search
COPY spaces spaces
COPY trainers trainers
RUN pip install . "ray[default]" "mlflow[auth]" "optuna-dashboard>=0.20"
COPY deploy deploy

# Non-root: trials run arbitrary configurations; /app/gradsweep-runs is the shared Ray storage
# (and default output_dir) that compose mounts on the head and every worker.
RUN useradd --create-home --uid 1000 gradsweep \
    && mkdir -p /app/gradsweep-runs /app/mlartifacts \
    && chown gradsweep:gradsweep /app/gradsweep-runs /app/mlartifacts
USER gradsweep

# 6379 Ray GCS, 8265 Ray dashboard, 5000 MLflow, 8080 optuna-dashboard
EXPOSE 6379 8265 5000 8080
CMD ["gradsweep", "--help"]
