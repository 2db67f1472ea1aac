#!/usr/bin/env bash
# Validate the deployment files offline: docker-compose.yml against the Compose specification, the Helm
# chart with `helm lint --strict`, and every rendered manifest against the Kubernetes schemas.
# helm is built from its Go module once per machine and cached (no prebuilt binary downloads here).
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="${ESPER_TOOLS_DIR:-$HOME/.cache/esper/tools/bin}"
HELM_VERSION="${ESPER_HELM_VERSION:-v3.19.0}"
KUBE_VERSION="${ESPER_KUBE_VERSION:-1.31.0}"
HELM="$TOOLS/helm"
if ! "$HELM" version --short 2>/dev/null | grep -q "${HELM_VERSION%.*}"; then
  echo "deploy-check: building helm $HELM_VERSION from its Go module (first time on this machine, a few minutes)"
  mkdir -p "$TOOLS"
  GOBIN="$TOOLS" GOFLAGS=-mod=mod go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT

.venv/bin/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
"$HELM" lint --strict deploy/helm/esper
"$HELM" template esper deploy/helm/esper --kube-version "$KUBE_VERSION" > "$out/default.yaml"
"$HELM" template esper deploy/helm/esper --kube-version "$KUBE_VERSION" \
  --set services.tezzeret.replicas=4 --set services.urabrask.gpu=2 > "$out/all.yaml"
grep -q 'nvidia.com/gpu: 2' "$out/all.yaml" || { echo "urabrask lost its GPU request"; exit 1; }
# Every dashboard and rule file of the repository is in the chart's ConfigMaps (through its linked folders).
for f in deploy/grafana/dashboards/*.json deploy/prometheus/rules/*.yml; do
  grep -q "^  $(basename "$f"): |-" "$out/default.yaml" || { echo "the chart does not ship $f"; exit 1; }
done
.venv/bin/kubernetes-validate --strict -k "$KUBE_VERSION" --quiet "$out/default.yaml" "$out/all.yaml"
echo "deploy-check: compose, chart and $(grep -c '^kind:' "$out/all.yaml") rendered manifests are valid"
