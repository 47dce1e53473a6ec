# syntax=docker/dockerfile:1
# One image for the api (`serve`), the worker (`worker`) and migrations (`migrate`).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, so code changes do not reinstall them. The core package only: no extras
# (the dev extra's embedded SQLite and Redis, and the test tools, stay out of the image).
# Tracing is the one extra an image may add, asked for at build time:
#   docker build --build-arg EXTRAS=otel -t gemini-graphql:otel .
# (OpenTelemetry's SDK and OTLP/HTTP exporter; still off until OTEL_* variables ask for it).
ARG EXTRAS=""
COPY pyproject.toml README.md ./
RUN mkdir gemini_graphql && touch gemini_graphql/__init__.py \
    && pip install ".${EXTRAS:+[$EXTRAS]}" && pip uninstall -y gemini-graphql
COPY gemini_graphql ./gemini_graphql
RUN pip install --no-deps .

FROM python:3.11-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    APP_ENV=production \
    HOST=0.0.0.0 \
    PORT=8000
RUN groupadd --system app && useradd --system --gid app --home-dir /app --no-create-home app
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY migrations ./migrations
USER app
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '8000')}/health\", timeout=4)"]
ENTRYPOINT ["gemini-graphql"]
CMD ["serve"]
