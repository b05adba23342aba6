# Switchboard: `make run` and `make test` are the contract; both set up .venv when it is missing.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup tools run demo bench soak test test-unit test-integration test-e2e train train-commercial eval schemas lint clean

setup: $(STAMP)

# Rebuilt only when the dependency pins change; `make setup` twice does nothing the second time.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==26.3"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,train]"
	touch $(STAMP)

# Debian packages that some tests drive: promtool (package prometheus) checks the alert rules,
# headless Chromium loads the live ops page, openssl makes the TLS tests' certificates. Installed once, only when missing.
tools:
	@missing=""; for tool in promtool chromium openssl; do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for:$$missing"; \
		sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$sudo apt-get update -qq && \
		$$sudo apt-get install -y -qq --no-install-recommends prometheus chromium openssl >/dev/null; \
	fi

run: setup
	$(BIN)/switchboard run

demo: setup
	$(BIN)/switchboard demo --count 200 --json

# Speed and memory against a baseline measured in the same run, then the pipeline at offered
# rates; writes bench/report.json and bench/pipeline.png (docs/performance.md). Then a route
# start restoring 100,000 conversations against an empty start.
bench: setup
	$(BIN)/switchboard bench --also services/classify/artifacts/minilm4-real-v1
	$(BIN)/switchboard bench-restore --conversations 100000

# Ten minutes at a steady 100 tweets/s: memory and consumer lag must not grow. FAULTS=1 also
# kills and restarts each service and takes the mail server down (`make soak FAULTS=1`).
# Writes bench/soak.json (bench/soak-faults.json with FAULTS) (docs/performance.md).
MINUTES ?= 10
RATE    ?= 100
soak: setup
	$(BIN)/switchboard soak --minutes $(MINUTES) --rate $(RATE) $(if $(FAULTS),--faults) --json \
		--report bench/$(if $(FAULTS),soak-faults,soak).json

# Test files run on TEST_WORKERS processes (pytest-xdist), a file's tests on one worker so that a
# module's fixtures (the quality test's evaluation encodes every training tweet) are computed once.
# Tests share nothing that could collide: each has its own temporary folders, free ports and
# broker (or keys of its own on a cluster named by KAFKA_BOOTSTRAP_SERVERS). TEST_WORKERS=0: serially.
# Three workers on two cores: much of the e2e tests' time is waiting (a broker held down for 30 s,
# a sweep's period, a service's start), which a third worker fills (11:46 against 13:22 here).
TEST_WORKERS ?= 3
PYTEST := $(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: setup tools
	$(PYTEST) --durations=20

test-unit: setup tools
	$(BIN)/python -m pytest -q tests/unit

test-integration: setup tools
	$(PYTEST) tests/integration

test-e2e: setup tools
	$(PYTEST) tests/e2e

# A new default candidate, minilm-real-v6 (written + real tweets; non-commercial licence; every
# encoder weight tuned): compare it with the shipped minilm-real-v5 (`switchboard classify eval
# --artifact`) before choosing it; v5 is v3's encoder with its lexical half refitted on the
# current labels (docs/classifier.md). And the commercial one (only rows whose licence allows
# commercial use). A company's own labeled tweets:
# `make train DATA=path/to/folder[:WEIGHT] OUT=path/to/artifact [LICENCES=commercial]`
# (docs/classifier.md): the folder holds train.jsonl and dev.jsonl (and test.jsonl, reported
# only); its dev split selects.
ARTIFACTS := services/classify/artifacts
DATA ?=
OUT  ?=
LICENCES ?= all
train: setup
	$(BIN)/switchboard classify train --data data/labeled --data data/labeled/real:2 \
		--licences $(LICENCES) $(if $(DATA),--data $(DATA) --out $(or $(OUT),$(error OUT=... is needed with DATA)) \
		--version $(notdir $(OUT)),--out $(ARTIFACTS)/minilm-real-v6 --version minilm-real-v6) \
		--lora-rank 0 --lr 1e-4

train-commercial: setup
	$(BIN)/switchboard classify train --data data/labeled --data data/labeled/real:2 \
		--licences commercial --out $(ARTIFACTS)/minilm-commercial-v3 --version minilm-commercial-v3 \
		--lora-rank 0 --lr 1e-4

# The real held-out split by default; `make eval EVAL=path/to/labeled.jsonl` for any other
# file (ERRORS=20 lists the first 20 mistakes).
EVAL ?= data/labeled/real/test.jsonl
ERRORS ?= 0
eval: setup
	$(BIN)/switchboard classify eval --input $(EVAL) --errors $(ERRORS)

schemas: setup
	$(BIN)/switchboard schemas export

lint: setup
	$(BIN)/ruff check services tests data/tools bench
	$(BIN)/ruff format --check services tests data/tools bench

clean:
	rm -rf $(VENV) .switchboard .pytest_cache
