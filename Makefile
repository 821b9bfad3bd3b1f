# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LINTED := services tests $(wildcard benchmarks)

.PHONY: install tools demo test lint typecheck bench clean stack-up stack-down

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,local]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/concord demo

test: $(STAMP) tools lint typecheck
	$(BIN)/python -m pytest

# What the tests need beyond Python: promtool (Debian's `prometheus` package) checks the alert
# rules and the dashboards' PromQL. Root installs it; anyone else is told how, in one line.
tools:
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing promtool (Debian package prometheus) for the alert-rule tests"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else \
	    echo "make test needs promtool: run 'sudo apt-get install prometheus' (Debian, Ubuntu) or put promtool from prometheus.io on PATH" >&2; \
	    exit 1; \
	  fi; }

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

typecheck: $(STAMP)
	$(BIN)/mypy services/concord

# Every part, then issue 17's table: the realistic mix at 1,000 events/s for 5 minutes, the
# sustained rate against a four-hop pass-through, the conflicts state at 100k patients, and a
# flame graph of each stage (about 30 minutes on 2 cores). BENCH_ARGS adds or overrides.
bench: $(STAMP)
	$(BIN)/python benchmarks/pipeline.py --rate 1000 --seconds 300 --drain-timeout 600 \
		--max-rate --state-patients 100000 --flame docs/img/flame $(BENCH_ARGS)

stack-up: $(STAMP)
	$(BIN)/concord stack up

stack-down: $(STAMP)
	$(BIN)/concord stack down

clean:
	rm -rf $(VENV) .concord .pytest_cache .mypy_cache .ruff_cache
