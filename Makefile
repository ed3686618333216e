# The two commands a newcomer needs: `make run` and `make test`. Everything installs into .venv.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test install install-dev lint typecheck pytest worker celery browser vendor-js screenshots

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

## Run the platform on embedded defaults: SQLite, in-memory channels, eager Celery, offline speech;
## one Daphne process (WEB_CONCURRENCY unset in development).
## Prints a dashboard login and an API key of one organization ("Demo"), and the commands to try them.
run: install
	$(PY) manage.py migrate --noinput -v0
	$(PY) manage.py collectstatic --noinput -v0
	@PASSWORD=$$($(PY) manage.py create_login "Demo" --username demo | tail -1) && \
	KEY=$$($(PY) manage.py create_api_key "Demo" --name "make run" | tail -1) && \
	echo "" && \
	echo "Dashboard: http://$(HOST):$(PORT)/login/  username: demo  password: $$PASSWORD" && \
	echo "Demo API key (shown once): $$KEY" && \
	echo "" && \
	echo "Create a session:" && \
	echo "  curl -X POST http://$(HOST):$(PORT)/v1/voice/sessions \\" && \
	echo "    -H \"Authorization: Bearer $$KEY\" -H \"Content-Type: application/json\" \\" && \
	echo "    -d '{\"system_prompt\": \"You are a helpful assistant.\", \"voice\": \"shubh\", \"language\": \"en-IN\"}'" && \
	echo "Talk to the agent from this terminal (offline voices, no microphone needed):" && \
	echo "  $(PY) -m clients.voice_ws_client --url ws://$(HOST):$(PORT)/ws/voice-agent --key $$KEY --say \"What time do you open tomorrow\" --out agent.wav" && \
	echo "API docs: http://$(HOST):$(PORT)/v1/docs" && \
	echo ""
	$(PY) -m callmissed.serve --host $(HOST) --port $(PORT)

## Lint, type-check and run every test (PostgreSQL/Redis when DATABASE_URL/REDIS_URL are set).
test: install-dev browser lint typecheck pytest

browser:
	@test -x /usr/bin/chromium || (command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)) || \
	  (echo "Chromium is required for the browser tests: install Debian's 'chromium' package" >&2; exit 1)

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck:
	$(VENV)/bin/mypy .

pytest:
	$(VENV)/bin/pytest $(PYTEST_ARGS)

## The LiveKit agent worker (needs a livekit-server and REDIS_URL; see docs/livekit.md).
worker: install
	$(PY) -m agent_worker start

## Celery worker with the beat scheduler (the reaper) for development; needs REDIS_URL.
celery: install
	$(VENV)/bin/celery -A callmissed worker --beat --loglevel=INFO

## Re-fetch the dashboard's pinned browser libraries from npm (checked against their integrity hashes).
vendor-js:
	dashboard/vendor-js.sh

## Screenshots of each dashboard page into docs/screenshots/, taken by the browser test that walks them.
screenshots: install-dev browser
	CALLMISSED_SCREENSHOTS=docs/screenshots $(VENV)/bin/pytest -q -p no:cacheprovider dashboard/tests/test_dashboard_journey.py
