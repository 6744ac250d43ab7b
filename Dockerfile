# training-control: the API (default command) and, with another command, the worker or a
# one-shot migration. See docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /srv

# Dependencies in their own layer, before any application code: this layer is rebuilt only
# when pyproject.toml changes, not on every code change.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The application. Installed in place (editable, no dependencies) so the `training-control`
# command exists and app.migrations finds alembic/ and alembic.ini next to app/.
COPY README.md alembic.ini ./
COPY alembic ./alembic
COPY app ./app
RUN pip install --no-deps -e .

# Run as an unprivileged user. ./data is where the SQLite default would live, and the gateway's
# write-ahead spool (INFERENCE__SPOOL_DIR; made here so a volume mounted on it belongs to app).
RUN useradd --create-home --uid 10001 --user-group app \
    && mkdir -p /srv/data/gateway-spool \
    && chown -R app:app /srv/data
USER app

EXPOSE 8000
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000"]
