# One image for every Loopline service; the compose file picks the module to run.
FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY shared/ shared/
COPY services/ services/
COPY examples/ examples/
ENV PYTHONUNBUFFERED=1 LOOPLINE_SPEC_PATH=/app/examples/fraud/pipeline.yaml
RUN mkdir -p /data && chown nobody /data
USER nobody
