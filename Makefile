# The two commands of README.md. Each creates .venv when missing (or when pyproject.toml changed).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo retrieval-demo sweep-demo test lint gpu-check

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(STAMP)
	@mkdir -p runs/demo && date +%s > runs/demo/started
	$(VENV)/bin/s4v synth --out data/synth
	$(VENV)/bin/deepspeed --num_gpus 1 --master_port $$($(PY) -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') \
		launch/train.py --ds ds_configs/cpu.json --config configs/synth_tiny.yaml
	$(VENV)/bin/deepspeed --num_gpus 1 --master_port $$($(PY) -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') \
		launch/train.py --ds ds_configs/cpu.json --config configs/synth_tiny.yaml model.kind=meanpool train.out_dir=runs/demo/meanpool
	$(PY) launch/eval.py --checkpoint runs/demo/side4video/final --views 3x2
	$(PY) launch/eval.py --checkpoint runs/demo/meanpool/final --views 3x2
	$(PY) -m s4v.train.report runs/demo/side4video runs/demo/meanpool --expect --since $$(cat runs/demo/started)

# Text-video retrieval on the synthetic captions: Side4Video vs CLIP4Clip with a frozen tower, same recipe.
retrieval-demo: $(STAMP)
	$(VENV)/bin/s4v synth --out data/synth --captions
	for kind in side4video meanpool; do \
		$(VENV)/bin/deepspeed --num_gpus 1 --master_port $$($(PY) -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') \
			launch/train.py --ds ds_configs/cpu.json --config configs/synth_retrieval_tiny.yaml \
			model.kind=$$kind train.out_dir=runs/retrieval/$$kind || exit 1; \
	done

# Eight members (4 learning rates x 2 widths) on one frozen pass, halved at 1/8, 1/4 and 1/2 of the run on a held-out
# tenth of the training set (docs/sweeps.md); lr 1e12 diverges on purpose and leaves the pass when it fails.
sweep-demo: $(STAMP)
	$(VENV)/bin/s4v synth --out data/synth
	$(PY) launch/train.py --ds ds_configs/cpu.json --config configs/synth_tiny.yaml train.out_dir=runs/sweep-demo \
		tracking.experiment=s4v-sweep-demo data.heldout_fraction=0.1 sweep.halving.eta=2 \
		'sweep.grid.optim.lr=[1.0e-4,1.0e-3,1.0e-2,1.0e+12]' 'sweep.grid.model.side_dim=[64,128]'
	$(PY) launch/eval.py --checkpoint runs/sweep-demo --views 3x2
	cat runs/sweep-demo/sweep.md runs/sweep-demo/eval_3x2/sweep.md

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q --durations=15

# On a GPU machine: tests/gpu and the GPU benchmarks, one report in outputs/gpu_check/ (docs/gpu-check.md).
# No $(STAMP): an offline GPU machine keeps its own torch; this runs .venv's python if there is one, else python3.
# `make gpu-check GPU_CHECK_ARGS=--dry-run` runs the CPU forms of every part.
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)
