# The README's two commands: `make demo` and `make test`. Each creates .venv when it
# is missing and installs everything it needs; nothing is expected to be installed by hand.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.camkit-installed

# torch/torchvision are pinned: these versions install from the machine's local store.
TORCH  := torch==2.14.1 torchvision==0.29.1
# Packages that carry real sample images; installed without their (heavy) dependencies
# and never imported, only read from disk.
SAMPLES := foolbox==3.3.4 imgaug==0.4.0
CHROMEDRIVER := /usr/bin/chromedriver
# Debian's Fashion-MNIST (real labelled images for the embedding and mosaic data sets).
FASHION_MNIST := /usr/share/datasets/fashion-mnist
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: demo test bench bench-bias lint clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[models,test,faiss,ray,hub,serve]"
	$(PIP) install -q --no-deps $(SAMPLES)
	touch $(STAMP)

test: $(STAMP) $(CHROMEDRIVER) $(FASHION_MNIST)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy
	$(PY) -m pytest

# The report's browser test drives Debian's Chromium through its chromedriver (the
# chromium-driver package pulls in chromium); nothing is downloaded at test time.
$(CHROMEDRIVER):
	$(SUDO) apt-get update
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver

$(FASHION_MNIST):
	$(SUDO) apt-get update
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y dataset-fashion-mnist

demo: $(STAMP)
	$(VENV)/bin/camkit demo

$(VENV)/.bench-installed: $(STAMP)
	$(PIP) install -q -e ".[bench]" $(TORCH)
	touch $@

bench: $(VENV)/.bench-installed
	$(PY) benchmarks/run.py

# M-CAM's bias benchmark (8 min on 2 idle cores; --quick for a smoke test);
# rewrites its section of docs/evaluation.md.
bench-bias: $(VENV)/.bench-installed $(FASHION_MNIST)
	$(PY) benchmarks/bench_bias.py --docs docs/evaluation.md

clean:
	rm -rf $(VENV) runs .pytest_cache
