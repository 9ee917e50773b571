# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel on machines without a GPU; override (e.g. TORCH_SPEC=torch) to keep a CUDA build.
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= out/demo.mp4

.PHONY: demo test test-slow bench clean

$(VENV)/.base-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.base-installed
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: $(VENV)/.base-installed
	$(VENV)/bin/contextforcing generate --preset tiny --random-init --prompt "a red ball bouncing in a blue room" --seconds 10 --memory slow_fast --seed 0 --out $(DEMO_OUT)

test: $(VENV)/.test-installed
	$(PY) -m pytest -q -m "not slow"

test-slow: $(VENV)/.test-installed
	$(PY) -m pytest -q -m slow

bench: $(VENV)/.base-installed
	$(VENV)/bin/contextforcing bench --preset tiny --random-init --seconds 320 --memory slow_fast --windows 20:40,400:420

clean:
	rm -rf $(VENV) out
