# The two commands of README.md. Each creates .venv when missing (or when pyproject.toml changed).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(VENV)/bin/s4v info --preset tiny b16-light b16 l14-light l14
	$(PY) -c "import torch; from s4v.models import create_model; m = create_model('tiny', 8); \
	loss = m(torch.randn(2, 8, 3, 64, 64)).logsumexp(-1).mean(); loss.backward(); print('forward/backward ok', float(loss))"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q --durations=15
