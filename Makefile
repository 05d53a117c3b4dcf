# cnnctl: `make install` once, then `make test`; see README.md.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SMOKE_DIR ?= $(or $(TMPDIR),/tmp)/cnnctl-smoke
# GPU=1 swaps the CPU wheel for TensorFlow's CUDA build (Linux x86-64 with an NVIDIA driver).
GPU    ?= 0

.PHONY: install test test-fast lint smoke bench clean

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,export,postgres,mlflow]"
ifeq ($(GPU),1)
	$(BIN)/python -m pip uninstall --quiet --yes tensorflow-cpu
	$(BIN)/python -m pip install --quiet "tensorflow[and-cuda]>=2.21,<2.22"
endif
	@$(BIN)/cnnctl --version

test:
	$(BIN)/pytest -q

# Skips the tests marked slow (real datasets, cnnctl in subprocesses); `make test` runs them all.
test-fast:
	$(BIN)/pytest -q -m "not slow"

lint:
	$(BIN)/ruff check cnnctl tests

# Every config in configs/, a few steps on synthetic data each (offline, seconds per config).
smoke:
	@rm -rf $(SMOKE_DIR)
	@set -e; for config in configs/*.yaml; do \
		start=$$(date +%s); \
		$(BIN)/cnnctl train $$config --smoke --quiet --runs-dir $(SMOKE_DIR) > $(SMOKE_DIR).log 2>&1 \
			|| { cat $(SMOKE_DIR).log; echo "smoke FAILED: $$config"; exit 1; }; \
		echo "smoke ok: $$config ($$(( $$(date +%s) - start )) s)"; \
	done
	@start=$$(date +%s); \
	$(BIN)/cnnctl tune configs/mnist_tune.yaml --smoke --runs-dir $(SMOKE_DIR) > $(SMOKE_DIR).log 2>&1 \
		|| { cat $(SMOKE_DIR).log; echo "smoke FAILED: cnnctl tune configs/mnist_tune.yaml --smoke"; exit 1; }; \
	echo "smoke ok: cnnctl tune configs/mnist_tune.yaml --smoke ($$(( $$(date +%s) - start )) s)"

# The tutorial comparison (bench/run.py), then memory and speed on 100,000 generated images (bench/images.py),
# then cifar10_fast's training speed against PyTorch (bench/torch_speed.py; PyTorch in its own bench/.venv-torch).
bench:
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(BIN)/python bench/images.py $(BENCH_IMAGES_ARGS)
	$(BIN)/python bench/torch_speed.py $(BENCH_TORCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info
