# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The pinned CPU build of PyTorch; override (e.g. TORCH_SPEC='torch>=2.3') where another build is wanted.
TORCH_SPEC ?= torch==2.13.0
# The consumers the tests run our files in (tests/test_targets.py), at the versions measured in
# docs/deploy.md. Installed without their declared dependencies: sinabs pins nir<=1.0.4 and needs samna (whose
# package downloads from SynSense's own index at import), norse and spikingjelly declare torchvision/torchaudio
# (a multi-GB CUDA build of torch would follow). What they really import to read and run a NIR file:
CONSUMERS_NO_DEPS ?= norse==1.1.0 sinabs==3.1.3 spikingjelly==2.0.0 rockpool==3.1.0
CONSUMER_NEEDS ?= pbr loguru requests scipy "spyx>=1.0"
# Lava 0.10 (Loihi 2's framework) runs on Python 3.10 only: `verify --consumer lava` drives it in an environment
# of its own, $(VENV)/lava, made with the first Python 3.10 found (on PATH or under pyenv). Where there is none,
# the Lava tests skip and say why.
PYTHON310 ?= $(shell for p in python3.10 $$HOME/.pyenv/versions/3.10*/bin/python; do \
	"$$p" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null && { echo "$$p"; break; }; done)
LAVA_SPEC ?= lava-nc==0.10.0
# The suite runs in this many processes (pytest-xdist), one per core of the two-core machines CI runs on;
# TEST_WORKERS=0 runs it in this process, one test after another.
TEST_WORKERS ?= 2
# Full datasets for the tests that need them (they skip, visibly, when absent).
SHARED_DATA ?= $(abspath ../shared/data)

.PHONY: demo test docs install clean format

install: $(VENV)/.installed

# What the demo needs and nothing more: the pinned torch and whetstone's own dependencies.
$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# Everything the tests run: every extra, the consumers, Lava's own environment.
$(VENV)/.installed: $(VENV)/.core
	$(BIN)/python -m pip install --quiet -e ".[test,akida]"
	$(BIN)/python -m pip install --quiet --no-deps $(CONSUMERS_NO_DEPS)
	$(BIN)/python -m pip install --quiet $(CONSUMER_NEEDS)
	@if [ -n "$(PYTHON310)" ]; then \
		$(PYTHON310) -m venv $(VENV)/lava && $(VENV)/lava/bin/python -m pip install --quiet "$(LAVA_SPEC)"; \
	else echo "no Python 3.10 found: Lava (verify --consumer lava) will not run; its tests skip"; fi
	touch $@

demo: $(VENV)/.core
	$(BIN)/whetstone demo

test: install
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	@data="$${WHETSTONE_DATA:-}"; if [ -z "$$data" ] && [ -d "$(SHARED_DATA)" ]; then data="$(SHARED_DATA)"; fi; \
	echo "WHETSTONE_DATA=$${data:-<unset: full-dataset tests skip>}"; \
	WHETSTONE_DATA="$$data" $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal

# The documentation site, in strict mode: a broken link, page or API reference fails the build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

format: install
	$(BIN)/ruff format src tests benchmarks examples
	$(BIN)/ruff check --fix src tests benchmarks examples

clean:
	rm -rf $(VENV) runs site .pytest_cache
