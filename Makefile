# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DEMO    = demo

.PHONY: demo test test-pg lint bench clean

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  rm -rf $(VENV); \
	  echo "python3 -m venv failed: Debian needs the python3-venv package."; \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); \
	  else echo "Run: sudo apt-get install python3-venv"; exit 1; fi; }
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@ $(VENV)/.installed

# Render the next edition of the bundled sample blog to demo/preview.html and demo/preview.txt.
demo: $(VENV)/.installed
	@test -f $(DEMO)/digest.toml || { mkdir -p $(DEMO) && $(BIN)/digest init --config $(DEMO)/digest.toml \
	  --name "codelooru weekly" --from "codelooru weekly <digest@codelooru.example>" \
	  --feed ../examples/codelooru.atom --first-edition-days 0 >/dev/null; }
	$(BIN)/digest --config $(DEMO)/digest.toml send --preview --out $(DEMO)

# One pytest-xdist worker per core; worksteal evens out the tests that take seconds (subprocesses,
# leases, schedules). Tests are independent: own tmp_path, own free port, own PostgreSQL database.
# `make test PYTEST_ARGS="-m 'not slow'"` leaves the slow ones out.
PYTEST_ARGS ?=
PYTEST = $(BIN)/python -m pytest -n auto --dist worksteal $(PYTEST_ARGS)

test: $(VENV)/.dev-installed
	$(PYTEST)

# The same suite on PostgreSQL: a throw-away server (needs Debian's postgresql package).
test-pg: $(VENV)/.dev-installed
	.ci/with-postgres $(PYTEST)

# ruff (style and bug-finding rules), mypy (strict on content/, mail/, delivery/, store/) and
# import-linter (the pipeline's packages import downward only): settings in pyproject.toml.
# All three run, so one CI log shows every finding; the target fails if any of them did.
lint: $(VENV)/.dev-installed
	@status=0; \
	$(BIN)/ruff check src tests bench || status=1; \
	$(BIN)/mypy || status=1; \
	$(BIN)/lint-imports || status=1; \
	exit $$status

bench: $(VENV)/.dev-installed
	$(BIN)/python bench/send.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
