# anxiao service image. Build: docker build -t anxiao .
# Stage 1: the dashboard's npm dependencies (Leaflet), vendored as scripts/web.sh
# does it, without the browser (a server needs none).
FROM node:20-bookworm-slim AS web
WORKDIR /src
COPY package.json package-lock.json ./
COPY scripts/web.sh ./scripts/web.sh
COPY api/static ./api/static
RUN ANXIAO_WEB_SKIP_BROWSER=1 bash scripts/web.sh

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY anxiao ./anxiao
COPY core ./core
COPY ingest ./ingest
COPY geofence ./geofence
COPY alerts ./alerts
COPY api ./api
COPY --from=web /src/api/static/vendor ./api/static/vendor
COPY simulators ./simulators
# The compiled rule and geofence kernels (Numba) go into a cache at build time, so
# the service starts without compiling; the cache is readable by the service user.
ENV NUMBA_CACHE_DIR=/app/.numba-cache
RUN pip install . && useradd --system --uid 10001 anxiao \
 && python -c 'from alerts.warm import warm_up; warm_up()' \
 && chmod -R a+rX /app/.numba-cache
USER anxiao
EXPOSE 8420
ENTRYPOINT ["anxiao"]
CMD ["serve", "--clock", "live"]
