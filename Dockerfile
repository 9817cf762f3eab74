# The segstream image: the `segstream` command (train, generate, replay, worker) on
# python:3.11-slim. Used by docker-compose.yml for the trainer, the worker and the demo
# producer (which runs deploy/producer/produce.py with the same interpreter: aiokafka is a
# dependency of segstream).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what `pip install .` needs (pyproject's readme and the four packages), with every
# version pinned by constraints.txt (PIP_CONSTRAINT also pins the isolated build's setuptools).
COPY pyproject.toml README.md constraints.txt ./
COPY segstream ./segstream
COPY models ./models
COPY offline ./offline
COPY stream ./stream
RUN PIP_CONSTRAINT=/src/constraints.txt pip install . && rm -rf /src

# A non-root user. /models and /data become named volumes (they inherit this ownership);
# /var/lib/segstream is the home and working directory; faust keeps its <app_id>-data
# folder under the system temp directory (stream.app.new_app), not here.
RUN useradd --system --uid 10001 --home-dir /var/lib/segstream --create-home segstream \
    && mkdir -p /models /data \
    && chown segstream:segstream /models /data
USER segstream
WORKDIR /var/lib/segstream

# 9464: Prometheus /metrics; 6066: read API (GET /customers/{id}).
EXPOSE 9464 6066
ENTRYPOINT ["segstream"]
CMD ["--help"]
