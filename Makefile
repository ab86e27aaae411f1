# restgate: `make run` serves the default Caddyfile, `make test` runs every test.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

GO        ?= go
BIN       := bin/restgate
RESTGATE_VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
CADDY_VERSION := $(shell $(GO) list -m -f '{{.Version}}' github.com/caddyserver/caddy/v2)
# The module proxy here answers 403 (not 404) for unpublished modules; a `|`
# fallback lets xcaddy's local replacement of restgate work.
XCADDY_GOPROXY ?= $(firstword $(subst $(comma), ,$(shell $(GO) env GOPROXY)))|off
comma := ,
TOOL      := $(GO) tool -modfile=tools/go.mod
TEST_LOG  := .test.log
export RESTGATE_DATA ?= $(CURDIR)/data

.PHONY: build run reload deps test lint fmt bench xcaddy xcaddy-check clean

build: ## bin/restgate: Caddy's standard modules plus restgate's
	$(GO) build -ldflags "-X main.version=$(RESTGATE_VERSION)" -o $(BIN) ./cmd/restgate

run: build ## serve the default Caddyfile in the foreground
	@mkdir -p "$(RESTGATE_DATA)"
	@scripts/dev-key.sh $(BIN) "$(RESTGATE_DATA)"
	@scripts/run-banner.sh "$(RESTGATE_DATA)" &
	exec $(BIN) run --config Caddyfile --adapter caddyfile

reload: ## reload the gateway `make run` started, from the same environment (a reload from a shell without its RESTGATE_* variables is refused)
	@scripts/reload.sh $(BIN)

deps: ## install what the tests start for real (Redis, PostgreSQL, Chromium, wrk, nginx, …) or name the exact command
	@scripts/deps.sh

test: deps build ## every unit (with -race), golden-adapt and integration test; a skipped test fails the run
	RESTGATE_BIN=$(CURDIR)/$(BIN) $(GO) test -race -count=1 -v -timeout 30m ./... 2>&1 | tee $(TEST_LOG) | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)' | grep -v '^=== RUN' || true
	@scripts/test-summary.sh $(TEST_LOG)

bench: deps build ## end-to-end and micro benchmarks against bare Caddy and nginx; writes BENCHMARKS.md (~25 min)
	$(GO) run ./bench -bin $(BIN) -out BENCHMARKS.md

lint: ## gofmt, go vet, staticcheck (pinned in tools/go.mod), a tidy go.mod
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt: $$out"; exit 1; fi
	$(GO) mod tidy -diff || { echo "go.mod is not tidy: run go mod tidy"; exit 1; }
	$(GO) vet ./...
	$(TOOL) staticcheck ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

xcaddy: ## the same binary, built the way users build plugins: xcaddy build --with
	GOPROXY='$(XCADDY_GOPROXY)' $(TOOL) xcaddy build $(CADDY_VERSION) --with github.com/restgate/restgate=. --output bin/restgate-xcaddy

xcaddy-check: build xcaddy ## both builds list the same modules
	@diff <($(BIN) list-modules --skip-standard) <(bin/restgate-xcaddy list-modules --skip-standard) && \
	diff <($(BIN) list-modules | sort) <(bin/restgate-xcaddy list-modules | sort) && \
	echo "xcaddy-check: both builds list the same $$($(BIN) list-modules | grep -c .) lines of modules"

clean:
	rm -rf bin $(TEST_LOG)
