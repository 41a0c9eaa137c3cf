# SkySense for QGIS: every entry point installs what is missing, then runs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

BACKEND_VENV := .venv/backend
PLUGIN_VENV  := .venv/plugin
BPY := $(BACKEND_VENV)/bin/python
PPY := $(PLUGIN_VENV)/bin/python
DATA ?= $(shell bash scripts/find_data.sh)
export SKYSENSE_DATA := $(DATA)
# Never write .aux.xml statistics next to inputs (the shared samples are read-only data).
export GDAL_PAM_ENABLED := NO
# Backend-side threads: CI has 2 cores.
export OMP_NUM_THREADS ?= 2
QGIS_ENV := QT_QPA_PLATFORM=offscreen QGIS_PREFIX_PATH=/usr XDG_RUNTIME_DIR=/tmp/runtime-$(shell id -un)

.PHONY: help setup setup-backend setup-plugin demo test test-backend test-plugin bench gpu-check eval screenshot train-default clean

help:
	@echo "make demo   - set up, then map land cover on real LoveDA imagery (styled outputs in demo_output/)"
	@echo "make test   - set up, then run every test (backend, models, QGIS plugin)"
	@echo "make bench  - throughput and memory benchmarks"
	@echo "make gpu-check - on a CUDA GPU: GPU benchmarks and the GPU-vs-CPU tests"
	@echo "make eval   - accuracy tables on the real samples"
	@echo "make screenshot - real QGIS desktop under Xvfb, screenshot in docs/"

setup: setup-backend setup-plugin

.venv/system.stamp: scripts/install_system_deps.sh
	bash scripts/install_system_deps.sh
	@mkdir -p .venv && touch $@

$(BACKEND_VENV)/stamp: requirements/backend.txt
	python3 -m venv $(BACKEND_VENV)
	$(BPY) -m pip install -q --disable-pip-version-check -r requirements/backend.txt
	touch $@

$(PLUGIN_VENV)/stamp: requirements/plugin.txt .venv/system.stamp
	/usr/bin/python3 -m venv --system-site-packages $(PLUGIN_VENV)
	$(PPY) -m pip install -q --disable-pip-version-check -r requirements/plugin.txt
	touch $@

setup-backend: $(BACKEND_VENV)/stamp
setup-plugin: $(PLUGIN_VENV)/stamp

demo: setup-backend
	$(BPY) -m backend.demo --data $(DATA) --out demo_output

test: setup
	$(MAKE) test-backend
	$(MAKE) test-plugin

test-backend: setup-backend
	$(BPY) -m pytest -q -p no:cacheprovider tests/models tests/backend

test-plugin: setup
	@mkdir -p /tmp/runtime-$(shell id -un) && chmod 700 /tmp/runtime-$(shell id -un)
	$(QGIS_ENV) SKYSENSE_BACKEND_PYTHON=$(abspath $(BPY)) $(PPY) -m pytest -q -p no:cacheprovider tests/plugin --qgis_disable_gui

bench: setup-backend
	$(BPY) -m benchmarks.run_all

gpu-check: setup-backend
	bash scripts/gpu_check.sh $(abspath $(BPY))

eval: setup-backend
	$(BPY) -m backend.evaluate --data $(DATA)

screenshot: setup
	bash scripts/screenshot.sh

train-default: setup-backend
	$(BPY) -m backend.trainers.train_defaults --data $(DATA)

clean:
	rm -rf demo_output build
