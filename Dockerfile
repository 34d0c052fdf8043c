# One image for every mcp-worker service (worker, beat, flower, migrate, demo server).
# Build stage: wheels for the project and its dependencies. Final stage: no compilers, non-root.
FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir --upgrade pip wheel
COPY pyproject.toml README.md celeryconfig.py alembic.ini ./
COPY worker ./worker
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 MCP_DATA_DIR=/data
RUN groupadd --system mcp && useradd --system --gid mcp --home-dir /home/mcp --create-home mcp \
    && mkdir -p /data && chown mcp:mcp /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER mcp
WORKDIR /home/mcp
VOLUME ["/data"]
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s CMD mcp-worker db current || exit 1
CMD ["mcp-worker", "worker"]
