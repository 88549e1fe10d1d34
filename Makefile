# Two commands on a fresh machine: `make demo` and `make test`.  Each one
# creates .venv and installs what it needs by itself (only python3 >= 3.10
# and make are assumed).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test lint soak bench clean

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	touch $@

# An editable install compiles nothing, and with PYTHONDONTWRITEBYTECODE set
# every spawned worker would compile polyproc from source at start-up:
# compile it once here (and again before benchmarks, for edited files).
$(VENV)/.installed-base: $(VENV)/.created pyproject.toml
	$(PY) -m pip install -q -e .
	$(PY) -m compileall -q polyproc benchmarks > /dev/null
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-base
	$(PY) -m pip install -q -e '.[test]'
	touch $@

$(VENV)/.installed-lint: $(VENV)/.installed-base
	$(PY) -m pip install -q -e '.[lint]'
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed-base
	$(PY) -m pip install -q -e '.[bench]'
	touch $@

demo: $(VENV)/.installed-base
	$(PY) -m polyproc demo

test: $(VENV)/.installed-test
	$(PY) -m pytest $(PYTEST_ARGS)

# The type checker and the linter, configured in pyproject.toml ([tool.mypy],
# [tool.ruff]); the versions are pinned in the lint extra.
lint: $(VENV)/.installed-lint
	$(PY) -m mypy
	$(PY) -m ruff check polyproc tests

# The soak of tests/test_soak.py (part of `make test`, 20 s), longer and on
# every start method: SOAK_SECONDS in all, shared by the start methods.
SOAK_SECONDS ?= 600
soak: $(VENV)/.installed-test
	$(PY) tests/_soak.py --seconds $(SOAK_SECONDS)

bench: $(VENV)/.installed-bench
	$(PY) -m compileall -q polyproc benchmarks > /dev/null
	$(PY) -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
