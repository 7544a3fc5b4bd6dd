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

.PHONY: test
test: ## Run every test with the race detector (needs PostgreSQL; NATS is embedded).
	$(GO) test -race -timeout $(TEST_TIMEOUT) ./...

.PHONY: test-quick
test-quick: ## Run every test without the race detector (faster feedback while editing).
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
		-run 'Crash|GapFree|Race|Failover|Graceful|Interrupted|Memory|RSS' ./...

.PHONY: fuzz
fuzz: ## Run each fuzz target for FUZZTIME (default 30s).
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime $${FUZZTIME:-30s} ./digest
	$(GO) test -run '^$$' -fuzz FuzzDecodePayload -fuzztime $${FUZZTIME:-30s} ./events
	$(GO) test -run '^$$' -fuzz FuzzScanHeads -fuzztime $${FUZZTIME:-30s} ./events
	$(GO) test -run '^$$' -fuzz FuzzChainV2Encoding -fuzztime $${FUZZTIME:-30s} ./events
	$(GO) test -run '^$$' -fuzz FuzzDecodeIngest -fuzztime $${FUZZTIME:-30s} ./commands

.PHONY: clean
clean: ## Remove build output.
	rm -rf bin bench.out
