# One image for the API and the worker:
#   docker run IMAGE                      -> trainserve api (port 8000)
#   docker run IMAGE trainserve worker    -> a Celery worker
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY worker ./worker
RUN pip install --no-cache-dir --prefix=/install '.[postgres,s3]'

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    TRAINSERVE_HOME=/data \
    KERAS_HOME=/data/keras
COPY --from=build /install /usr/local
RUN useradd --create-home --uid 10001 trainserve && mkdir -p /data && chown trainserve /data
USER trainserve
WORKDIR /home/trainserve
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["trainserve", "api", "--host", "0.0.0.0", "--port", "8000"]
