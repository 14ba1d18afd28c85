# contextkit: `make run` (quickstart server) and `make test` are the two commands you need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
CK     := $(VENV)/bin/contextkit
PORT   ?= 8000
QS     := examples/quickstart
STAMP  := $(VENV)/.installed

.PHONY: install run test test-slow test-fast lint format bench clean quickstart-data chromium servers

install: $(STAMP)

# CPU torch first: pip takes the local CPU wheel; anything else would pull a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[test,embeddings,llm]"
	touch $(STAMP)

# The data ends at the hour it is generated; after a day it is regenerated (and the quickstart's
# stores reset) so the 1h..30d windows are not empty.
quickstart-data: install
	if [ -n "$$(find $(QS)/data/orders.parquet -mmin +1440 2>/dev/null)" ]; then \
		rm -rf $(QS)/data $(QS)/.contextkit; fi
	test -f $(QS)/data/orders.parquet || $(PY) $(QS)/generate_data.py --out $(QS)/data

# Bare machine -> served features: install, generate data, apply, materialize the feature views,
# serve; the server encodes the embedding views meanwhile (searches answer 503 view_warming).
run: quickstart-data
	$(PY) $(QS)/setup.py --features-only
	$(CK) serve --repo $(QS) --workspace prod --port $(PORT) --no-auth --materialize-embeddings

# `make test`: every test but the slow ones (a two-node Ray cluster, several serving nodes on
# PostgreSQL/Redis/S3, a real browser): about 10 minutes on 2 quiet cores. CI (.ci/run) runs
# both, so the slow tests gate every change too.
test: install chromium servers
	$(PY) -m pytest -q -n 2 -m "not slow" --durations=10

test-slow: install chromium servers
	$(PY) -m pytest -q -n 2 -m slow --durations=10

# The web UI test drives Debian's Chromium through Playwright (never `playwright install`).
# Installed where apt-get can (as root); a no-op when it is there, and never fails the build.
chromium:
	@test -x /usr/bin/chromium || ! command -v apt-get >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] \
		|| (apt-get install -y -qq chromium >/dev/null 2>&1 \
		    || (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1) \
		|| echo "note: could not install chromium; the browser test will be skipped"

# The backend tests start real redis-server and PostgreSQL 15 (Debian's redis-server and
# postgresql; tests/backends.py; openssl makes the TLS Redis's throwaway CA, and redis-server's
# redis-tools brings redis-cli for the Redis Cluster). Installed like chromium: where apt-get
# can, as root, never failing the build; but under CI=true they must be there (the backend
# tests fail, not skip).
SERVER_PACKAGES := redis-server postgresql openssl
servers:
	@missing=""; command -v redis-server >/dev/null 2>&1 || missing="redis-server"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	test -x /usr/lib/postgresql/15/bin/initdb || command -v initdb >/dev/null 2>&1 \
		|| missing="$$missing postgresql"; \
	if [ -n "$$missing" ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null 2>&1 \
		 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		     apt-get install -y -qq $$missing) >/dev/null 2>&1) \
		|| echo "note: could not install$$missing"; fi; \
	command -v redis-server >/dev/null 2>&1 && { test -x /usr/lib/postgresql/15/bin/initdb \
		|| command -v initdb >/dev/null 2>&1; } \
		|| { echo "note: redis-server or postgresql missing: the backend tests will be skipped"; \
		     [ "$$CI" != true ] || { echo "CI=true: $(SERVER_PACKAGES) are required"; exit 1; }; }

# The inner loop: no system packages installed first (tests needing a missing server skip).
test-fast: install
	$(PY) -m pytest -q -n 2 -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) bench/online.py
	$(PY) bench/auth.py
	$(PY) bench/materialize.py
	$(PY) bench/cli_startup.py
	$(PY) bench/monitoring.py
	$(PY) bench/embed.py
	$(PY) bench/search.py
	$(PY) bench/context.py
	$(PY) bench/ingest.py
	$(PY) bench/offline.py
	$(PY) bench/dataset_render.py

clean:
	rm -rf $(QS)/data $(QS)/.contextkit .pytest_cache test-artifacts
