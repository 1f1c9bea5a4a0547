# taskservice: docker build -t taskservice . && docker run -p 8000:8000 -v taskservice-data:/data taskservice
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY app.py wsgi.py gunicorn.conf.py ./
COPY taskservice ./taskservice

# Run as an unprivileged user; the database lives on a volume it owns.
RUN useradd --system --uid 10001 --home-dir /app taskservice \
    && mkdir /data && chown taskservice:taskservice /data
USER taskservice
VOLUME ["/data"]

ENV HOST=0.0.0.0 \
    PORT=8000 \
    DATABASE_URL=sqlite:////data/taskservice.sqlite3
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ['PORT'], timeout=2)"]

CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
