# sandpit — run `make help` for the targets.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

MODULES := gen/go examples/go services/daemon services/policy services/egressproxy services/executor deploy/image test
# test/ holds the integration tests of the pair; every other module's tests
# without the integration tag are unit tests.
UNIT_MODULES := $(filter-out test,$(MODULES))
BIN := $(CURDIR)/bin
BUILD := $(CURDIR)/build
IMAGE_TAR := $(BUILD)/sandpit-node.tar
IMAGE_REF := sandpit.local/node:24
IMAGE_SDK_TAR := $(BUILD)/sandpit-node-sdk.tar
IMAGE_22_TAR := $(BUILD)/sandpit-node-22.tar
IMAGE_DEBUG_TAR := $(BUILD)/sandpit-node-debug.tar
IMAGE_DEPS := $(shell find deploy/image -name '*.go' -o -name 'go.*' -o -name '*.json')
RUNC_INSTALL := /usr/local/lib/sandpit/runc
CONTAINERD_SOCK ?= /run/containerd/containerd.sock
NAMESPACE ?= sandpit
GOTEST_FLAGS ?= -count=1 -timeout 40m

export PATH := $(BIN):$(PATH)

.PHONY: help
help: ## show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## install Debian packages that are missing (containerd, nftables, libseccomp-dev, pkg-config)
	hack/install-deps.sh

