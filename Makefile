# Two commands: `make demo` and `make test`. Each sets up .venv itself on first use.
#   TORCH_VERSION     torch release to pin (default 2.13.0, a CPU build here)
#   TORCH_INDEX_URL   wheel index for another build, e.g. https://download.pytorch.org/whl/cu126
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
TORCH_INDEX_URL ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(TORCH_VERSION)

# PYTEST_WORKERS   pytest-xdist workers for `make test` (default: one per core; 0 runs in one process)
PYTEST_WORKERS ?= auto

.PHONY: demo test test-fast install browser clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	# torch pinned again here: the extras pull torchvision (nnunet -> timm), whose newest release asks for a newer
	# torch; without the pin pip replaced the CPU build with torch 2.14 (+cu130) on a re-install.
	$(PY) -m pip install --quiet -e ".[dev,itk,nnunet]" "torch==$(TORCH_VERSION)" && { $(PY) -c "import torchvision" 2>/dev/null || $(PY) -m pip uninstall --quiet -y torchvision; }
	$(PY) -c "import torch; assert torch.__version__.split('+')[0] == '$(TORCH_VERSION)', torch.__version__"
	touch $@

demo: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) train.py demo

# The whole suite on every core, then the 25 slowest tests. `make test-fast` leaves out the slow end-to-end
# tests (marked `slow`) for a quick check while developing.
test: $(STAMP) browser
	$(PY) -m ruff check .
	WANDB_MODE=disabled $(PY) -m pytest -n $(PYTEST_WORKERS) --durations=25 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m ruff check .
	WANDB_MODE=disabled $(PY) -m pytest -n $(PYTEST_WORKERS) -m "not slow" --durations=10 $(PYTEST_ARGS)

# The report test opens report.html in a real headless browser (Debian's chromium).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not found: install it (apt-get install chromium) for the report test" >&2; fi; }

clean:
	rm -rf runs outputs wandb lightning_logs
