# The two commands of the README, and CI's second environment. Each target works on a fresh clone:
# it creates the virtual environment if missing, installs what is missing, then runs.
#
#   make demo         the whole pipeline, offline, on generated music (notebooks 00-04 executed)
#   make test         lint + the test suite (what CI runs first)
#   make test-colab   the suite again in .venv-colab, pinned to Colab's published package versions
#
# torch goes in first, on its own: requirements.txt leaves it unpinned (Colab ships its own CUDA build),
# so whatever torch the environment has is kept. Without one, TORCH is installed; the default is the
# version CI tests with. On a machine without a GPU, a CPU build is much smaller:
#   make test TORCH="torch --index-url https://download.pytorch.org/whl/cpu"

PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
COLAB_VENV ?= .venv-colab
COLAB_PINS := .ci/colab-pins.txt
PYTEST_ARGS ?= -q -n 2

.PHONY: demo test test-colab lint

# An environment is (re)installed when it is missing or older than the files that say what it holds.
# $(1): the environment's folder; $(2): extra pip arguments (constraints).
define install
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -c "import torch" 2>/dev/null || $(1)/bin/python -m pip install --quiet $(TORCH)
	$(1)/bin/python -m pip install --quiet -r requirements.txt $(2)
	$(1)/bin/python -m pip install --quiet --no-deps -e .
	touch $(1)/.installed
endef

$(VENV)/.installed: requirements.txt pyproject.toml
	$(call install,$(VENV),)

$(COLAB_VENV)/.installed: requirements.txt pyproject.toml $(COLAB_PINS)
	$(call install,$(COLAB_VENV),-c $(COLAB_PINS))

demo: $(VENV)/.installed
	$(VENV)/bin/python -m nbutils demo --out demo_out

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

test: $(VENV)/.installed lint
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# Colab's package set (see .ci/colab-pins.txt): nothing may be missing for nbutils' own installer,
# the demo runs, and so does the whole suite -- each `longer` test in its short form only (the
# 2,000-mutation fuzz as its 200-mutation sibling), to keep CI's two environments under 30 minutes.
test-colab: $(COLAB_VENV)/.installed
	$(COLAB_VENV)/bin/python -c "from nbutils.colab import install; m = install.missing(); assert not m, m; print('nothing missing')"
	$(COLAB_VENV)/bin/python -m pytest $(PYTEST_ARGS) -m "not longer"
