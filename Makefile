# Set-up and everyday commands. `make demo` is the main job, `make test` the test suite.
# Everything runs in the project's own virtual environment (.venv, made on first use), so nothing
# installed by hand elsewhere on the machine can stand in for a missing dependency.
SYSTEM_PY ?= python3
VENV ?= .venv
PY = $(VENV)/bin/python
PIP = $(PY) -m pip install --quiet --disable-pip-version-check
# torch is installed first: the CPU build 2.13.0 where no NVIDIA GPU is visible (it avoids
# gigabytes of CUDA wheels), the normal (CUDA) build from PyPI where `nvidia-smi` works.
TORCH_CPU = torch==2.13.0

.PHONY: install test demo schema bench clean

$(PY):
	$(SYSTEM_PY) -m venv $(VENV)

install: $(PY)
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "torch $$($(PY) -c 'import torch; print(torch.__version__)') already in $(VENV)"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  $(PIP) torch; \
	else \
	  $(PIP) $(TORCH_CPU); \
	fi
	$(PIP) -e ".[test]"

test: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

demo: install
	$(VENV)/bin/simformer pipeline --workdir runs/syn

schema: install
	$(VENV)/bin/simformer schema --out manifests

bench: install
	$(PY) benchmarks/split_ingest.py --out BENCHMARKS.md
	$(PY) benchmarks/eval_speed.py --out BENCHMARKS.md

clean:
	rm -rf runs .pytest_cache
