# Entry points: `make demo`, `make test` (both create .venv on first use) and `make toy-model` (trains the
# embedded default model on the panorama world and ships it in contextforcing/assets).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel on machines without a GPU; override (e.g. TORCH_SPEC=torch) to keep a CUDA build.
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= out/demo/
DEMO_SEED ?= 7

.PHONY: demo test test-slow bench clean toy-model results

$(VENV)/.base-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.base-installed
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# The extras a target needs (pyproject.toml says what each is for).
$(VENV)/.eval-installed: $(VENV)/.base-installed
	$(PY) -m pip install -q -e ".[eval]"
	touch $@

# `contextforcing serve`, the step the README gives after `make demo`.
$(VENV)/.serve-installed: $(VENV)/.base-installed
	$(PY) -m pip install -q -e ".[serve]"
	touch $@

$(VENV)/.train-installed: $(VENV)/.eval-installed
	$(PY) -m pip install -q -e ".[train,eval]"
	touch $@

# A 2-minute scripted tour of the panorama world (scripts/demo.py) streamed twice by the shipped model, with its
# trained memory and with a 3 s rolling window, same seed; both videos, a side-by-side mp4 with the ground truth,
# contact sheets, then `eval` of both against the tour: out/demo/report (revisit error against delay for both).
# Installs [eval] (the report) and [serve] (the README's next step, `contextforcing serve`). Progress bars go to
# stderr; the CPU thread count follows contextforcing.runtime.threads (DEMO_THREADS=N to set it).
DEMO_THREADS ?=
demo: $(VENV)/.eval-installed $(VENV)/.serve-installed
	$(PY) scripts/demo.py --out $(DEMO_DIR) --seed $(DEMO_SEED) $(if $(DEMO_THREADS),--threads $(DEMO_THREADS))
	$(VENV)/bin/contextforcing eval $(DEMO_DIR)slow_fast.npy $(DEMO_DIR)rolling.npy --labels "slow_fast (trained memory),rolling window 3 s" --world-annotations $(DEMO_DIR)truth/annotations.json --report $(DEMO_DIR)report

# The whole Context Forcing recipe on the panorama world (teacher -> ODE -> DMD -> Contextual DMD, each gated on
# held-out scripts), run directories under runs/toy; rerun to resume. Ships contextforcing/assets/world_student.*
# and MODEL_CARD.md.
toy-model: $(VENV)/.train-installed
	$(PY) scripts/train_toy_model.py

# docs/results.md: oracles, every memory policy, the promotion rules and the ablations x the 16 held-out panorama
# worlds, resumable (rerun to continue), then the tables, figures and frame strips. Needs `make toy-model`'s run
# directory (runs/toy).
results: $(VENV)/.train-installed
	$(PY) scripts/reproduce_results.py

# Lint and format checks first (seconds), then every test but the slow ones.
test: $(VENV)/.test-installed
	$(VENV)/bin/ruff check contextforcing tests scripts
	$(VENV)/bin/ruff format --check contextforcing tests scripts
	$(PY) -m pytest -q -m "not slow"

test-slow: $(VENV)/.test-installed
	$(PY) -m pytest -q -m slow

bench: $(VENV)/.base-installed
	$(VENV)/bin/contextforcing bench --preset tiny --random-init --seconds 320 --memory slow_fast --windows 20:40,400:420

clean:
	rm -rf $(VENV) out
