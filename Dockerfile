# CAR-T Watch image: every long-running process (`carwatch worker`, `mllp`, `fhir-gateway`,
# `alerts webhook`, `web`) and the tools (`feed`, `alerts tail`, `replay`).
#   docker build -t carwatch .
#   docker run --rm -e CARWATCH_BROKER_URL=kafka://kafka:9092 carwatch worker
# Dependencies come pinned from requirements.lock (`make lock`), the same versions the tests ran.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
COPY schemas ./schemas
COPY streams ./streams
# rocksdict: the production table store (CARWATCH_STORE=rocksdb:// uses the rocksdict driver);
# -c: only the runtime packages are installed, each at its locked version.
RUN pip install -c requirements.lock ".[rocksdict]" \
    && pip check \
    && useradd --system --uid 10001 --home-dir /var/lib/carwatch --create-home carwatch

USER carwatch
WORKDIR /var/lib/carwatch
ENV CARWATCH_DATA_DIR=/var/lib/carwatch/data
# Metrics: worker 9464, MLLP 9465, FHIR gateway 9466, webhook deliverer 9467; inside a container
# bind them with CARWATCH_METRICS_HOST=0.0.0.0. Listeners: MLLP 2575, FHIR 8080 (--host 0.0.0.0).
# The web: pages 8468, metrics 9468 (CARWATCH_UI_HOST / CARWATCH_UI_METRICS_HOST=0.0.0.0).
EXPOSE 9464 9465 9466 9467 9468 2575 8080 8468
ENTRYPOINT ["carwatch"]
CMD ["worker"]
