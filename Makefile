# reenactfaces — every target installs what it needs first (make install is idempotent).
SHELL := /bin/bash
PY_BOOT ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
DATA    ?= data
# Offline targets never wait on a model hub.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PYTEST_ARGS ?=
CURATE_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install browser test lint demo corpus serve s3serve curate shards verify-optout train reenact eval bench gpu-check estimate report clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml .ci/constraints.txt
	@test -x $(PY) || $(PY_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c .ci/constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv with every dependency (seconds when already done)

# Headless Chromium (Debian package) renders the HTML report in one test.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq chromium >/dev/null; }

test: install browser ## run the test suite (fast + slow end-to-end tests)
	$(OFFLINE) $(PY) -m pytest -q $(PYTEST_ARGS)

lint: install ## ruff
	$(PY) -m ruff check pipeline model tests benchmarks

corpus: install ## generate the synthetic face-video corpus under $(DATA)/corpus
	$(PY) -m pipeline.synth.corpus --out $(DATA)/corpus

serve: install ## serve the corpus on loopback and write manifests/sources.csv
	$(PY) -m pipeline.synth.server --corpus $(DATA)/corpus --write-sources manifests/sources.csv

curate: install ## links in manifests/sources.csv -> $(DATA)/curate/clips.parquet (Ray; RAY_ADDRESS; CURATE_ARGS='--set K=V')
	$(PY) -m pipeline.curate --data $(DATA) --sources manifests/sources.csv --dag dags/curate.yaml $(CURATE_ARGS)

shards: install ## accepted clips -> WebDataset shards with latents, CLIP, landmarks; applies opt-outs
	$(PY) -m pipeline.shards --data $(DATA) --dag dags/shards.yaml

verify-optout: install ## fail if any clip of an opted-out video remains in a shard
	$(PY) -m pipeline.shards.optout verify --data $(DATA)

train: install ## torchrun the sDiT on the shards (CPU here, all GPUs elsewhere)
	$(PY) -m model.launch --data $(DATA) --config dags/train.yaml

reenact: install ## SOURCE=img DRIVING=video [CKPT=...] [ANCHOR=generated|source] [RETARGET=relative|none] anchored diffusion
	$(PY) -m model.reenact --data $(DATA) --source "$(SOURCE)" --driving "$(DRIVING)" $(if $(CKPT),--ckpt "$(CKPT)") \
	  $(if $(ANCHOR),--anchor "$(ANCHOR)") $(if $(RETARGET),--retarget "$(RETARGET)")

eval: install ## the Table 1 grid (FID / LMSE / CSIM) on held-out shards [ANCHOR=generated|source] [RETARGET=relative|none]
	$(PY) -m model.evaluate --data $(DATA) $(if $(ANCHOR),anchor=$(ANCHOR)) $(if $(RETARGET),retarget=$(RETARGET))

bench: install ## benchmarks: ratios against plain references, JSON under $(DATA)/bench
	$(OFFLINE) $(PY) -m benchmarks.run --data $(DATA)

gpu-check: install ## trainer + encoders at GPU speed (MFU, memory, compile, bf16 vs fp32, images/s); tiny on a CPU
	$(OFFLINE) $(PY) -m benchmarks.gpu_check --out $(DATA)/bench/gpu_check.json
N ?= 1000000
estimate: install ## N=1000000 [ESTIMATE_ARGS=--cores 512 --gpus 16]: cores, GPU-hours, bytes, wall time from make bench's figures
	$(OFFLINE) $(PY) -m benchmarks.estimate --clips $(N) --data $(DATA) $(ESTIMATE_ARGS)

s3serve: install ## a loopback S3 server (moto) for DATA=s3://demo/...: prints the variables to export
	$(PY) -m pipeline.synth.s3server --port 9000 --bucket demo

report: install ## dataset statistics figures + HTML under $(DATA)/report
	$(PY) -m pipeline.report --data $(DATA)

demo: install ## the whole system end to end, offline, on a generated corpus
	$(OFFLINE) $(PY) -m pipeline.demo --data $(DATA)/demo

clean: ## remove generated data (not .venv)
	rm -rf $(DATA) .pytest_cache
