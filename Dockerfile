# anxiao service image. Build: docker build -t anxiao .
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
COPY simulators ./simulators
RUN pip install . && useradd --system --uid 10001 anxiao
USER anxiao
EXPOSE 8420
ENTRYPOINT ["anxiao"]
CMD ["serve", "--clock", "live"]
