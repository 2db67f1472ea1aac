#!/usr/bin/env bash
# Validate the deployment files offline: docker-compose.yml against the Compose specification, the Helm
# chart with `helm lint --strict`, every rendered manifest against the Kubernetes schemas, and the rendered
# KEDA ScaledObjects against KEDA's own Go API (deploy/keda-check).
# helm and keda-check are built from their Go modules once per machine and cached (no prebuilt binary
# downloads here). `deploy/check.sh tools` only builds them and prints their two paths.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="${ESPER_TOOLS_DIR:-$HOME/.cache/esper/tools/bin}"
HELM_VERSION="${ESPER_HELM_VERSION:-v3.19.0}"
KUBE_VERSION="${ESPER_KUBE_VERSION:-1.31.0}"
CHART="${ESPER_CHART_DIR:-deploy/helm/esper}"
HELM="$TOOLS/helm"
mkdir -p "$TOOLS"
if ! "$HELM" version --short 2>/dev/null | grep -q "${HELM_VERSION%.*}"; then
  echo "deploy-check: building helm $HELM_VERSION from its Go module (first time on this machine, a few minutes)" >&2
  GOBIN="$TOOLS" GOFLAGS=-mod=mod go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi
# keda-check is rebuilt whenever its source or pinned KEDA version changes: the binary is named by their hash.
stamp=$(cat deploy/keda-check/go.mod deploy/keda-check/go.sum deploy/keda-check/*.go | sha256sum | cut -c1-12)
KEDA_CHECK="$TOOLS/keda-check-$stamp"
if [[ ! -x "$KEDA_CHECK" ]]; then
  echo "deploy-check: building keda-check against $(grep -o 'kedacore/keda/v2 v[^ ]*' deploy/keda-check/go.mod)" \
       "(first time on this machine, several minutes)" >&2
  new=$(mktemp "$TOOLS/.keda-check.XXXXXX")   # concurrent first runs do not overwrite each other's binary
  (cd deploy/keda-check && GOFLAGS=-mod=readonly go build -o "$new" .)
  rm -f "$TOOLS"/keda-check-* && mv "$new" "$KEDA_CHECK"
fi
if [[ "${1:-}" == tools ]]; then
  printf '%s\n%s\n' "$HELM" "$KEDA_CHECK"; exit 0
fi
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT

.venv/bin/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
"$HELM" lint --strict "$CHART"
"$HELM" template esper "$CHART" --kube-version "$KUBE_VERSION" > "$out/default.yaml"
"$HELM" template esper "$CHART" --kube-version "$KUBE_VERSION" \
  --set services.tezzeret.replicas=4 --set services.urabrask.gpu=2 > "$out/all.yaml"
"$HELM" template esper "$CHART" --kube-version "$KUBE_VERSION" \
  --set autoscaling.enabled=false --set trainer.resume=demo --set trainer.runsClaim=runs > "$out/fixed.yaml"
grep -q 'nvidia.com/gpu: 2' "$out/all.yaml" || { echo "urabrask lost its GPU request"; exit 1; }
# Every dashboard and rule file of the repository is in the chart's ConfigMaps (through its linked folders).
for f in deploy/grafana/dashboards/*.json deploy/prometheus/rules/*.yml; do
  grep -q "^  $(basename "$f"): |-" "$out/default.yaml" || { echo "the chart does not ship $f"; exit 1; }
done
sed -n '/^kind: Job/,/^---/p' "$out/default.yaml" | grep -q 'nvidia.com/gpu: 1' || { echo "the trainer Job lost its GPU request"; exit 1; }
grep -q '^  replicas: 4' "$out/all.yaml" && { echo "tezzeret sets replicas although KEDA scales it"; exit 1; }
grep -q 'kind: ScaledObject' "$out/fixed.yaml" && { echo "ScaledObjects rendered with autoscaling off"; exit 1; }
# A kind the Kubernetes schemas do not know is only a warning there, so a warning fails here, except for
# KEDA's ScaledObjects: keda-check validates those.
report=$(.venv/bin/kubernetes-validate --strict -k "$KUBE_VERSION" --quiet \
         "$out/default.yaml" "$out/all.yaml" "$out/fixed.yaml") || { echo "$report"; exit 1; }
unchecked=$(grep -v 'Couldn.t find schema for kind ScaledObject with api version keda.sh/v1alpha1 ' <<<"$report" || true)
[[ -z "$unchecked" ]] || { echo "$unchecked"; echo "deploy-check: manifests no schema validates"; exit 1; }
"$KEDA_CHECK" -expect 4 "$out/default.yaml" "$out/all.yaml"
echo "deploy-check: compose, chart and $(grep -c '^kind:' "$out/all.yaml") rendered manifests are valid"
