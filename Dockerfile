# CAR-T Watch worker image (also runs `carwatch feed` / `carwatch alerts tail`).
#   docker build -t carwatch .
#   docker run --rm -e CARWATCH_BROKER_URL=kafka://kafka:9092 carwatch worker
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY streams ./streams
# rocksdict: the production table store (CARWATCH_STORE=rocksdb:// uses the rocksdict driver)
RUN pip install ".[rocksdict]" \
    && useradd --system --uid 10001 --home-dir /var/lib/carwatch --create-home carwatch

USER carwatch
WORKDIR /var/lib/carwatch
ENV CARWATCH_DATA_DIR=/var/lib/carwatch/data
# 9464: Prometheus metrics (bind with CARWATCH_METRICS_HOST=0.0.0.0 inside a container)
EXPOSE 9464
ENTRYPOINT ["carwatch"]
CMD ["worker"]
