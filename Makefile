# Esper: one Makefile for development, tests, the demo, the proof and the benchmarks.
# Everything it needs is installed by these targets: uv from PyPI, Python packages through uv,
# Debian packages and the Pulsar broker (from Maven Central) by infra/install-deps.sh.

SHELL := /bin/bash
PY := .venv/bin/python
# Use the machine's Python; uv must never try to download an interpreter.
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)

.PHONY: help dev uv infra-deps infra-up infra-down infra-status test check lint types imports \
        unit integration deploy-check demo demo-lm proof headroom evolve bench bench-oona bench-kasmina bench-control \
        bench-assets bench-platform bench-ddp bench-nissa demo-compact frontier bench-removal proof-scaffold simic-train simic-eval clean

help:
	@echo "make dev            create .venv with every package (uv workspace)"
	@echo "make test           everything CI runs: lint, types, import boundaries, unit + integration tests"
	@echo "make demo           standalone Esper growing a weak model on digits and two-spirals"
	@echo "make demo-lm        a character-level GPT alone vs grown under Tamiyo-Prime (bits per character)"
	@echo "make demo-compact   the demo on spirals and digits, grown by Esper then compacted (Elesh, Emrakul, Tolaria)"
	@echo "make frontier       capability per parameter: static widths, grow-only, grow+prune, Torch-Pruning (5 seeds)"
	@echo "make bench-removal  Elesh scoring, Emrakul planning, lysis time, pruned step speed-up vs MAC cut"
	@echo "make proof          multi-seed comparison: host only / Esper / random policy / static model"
	@echo "make headroom       a task with no headroom: the heuristic declines to grow (host vs Esper)"
	@echo "make proof-scaffold scaffolds through a learning-rate crisis, with vs without, 5 seeds (rollbacks, retained gain)"
	@echo "make evolve         Karn's innovation loop: generations of mutated blueprints, trained and judged"
	@echo "make infra-up|down  local Pulsar, PostgreSQL, S3 (SeaweedFS) and Prometheus on 127.0.0.1"
	@echo "make bench-oona     bus throughput vs the raw pulsar client"
	@echo "make bench-kasmina  seed overheads and controller latency"
	@echo "make bench-control  Narset/Tamiyo decision latency and telemetry fan-in"
	@echo "make bench-assets   kernel cache, cold loads, Urza queries vs MLflow, compile times"
	@echo "make bench-platform the distributed platform: boundary round trip, epoch time vs standalone, submit-to-validated"
	@echo "make bench-ddp      Tolaria under DDP (2 ranks, gloo): dormant-seed step overhead, boundary time"
	@echo "make bench-nissa    observability costs: one Prometheus scrape of Nissa holding 10k seeds"
	@echo "make simic-train    Simic: imitate the heuristic from recorded episodes, then MaskablePPO (runs/simic/)"
	@echo "make simic-eval     learned vs heuristic vs random germination on held-out seeds (runs/simic-eval/)"

uv:
	@command -v uv >/dev/null 2>&1 || test -x $(HOME)/.local/bin/uv || python3 -m pip install --quiet --user uv

dev: uv
	@$(UV) sync --all-packages --locked --quiet
	@echo "dev environment ready: .venv ($$($(PY) --version))"

infra-deps: dev
	@bash infra/install-deps.sh

infra-up: infra-deps
	@bash infra/infra.sh up

infra-down:
	@bash infra/infra.sh down

infra-status:
	@bash infra/infra.sh status

lint: dev
	$(PY) -m ruff check .

types: dev
	$(PY) -m mypy contracts libs services recipes

imports: dev
	.venv/bin/lint-imports

# docker-compose.yml against the Compose spec; the Helm chart linted, rendered and schema-checked.
deploy-check: dev
	@bash deploy/check.sh

unit: dev
	$(PY) -m pytest -m "not integration and not slow"

integration: dev
	$(PY) -m pytest -m "integration or slow"

# The infrastructure is always torn down, whether the checks pass or not.
test: infra-deps
	@status=0; \
	$(MAKE) --no-print-directory infra-up || status=$$?; \
	if [ $$status -eq 0 ]; then $(MAKE) --no-print-directory check || status=$$?; fi; \
	$(MAKE) --no-print-directory infra-down; \
	exit $$status

check: lint types imports deploy-check
	$(PY) -m pytest

demo: dev
	$(PY) -m esper_recipes.demo

demo-lm: dev
	$(PY) -m esper_recipes.lm

# Growth then removal (eager kernels: a fossilized seed's own layers are then prunable, see decision 0013).
demo-compact: dev
	$(PY) -m esper_recipes.demo --kernels eager --compact 20

frontier: dev
	$(PY) -m esper_recipes.frontier

bench-removal: dev
	$(PY) bench/bench_removal.py

proof: dev
	$(PY) -m esper_recipes.proof

headroom: dev
	$(PY) -m esper_recipes.headroom

evolve: dev
	$(PY) -m esper_recipes.evolve

proof-scaffold: dev
	$(PY) -m esper_recipes.proof_scaffold

simic-train: dev
	nice -n 15 $(PY) -m esper_simic.train --out runs/simic

simic-eval: dev
	@test -f runs/simic/policy.json || $(MAKE) simic-train
	nice -n 15 $(PY) -m esper_simic.evaluate --policy runs/simic/policy.json --out runs/simic-eval

bench: bench-oona bench-kasmina bench-control bench-assets bench-platform bench-ddp bench-nissa

bench-oona: infra-deps
	$(PY) bench/bench_oona.py

bench-kasmina: dev
	$(PY) bench/bench_kasmina.py

bench-control: dev
	$(PY) bench/bench_control.py

bench-assets: dev
	$(PY) bench/bench_assets.py

# The trainer on real services as processes over Pulsar, against the same run standalone.
bench-platform: infra-up
	$(PY) bench/bench_platform.py

bench-ddp: dev
	$(PY) bench/bench_ddp.py
bench-nissa: dev
	$(PY) bench/bench_nissa.py

clean: infra-down
	rm -rf .venv .cache runs .pytest_cache .mypy_cache .ruff_cache
