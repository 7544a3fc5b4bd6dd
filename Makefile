# artifactstore — run `make help` for the list of targets.
SHELL := /bin/bash
GO ?= go
STATICCHECK_VERSION ?= v0.8.2
# Test timeout: the whole suite takes a few minutes here; the bound only stops a hung run.
TEST_TIMEOUT ?= 20m
BENCH_TIME ?= 1s
SOAK_COUNT ?= 10

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets with what they do.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build bin/artifactstore.
	$(GO) build -o bin/artifactstore ./cmd/artifactstore

.PHONY: run
run: ## Run the whole pipeline in one process (embedded NATS, local PostgreSQL).
	$(GO) run ./cmd/artifactstore run

# versitygw is the S3-compatible server the S3 backend is tested against;
# keep its version equal to internal/s3test.Version.
VERSITYGW_VERSION ?= v1.8.0
GOBIN_DIR := $(shell $(GO) env GOPATH 2>/dev/null | cut -d: -f1)/bin

.PHONY: tools
tools: ## Install the test tools that are missing (versitygw, for the S3 tests).
	@if command -v versitygw >/dev/null 2>&1 || [ -x "$(GOBIN_DIR)/versitygw" ]; then \
		echo "versitygw: installed"; \
	else \
		echo "installing versitygw $(VERSITYGW_VERSION) (an S3-compatible test server, about 80 MB)"; \
		$(GO) install github.com/versity/versitygw/cmd/versitygw@$(VERSITYGW_VERSION); \
	fi

.PHONY: test
test: tools ## Run every test with the race detector (needs PostgreSQL; NATS is embedded; versitygw is installed when missing).
	$(GO) test -race -timeout $(TEST_TIMEOUT) ./...

.PHONY: test-loaded
test-loaded: tools ## Run every test as `test` does while a CPU hog keeps every core busy (a speed-dependent test fails here).
	$(GO) build -o bin/cpuhog ./internal/cpuhog
	@# The hog stops when the tests end (trap), and on its own after TEST_TIMEOUT.
	@# -count 1: results cached by an earlier quiet run would prove nothing.
	@bin/cpuhog -for $(TEST_TIMEOUT) & hog=$$!; \
	trap 'kill $$hog 2>/dev/null; wait $$hog 2>/dev/null' EXIT; trap 'exit 130' INT TERM; \
	$(GO) test -race -count 1 -timeout $(TEST_TIMEOUT) ./...

.PHONY: test-quick
test-quick: tools ## Run every test without the race detector (faster feedback while editing).
	$(GO) test ./...

.PHONY: lint
lint: ## gofmt, go vet and staticcheck (installed from the module proxy).
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

.PHONY: migrate
migrate: ## Apply the schema migrations to ARTIFACTSTORE_DATABASE_URL (default: local PostgreSQL).
	$(GO) run ./cmd/artifactstore migrate up

.PHONY: bench
bench: ## Run the benchmarks and print a table with ratios against same-run baselines.
	$(GO) test -run '^$$' -bench . -benchtime $(BENCH_TIME) -count 1 -timeout 60m ./... | tee bench.out
	$(GO) run ./internal/benchtable < bench.out

.PHONY: soak
soak: ## Repeat the crash, race, failover and gap-free tests SOAK_COUNT times (default 10), plus the 1 GiB memory test.
	ARTIFACTSTORE_TEST_1GIB=1 $(GO) test -race -timeout 120m -count $(SOAK_COUNT) \
		-run 'Crash|GapFree|Race|Failover|Graceful|Interrupted|CheckpointCommitsWithRows|Memory|RSS' ./...

.PHONY: fuzz
fuzz: ## Run each fuzz target for FUZZTIME (default 30s); FuzzRequest needs PostgreSQL.
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime $${FUZZTIME:-30s} ./digest
	$(GO) test -run '^$$' -fuzz FuzzReader -fuzztime $${FUZZTIME:-30s} ./digest/blaketree
	$(GO) test -run '^$$' -fuzz FuzzDecodePayload -fuzztime $${FUZZTIME:-30s} ./events
	$(GO) test -run '^$$' -fuzz FuzzScanHeads -fuzztime $${FUZZTIME:-30s} ./events
	$(GO) test -run '^$$' -fuzz FuzzChainV2Encoding -fuzztime $${FUZZTIME:-30s} ./events
	$(GO) test -run '^$$' -fuzz FuzzDecodeIngest -fuzztime $${FUZZTIME:-30s} ./commands
	$(GO) test -run '^$$' -fuzz FuzzRequest -fuzztime $${FUZZTIME:-30s} ./api

.PHONY: clean
clean: ## Remove build output.
	rm -rf bin bench.out
