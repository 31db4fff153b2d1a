# mnist-service images. Targets:
#   serve   (default, last) slim serving image: a venv with .[serve] only (no scikit-learn),
#           non-root, the committed model in /models (a mount over /models replaces it)
#   trainer .[train] for `mnist-train`; writes versions into /app/models (mount ./models there)
# Build: docker compose build   or   docker build --target serve -t mnist-service .

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# One unprivileged account for both targets; uid fixed so mounts can be prepared for it.
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin mnist

FROM base AS serve-venv
WORKDIR /src
RUN python -m venv /opt/venv
# Dependencies first, in their own layer, so editing the code does not reinstall onnxruntime.
COPY pyproject.toml constraints.txt ./
RUN mkdir service training \
    && touch service/__init__.py training/__init__.py \
    && pip install --no-cache-dir --constraint constraints.txt './[serve]' \
    && pip uninstall --yes mnist-service
COPY service/ service/
RUN pip install --no-cache-dir --no-deps . \
    && ! python -c 'import sklearn' 2>/dev/null

FROM base AS trainer-venv
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml constraints.txt ./
RUN mkdir service training \
    && touch service/__init__.py training/__init__.py \
    && pip install --no-cache-dir --constraint constraints.txt './[train]' \
    && pip uninstall --yes mnist-service
COPY service/ service/
COPY training/ training/
RUN pip install --no-cache-dir --no-deps .

FROM base AS trainer
COPY --from=trainer-venv /opt/venv /opt/venv
WORKDIR /app
# The folder is replaced by the ./models mount; created here so a run without one still works.
RUN mkdir -p /app/models && chown 10001:10001 /app/models
ENV MNIST_DATA_DIR=/data
USER 10001:10001
ENTRYPOINT ["mnist-train"]
CMD ["--help"]

FROM base AS serve
COPY --from=serve-venv /opt/venv /opt/venv
COPY models/ /models/
COPY service/gunicorn.conf.py /app/gunicorn.conf.py
# the prediction store's folder: a volume mounted here starts owned by the service's user
RUN mkdir /store && chown 10001:10001 /store
WORKDIR /app
ENV MODEL_DIR=/models
USER 10001:10001
EXPOSE 8000
# python's urllib, so the image needs no curl; urlopen raises on any non-2xx answer.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]
CMD ["gunicorn", "--config", "/app/gunicorn.conf.py", "--bind", "0.0.0.0:8000", "service.app:create_app()"]
