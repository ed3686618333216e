# One image for every CallMissed process: the web server (API, dashboard, legacy WebSocket:
# WEB_CONCURRENCY Daphne processes behind port 8000, callmissed/serve.py), the Celery
# worker and beat, and the LiveKit agent worker. docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# libgomp1: the offline speech models (onnxruntime) need OpenMP at run time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY . .
RUN DJANGO_SECRET_KEY=build-only python manage.py collectstatic --noinput -v0

RUN useradd --create-home --uid 1000 callmissed
USER callmissed

EXPOSE 8000
CMD ["python", "-m", "callmissed.serve", "--host", "0.0.0.0", "--port", "8000"]