$(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc $(BIN)/grpcurl: tools/go.mod tools/go.sum
	cd tools && GOWORK=off GOBIN=$(BIN) go install tool

tools/ts/node_modules/.bin/protoc-gen-es: tools/ts/package.json tools/ts/package-lock.json
	cd tools/ts && npm ci --no-audit --no-fund
	touch $@

.PHONY: tools
tools: deps $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc $(BIN)/grpcurl tools/ts/node_modules/.bin/protoc-gen-es ## build buf, protoc plugins and grpcurl at the versions pinned in tools/go.mod and tools/ts

$(BIN)/runc: tools/runc/go.mod tools/runc/go.sum
	cd tools/runc && GOWORK=off CGO_ENABLED=1 go build -trimpath -tags seccomp -o $(BIN)/runc github.com/opencontainers/runc
	$(BIN)/runc --version

.PHONY: runc
runc: deps $(BIN)/runc ## build runc at the version pinned in tools/runc/go.mod

$(IMAGE_TAR): $(IMAGE_DEPS)
	go run ./deploy/image/cmd/sandpit-image --out $(IMAGE_TAR)

.PHONY: image
image: $(IMAGE_TAR) ## build the node-only sandbox image archive; with PROFILE=file also an operator's profile into build/ (NODE=22 for Node.js 22)
ifneq ($(PROFILE),)
	go run ./deploy/image/cmd/sandpit-image --profile $(PROFILE) --node $(or $(NODE),24)
endif

$(IMAGE_SDK_TAR): $(IMAGE_DEPS)
	go run ./deploy/image/cmd/sandpit-image --variant sdk --out $(IMAGE_SDK_TAR)

.PHONY: image-sdk
image-sdk: $(IMAGE_SDK_TAR) ## build node-sdk (Node 24): the node image plus the SDKs people call at /node_modules

$(IMAGE_22_TAR): $(IMAGE_DEPS)
	go run ./deploy/image/cmd/sandpit-image --node 22 --out $(IMAGE_22_TAR)

$(IMAGE_DEBUG_TAR): $(IMAGE_DEPS)
	go run ./deploy/image/cmd/sandpit-image --variant debug --out $(IMAGE_DEBUG_TAR)

.PHONY: images
images: $(IMAGE_TAR) $(IMAGE_SDK_TAR) $(IMAGE_22_TAR) $(IMAGE_DEBUG_TAR) ## build node and node-sdk for Node 24, node for Node 22 and node-debug (the tests use all four)

$(BIN)/stripe-mock: tools/stripemock/go.mod tools/stripemock/go.sum
	cd tools/stripemock && GOWORK=off GOBIN=$(BIN) go install tool

.PHONY: stripe-mock
stripe-mock: $(BIN)/stripe-mock ## build stripe-mock (the local stand-in for api.stripe.com) at its pinned version

.PHONY: generate
generate: deps tools ## generate gen/ from proto/ (Go with pinned plugins; Python with Debian's protoc)
	buf generate
	buf generate --template buf.gen.python.yaml
	cd gen/go && GOWORK=off go mod tidy

.PHONY: checkgenerate
checkgenerate: generate ## fail when gen/ is not what proto/ generates
	@if [ -n "$$(git status --porcelain -- gen)" ]; then git status --porcelain -- gen; git diff -- gen | head -50; echo "gen/ is stale: run make generate and commit"; exit 1; fi
	@if grep -rlE 'sandpit\.egress|DecisionService' gen/python gen/ts; then echo "the internal decision protocol (sandpit.egress.v1) must not ship in the stubs for other languages"; exit 1; fi

.PHONY: examples
examples: ## install the Node example's packages (it uses gen/ts)
	cd examples/node && npm ci --no-audit --no-fund

.PHONY: lint
lint: tools ## buf lint, buf format check, gofmt and go vet over every module
	buf lint
	buf format --diff --exit-code
	@out=$$(gofmt -l $(MODULES) tools); if [ -n "$$out" ]; then echo "gofmt: $$out"; exit 1; fi
	for m in $(MODULES); do (cd $$m && go vet $(INTEGRATION) ./...); done

TEST_ENV = PYTHONDONTWRITEBYTECODE=1 SANDPIT_RUNC=$(BIN)/runc SANDPIT_IMAGE_TAR=$(IMAGE_TAR) SANDPIT_SDK_IMAGE_TAR=$(IMAGE_SDK_TAR) \
	SANDPIT_GRPCURL=$(BIN)/grpcurl SANDPIT_STRIPE_MOCK=$(BIN)/stripe-mock SANDPIT_CHECK=$(BIN)/sandpit-check \
	SANDPIT_IMAGE22_TAR=$(IMAGE_22_TAR) SANDPIT_DEBUG_IMAGE_TAR=$(IMAGE_DEBUG_TAR)

# Tests that need root, containerd, nftables, namespaces or a registry carry
# the integration build tag; the rest are unit tests.
INTEGRATION := -tags integration

.PHONY: unit
unit: ## unit tests alone, with the race detector: no root, containerd or network (as nobody when started as root)
	for m in $(UNIT_MODULES); do (cd $$m && go test -race -count=1 -exec $(CURDIR)/hack/unprivileged.sh ./...); done

# What only the tests need: a PostgreSQL server for the tenants store's
# tests (they start one of their own, in a fresh data directory).
.PHONY: test-deps
test-deps: deps
	hack/install-deps.sh postgresql

.PHONY: test
test: test-deps tools runc images stripe-mock check-cli checkgenerate lint examples unit ## run every test: unit (with -race), and integration against real containerd, runc, nftables and the image
	for m in $(MODULES); do (cd $$m && $(TEST_ENV) go test $(GOTEST_FLAGS) $(INTEGRATION) ./...); done
	$(RUNSC_TEST)

# The end-to-end tests of hardening_test.go, sandbox_limits_test.go,
# init_test.go, userns_test.go, limits_test.go and egress_test.go (and a few
# attacks) again, every sandbox
# under gVisor's runsc (Debian's package; SANDPIT_RUNTIME=runsc makes the
# harness start executors with --runtime runsc). Each test of those files
# either is here and passes, or is left out below with the reason: gVisor
# serves the program's system calls itself and differs from Linux there.
#   TestProcessIsUnprivileged: gVisor's /proc/self/status has no CapAmb and
#     no NoNewPrivs line (the others match).
#   TestTmpIsSizeCappedNoexecNosuid: gVisor's /proc/self/mounts lists /tmp
#     as "rw,noexec,mode=1777,size=4194304", without nosuid and nodev and
#     with the size in bytes (TestTmpRefusesToExecute passes).
#   TestNoDescriptorPointsOutside: stdin, stdout and stderr are host pipes
#     the Sentry holds, which gVisor shows as "host:[N]".
#   TestEveryRlimitIsSetOnPurpose: gVisor has no /proc/self/limits.
#   TestTmpInodesRunOutWithENOSPC: gVisor's tmpfs ignores nr_inodes; the
#     file loop runs until the timeout instead of ending with ENOSPC.
#   TestMaskedPathsAreEmptyAndNodeStillWorks: the Sentry's /proc is its own
#     and the masks are not applied: /proc/cmdline reads
#     "BOOT_IMAGE=/vmlinuz-4.4.0-gvisor quiet", not the host's.
#   TestForkBombHitsPidsLimit, TestInitReapsOrphans: the pids cgroup counts
#     the Sentry's own host threads, not the program's processes: at 64 (and
#     at the default 128 with ten child nodes at once) the sandbox exits
#     with status 2 and no output before any spawn fails with EAGAIN.
#   TestOutOfDescriptorsIsReportedAndSurvived (an attack): passed twice and
#     failed once here under runsc (the proxy's health still NOT_SERVING 15 s
#     after the sandbox ended); out until that is understood.
#   TestEachSandboxHasItsOwnUserNamespace: a runsc sandbox's spec has no
#     user namespace (this runsc cannot boot in one); /proc/self/uid_map is
#     the Sentry's "0 0 4294967295", and its host user is nobody.
RUNSC_TESTS := TestHelloWorldStreamsStartedOutputResult TestImageBoundToRunscRunsUnderGVisor \
	TestImageBoundToAbsentRuntimeIsRefused TestNoOtherProgramsCanBeSpawned TestFilesystemIsReadOnlyButTmp \
	TestSignalsAndExitStatusAsWithNodeAlone TestImageWithoutTheInitFailsClearly \
	TestTmpRefusesToExecute TestOnlyLoopbackNetwork TestProcIsMasked TestOpenFilesLimit TestOnlyIntendedMounts \
	TestBusyLoopIsKilledAtTimeout TestCPUQuotaThrottles TestMemoryBombIsOOMKilled \
	TestDetachedChildDoesNotOutliveExecution TestOutputFloodIsCutAtCap TestOutputFloodKeepsExecutorMemoryBounded TestClientCancelKillsSandbox \
	TestProxyDownMeansNoEgress TestStripeSDKAndAxiosThroughPolicy TestEveryClientLandsAtTheProxy \
	TestNothingLeavesAnotherWay TestDeceptiveRequestsAreBlocked TestDecisionStreamGoneMeansDeny \
	TestSandboxTrustsProxyCAButHoldsNoKey TestRequestBodyLimit TestWebSocketOnlyWhereARuleAllowsIt \
	TestNoPolicyFileDeniesEverything TestOversizedRequestsBreakNothing \
	TestRefusalReasonsDoNotEchoTheTarget
empty :=
RUNSC_RUN := ^($(subst $(empty) $(empty),|,$(strip $(RUNSC_TESTS))))$$
RUNSC_TEST = cd test && SANDPIT_RUNTIME=runsc $(TEST_ENV) go test $(GOTEST_FLAGS) -run '$(RUNSC_RUN)' ./e2e/

.PHONY: test-runsc
test-runsc: deps tools runc images stripe-mock ## the hardening, limits and egress end-to-end tests with every sandbox under gVisor's runsc
	$(RUNSC_TEST)

$(BIN)/containerd2/containerd: tools/containerd2/go.mod tools/containerd2/go.sum
	cd tools/containerd2 && GOWORK=off go build -o $(BIN)/containerd2/ github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2

.PHONY: test-containerd2
test-containerd2: deps tools runc images stripe-mock check-cli $(BIN)/containerd2/containerd ## run the integration tests against containerd 2.x (pinned in tools/containerd2) instead of Debian's 1.6
	cd test && PATH=$(BIN)/containerd2:$$PATH SANDPIT_CONTAINERD=$(BIN)/containerd2/containerd $(TEST_ENV) go test $(GOTEST_FLAGS) ./e2e/

.PHONY: bench
bench: deps tools runc images stripe-mock ## hello-world Execute latency (warm pool, cold, 20 at once) vs bare node and a warm sandbox's memory; proxy latency and throughput vs direct; what brokering a secret adds to a request
	cd test && $(TEST_ENV) go test -count=1 -run '^$$' -bench . -benchtime 40x -timeout 20m ./e2e/
	cd services/egressproxy && go test -count=1 -run '^$$' -bench 'BrokeredRequest' -benchmem ./internal/proxy/

# make test runs the soak at the issue's counts (1,000 in a row, 200 at 16
# concurrent, about 5 minutes here); make soak runs it longer.
SOAK_SERIAL ?= 5000
SOAK_CONCURRENT ?= 1000

.PHONY: soak
soak: deps tools runc images stripe-mock ## the soak test, longer: SOAK_SERIAL executions in a row and SOAK_CONCURRENT at 16 concurrent, then every count back to its baseline
	cd test && $(TEST_ENV) SANDPIT_SOAK_SERIAL=$(SOAK_SERIAL) SANDPIT_SOAK_CONCURRENT=$(SOAK_CONCURRENT) \
		go test -count=1 -run '^TestSoakLeavesNothingBehind$$' -timeout 90m -v ./e2e/

POLICY ?= deploy/policy/example.yaml

.PHONY: check-cli
check-cli: ## build sandpit-check (the Check RPC's CLI) into bin/
	go build -o $(BIN)/sandpit-check ./services/executor/cmd/sandpit-check

.PHONY: sandpit-cli
sandpit-cli: ## build sandpit (the operator's CLI: sandpit image inspect) into bin/
	go build -o $(BIN)/sandpit ./services/executor/cmd/sandpit

.PHONY: inspect
inspect: image sandpit-cli ## inspect the default image: exits 1 when it holds a shell, interpreter, network tool, setuid file...
	$(BIN)/sandpit image inspect $(IMAGE_TAR)

.PHONY: binaries
binaries: ## build the executor, the egress proxy, sandpit-check and sandpit
	go build -o $(BIN)/sandpit-executor ./services/executor/cmd/sandpit-executor
	go build -o $(BIN)/sandpit-egress-proxy ./services/egressproxy/cmd/sandpit-egress-proxy
	go build -o $(BIN)/sandpit-check ./services/executor/cmd/sandpit-check
	go build -o $(BIN)/sandpit ./services/executor/cmd/sandpit

.PHONY: run
run: deps runc image image-sdk binaries ## install what is missing, start containerd if none runs, run the egress proxy and the executor (POLICY=file, default deploy/policy/example.yaml)
	install -D -m 0755 $(BIN)/runc $(RUNC_INSTALL)
	hack/ensure-containerd.sh $(CONTAINERD_SOCK)
	ctr --address $(CONTAINERD_SOCK) --namespace $(NAMESPACE) images import $(IMAGE_TAR)
	ctr --address $(CONTAINERD_SOCK) --namespace $(NAMESPACE) images import $(IMAGE_SDK_TAR)
	exec hack/run.sh $(BIN) $(CONTAINERD_SOCK) $(NAMESPACE) $(RUNC_INSTALL) $(IMAGE_REF) "$(POLICY)"

.PHONY: install
install: deps runc image image-sdk binaries ## install binaries, runc, systemd units and the example policy (kept if present), import the image
	install -D -m 0755 $(BIN)/sandpit-executor /usr/local/bin/sandpit-executor
	install -D -m 0755 $(BIN)/sandpit-egress-proxy /usr/local/bin/sandpit-egress-proxy
	install -D -m 0755 $(BIN)/sandpit-check /usr/local/bin/sandpit-check
	install -D -m 0755 $(BIN)/sandpit /usr/local/bin/sandpit
	install -D -m 0755 $(BIN)/runc $(RUNC_INSTALL)
	id -u sandpit-egress >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin sandpit-egress
	install -D -m 0644 deploy/systemd/sandpit-executor.service /etc/systemd/system/sandpit-executor.service
	install -D -m 0644 deploy/systemd/sandpit-egress-proxy.service /etc/systemd/system/sandpit-egress-proxy.service
	[ -e /etc/sandpit/policy.yaml ] || install -D -m 0644 deploy/policy/example.yaml /etc/sandpit/policy.yaml
	hack/ensure-containerd.sh $(CONTAINERD_SOCK)
	ctr --address $(CONTAINERD_SOCK) --namespace $(NAMESPACE) images import $(IMAGE_TAR)
	ctr --address $(CONTAINERD_SOCK) --namespace $(NAMESPACE) images import $(IMAGE_SDK_TAR)
	@echo "installed; start with: systemctl daemon-reload && systemctl enable --now sandpit-egress-proxy sandpit-executor"

.PHONY: clean
clean: ## remove built binaries and images
	rm -rf $(BIN) $(BUILD)
