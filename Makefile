# Entry points: `make demo`, `make test` (both create .venv on first use) and `make toy-model` (trains the
# embedded default model on the synthetic world and ships it in contextforcing/assets).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel on machines without a GPU; override (e.g. TORCH_SPEC=torch) to keep a CUDA build.
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= out/demo.mp4
DEMO_PROMPT ?= striped cool room, curtain occlusions, circle sprite
DEMO_SEED ?= 7
DEMO_DIR := $(dir $(DEMO_OUT))

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

$(VENV)/.train-installed: $(VENV)/.eval-installed
	$(PY) -m pip install -q -e ".[train,eval]"
	touch $@

# The shipped model (no model flags), 60 s with slow_fast memory on CPU; then the same (prompt, seed) world
# rendered as ground truth, whose annotations let `eval` compute the world metrics (docs/evaluation.md).
demo: $(VENV)/.eval-installed
	mkdir -p $(DEMO_DIR)
	$(VENV)/bin/contextforcing generate --prompt "$(DEMO_PROMPT)" --seconds 60 --memory slow_fast --seed $(DEMO_SEED) --device cpu --out $(DEMO_OUT)
	$(VENV)/bin/contextforcing world render --prompt "$(DEMO_PROMPT)" --seed $(DEMO_SEED) --seconds 60 --out $(DEMO_DIR)demo_truth
	$(VENV)/bin/contextforcing eval $(DEMO_OUT) --labels generated --world-annotations $(DEMO_DIR)demo_truth/annotations.json --report $(DEMO_DIR)demo_report --quiet

# The whole Context Forcing recipe on the synthetic world (teacher -> ODE -> DMD -> Contextual DMD), run
# directories under runs/toy; rerun to resume. Ships contextforcing/assets/world_student.* and MODEL_CARD.md.
toy-model: $(VENV)/.train-installed
	$(PY) scripts/train_toy_model.py

# The ablation table of docs/results.md: every row x protocol x held-out world, resumable (rerun to
# continue), then the tables, figures and frame strips. Needs `make toy-model`'s run directory (runs/toy).
results: $(VENV)/.train-installed
	$(PY) scripts/reproduce_results.py

test: $(VENV)/.test-installed
	$(PY) -m pytest -q -m "not slow"

test-slow: $(VENV)/.test-installed
	$(PY) -m pytest -q -m slow

bench: $(VENV)/.base-installed
	$(VENV)/bin/contextforcing bench --preset tiny --random-init --seconds 320 --memory slow_fast --windows 20:40,400:420

clean:
	rm -rf $(VENV) out
