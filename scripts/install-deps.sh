#!/usr/bin/env bash
# Installs what the stack needs on a fresh Debian machine, skipping what is already there:
# Redis and PostgreSQL (Debian packages), uv + the locked Python environment, FerretDB and SeaweedFS (built with Go).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  local missing=()
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  if ((${#missing[@]})); then
    echo "installing Debian packages: ${missing[*]}"
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# ffmpeg: the tests decode the simulator's media with it (tests/upstream_simulator/test_media.py).
# prometheus: its promtool checks the alert rules (deploy/check.py, tests/deploy).
# chromium: a headless browser loads and seeks outputs by their signed links (tests/e2e/test_outputs_browser.py).
# tmux: a real terminal runs the `aitask` command (tests/client/test_cli.py).
apt_install redis-server postgresql curl ffmpeg prometheus chromium tmux

if ! command -v uv >/dev/null; then
  python3 -m pip install --quiet 'uv==0.13.9'
fi
# The default groups ([tool.uv] in pyproject.toml): build (stub generation), local (make run) and dev (make test).
uv sync --frozen --python python3.11 --quiet
# tests/client/test_wheel.py installs the client's wheel into a fresh venv with the network off: resolve its
# dependencies here once, at the lock's versions, so that uv's cache holds all it needs.
mkdir -p .local
uv export --frozen --no-hashes --no-emit-project --no-emit-package aitask-client --quiet -o .local/client-pins.txt
uv pip compile --quiet client/pyproject.toml -c .local/client-pins.txt -o /dev/null

# FerretDB 1.24.2, built from the Go module proxy through tools/ferretdb (see main.go there for why).
if [[ ! -x .local/bin/ferretdb || tools/ferretdb/go.sum -nt .local/bin/ferretdb || tools/ferretdb/main.go -nt .local/bin/ferretdb ]]; then
  echo "building FerretDB (first time: a minute or two)"
  mkdir -p .local/bin
  (cd tools/ferretdb && go build -trimpath -o ../../.local/bin/ferretdb .)
fi

# SeaweedFS (Apache-2.0), the S3-compatible store the output tests run against (tests/e2e/test_outputs_s3.py), built
# through tools/seaweedfs: `go install` of its weed command is refused because its go.mod has a replace directive,
# which the wrapper module repeats. The first build takes about five minutes.
if [[ ! -x .local/bin/weed || tools/seaweedfs/go.sum -nt .local/bin/weed || tools/seaweedfs/go.mod -nt .local/bin/weed ]]; then
  echo "building SeaweedFS (first time: about five minutes)"
  mkdir -p .local/bin
  (cd tools/seaweedfs && go build -trimpath -o ../../.local/bin/weed github.com/seaweedfs/seaweedfs/weed)
fi

# gnostic's protoc-gen-openapi, pinned: `make protos` generates gateway/openapi.json with it (scripts/openapi.py).
GNOSTIC_VERSION=v0.7.0
if ! go version -m .local/bin/protoc-gen-openapi 2>/dev/null | grep -q "github.com/google/gnostic[[:space:]]*${GNOSTIC_VERSION}"; then
  echo "building protoc-gen-openapi ${GNOSTIC_VERSION}"
  mkdir -p .local/bin
  GOBIN="$PWD/.local/bin" go install "github.com/google/gnostic/cmd/protoc-gen-openapi@${GNOSTIC_VERSION}"
fi

# The official OpenAI Node SDK for tests/e2e/test_openai_node_sdk.py, pinned by tests/e2e/node/package-lock.json
# and installed into that test-only folder (run with Node 20 here; Debian's nodejs where none is installed).
if ! command -v npm >/dev/null; then
  apt_install nodejs npm
fi
if [[ ! -d tests/e2e/node/node_modules/openai || tests/e2e/node/package-lock.json -nt tests/e2e/node/node_modules ]]; then
  echo "installing the OpenAI Node SDK into tests/e2e/node"
  npm ci --prefix tests/e2e/node --no-audit --no-fund --loglevel=error
fi
