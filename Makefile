# One-command set-up: `make demo` (install + demo data + materialize everything) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_STUDIES ?= 1000
DEMO_SEED ?= 0
UI_PORT ?= 3000
DEMO_SELECT ?= not group:evaluation
# Run config of the demo (split ratios, evaluation floors, training preset): pipelines/run_config/
DEMO_CONFIG ?= pipelines/run_config/demo.yaml
# Another data seed gets its own archive, storage and Dagster home (make demo DEMO_SEED=1).
DEMO_SUFFIX := $(if $(filter 0,$(DEMO_SEED)),,-seed$(DEMO_SEED))

# The synthetic demo archive has no real patient, so its pseudonym salt may be public and fixed:
# two clean runs then split the same patients (the split is keyed on the pseudonyms). This is the
# salt the first clean run of the demo configuration generated. Point CHEXMIX_SOURCE_ROOT at a
# real archive and no salt is set here: a secret one is generated into <storage>/private/id_salt
# (or comes from your CHEXMIX_ID_SALT).
ifeq ($(origin CHEXMIX_SOURCE_ROOT),undefined)
export CHEXMIX_ID_SALT ?= 0fce126dfd1049e273e910dd4175cbe035908374bf5e3d3ec1db2f15d2b5aa2d
endif

export DAGSTER_HOME ?= $(CURDIR)/.dagster_home$(DEMO_SUFFIX)
export CHEXMIX_SOURCE_ROOT ?= $(CURDIR)/data/demo$(DEMO_SUFFIX)
export CHEXMIX_STORAGE_ROOT ?= $(CURDIR)/storage$(DEMO_SUFFIX)
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
# Ray auth: no global RAY_AUTH_MODE=disabled. A cluster (cluster-demo, any RAY_ADDRESS) always runs
# with RAY_AUTH_MODE=token, and so does the local Ray a step starts (pipelines/ray_auth.py).
export RAY_USAGE_STATS_ENABLED := 0
export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S := 0.2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv data demo test test-all ui lint bench-ingest clean-demo cluster-demo

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	printf 'telemetry:\n  enabled: false\n' > $@

DEMO_ARGS = studies=$(DEMO_STUDIES) seed=$(DEMO_SEED)
data: venv
	@if [ -f "$(CHEXMIX_SOURCE_ROOT)/ground_truth/labels.csv" ]; then \
	  made="$$(cat '$(CHEXMIX_SOURCE_ROOT)/ground_truth/demo_args.txt' 2>/dev/null)"; \
	  if [ -n "$$made" ] && [ "$$made" != "$(DEMO_ARGS)" ]; then \
	    echo "error: the archive at $(CHEXMIX_SOURCE_ROOT) was generated with $$made, not $(DEMO_ARGS):" \
	      "remove it (and make clean-demo) or set CHEXMIX_SOURCE_ROOT" >&2; exit 2; \
	  fi; \
	  echo "demo archive already at $(CHEXMIX_SOURCE_ROOT)"; \
	else \
	  start=$$(date +%s); \
	  $(BIN)/python -m cxr.synthetic "$(CHEXMIX_SOURCE_ROOT)" --studies $(DEMO_STUDIES) --seed $(DEMO_SEED) && \
	  echo "$(DEMO_ARGS)" > "$(CHEXMIX_SOURCE_ROOT)/ground_truth/demo_args.txt" && \
	  echo "$$(( $$(date +%s) - start ))" > "$(CHEXMIX_SOURCE_ROOT)/ground_truth/generation_seconds.txt" && \
	  echo "demo archive generated in $$(cat '$(CHEXMIX_SOURCE_ROOT)/ground_truth/generation_seconds.txt') s"; \
	fi

# elapsed time of every asset step of the runs since the demo started (from the event log)
RUN_TIMES = $(BIN)/python -m pipelines.run_times --since "$$(cat '$(DAGSTER_HOME)/.demo_started')"

demo: venv data $(DAGSTER_HOME)/dagster.yaml
	@date +%s > '$(DAGSTER_HOME)/.demo_started'
	$(BIN)/dagster asset materialize -m pipelines.definitions --select '$(DEMO_SELECT)' \
	  -c '$(DEMO_CONFIG)' || { $(RUN_TIMES); exit 1; }
	$(BIN)/python -m pipelines.evaluate run --all --only-new --config '$(DEMO_CONFIG)' \
	  || { $(RUN_TIMES); exit 1; }
	@echo
	@$(RUN_TIMES)
	@pipeline=$$(( $$(date +%s) - $$(cat '$(DAGSTER_HOME)/.demo_started') )); \
	  generation=$$(cat '$(CHEXMIX_SOURCE_ROOT)/ground_truth/generation_seconds.txt' 2>/dev/null || echo 0); \
	  echo "make demo: archive generation $$generation s + pipeline and evaluation $$pipeline s" \
	    "= $$(( generation + pipeline )) s (the virtual environment's install not counted)"
	@echo
	@echo "The demo's CheXmix claims, re-checked from the catalog (bench/demo_claims.py):"
	-@$(BIN)/python bench/demo_claims.py --storage '$(CHEXMIX_STORAGE_ROOT)'
	@echo
	@echo "Done. Outputs: $(CHEXMIX_STORAGE_ROOT); catalog: $(CHEXMIX_STORAGE_ROOT)/catalog.duckdb"
	@echo "Leaderboard: $(CHEXMIX_STORAGE_ROOT)/evaluation/leaderboard.md"
	@echo "Open the UI with:  make ui   then browse http://127.0.0.1:$(UI_PORT)"

test: venv
	$(BIN)/python -m pytest

test-all: venv
	$(BIN)/python -m pytest -m ''

ui: venv $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -m pipelines.definitions -h 127.0.0.1 -p $(UI_PORT)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# A real 2-node Ray cluster on this machine (separate `ray start` processes, 1 CPU each):
# tokenization and a short stage 1 (STRICT_SPREAD) on the demo storage; stopped by PID.
# Token auth: $RAY_AUTH_TOKEN / $RAY_AUTH_TOKEN_PATH, else a token generated once into
# $(CLUSTER_STATE)/auth_token (mode 0600).
CLUSTER_STATE ?= $(DAGSTER_HOME)/ray_cluster
CLUSTER_STEPS ?= 20
cluster-demo: venv $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python scripts/ray_cluster.py demo --state-dir '$(CLUSTER_STATE)' --steps $(CLUSTER_STEPS)

bench-ingest: venv
	$(BIN)/python bench/ingest.py

clean-demo:
	rm -rf "$(CHEXMIX_STORAGE_ROOT)" "$(DAGSTER_HOME)"
