#!/usr/bin/env bash
# Prometheus (Debian package binary) as a plain process, never as the system service.
#
#   bash infra/prometheus.sh up|down|status
#
# Serves http://127.0.0.1:19090 with infra/prometheus/prometheus.yml; `down` deletes the TSDB.
#
# Environment (defaults):
#   ESPER_PROM_PORT=19090
#   ESPER_PROM_START_TIMEOUT=60
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT="${ESPER_PROM_PORT:-19090}"

SVC=prometheus
SVC_ADDR="http://$ESPER_HOST:$PORT"
STATE="$(state_dir prometheus)"
DATA="$STATE/data"
SVC_MARKER="--storage.tsdb.path=$DATA"
SVC_EXE=prometheus
SVC_PORTS=("$PORT")
SVC_TIMEOUT="${ESPER_PROM_START_TIMEOUT:-60}"
SVC_STOP_TIMEOUT=30

svc_ready() { [[ "$(http_code "http://$ESPER_HOST:$PORT/-/ready")" == 200 ]]; }

svc_wipe() { rm -rf "$DATA"; }

svc_start() {
    local prom conf
    prom="$(command -v prometheus)" || die "prometheus: binary not found (run infra/install-deps.sh prometheus)"
    mkdir -p "$DATA"
    conf="$STATE/prometheus.yml"
    sed -e "s/127\.0\.0\.1:19090/$ESPER_HOST:$PORT/g" "$ESPER_INFRA_DIR/prometheus/prometheus.yml" >"$conf"
    start_daemon prometheus "$prom" \
        --config.file="$conf" \
        --storage.tsdb.path="$DATA" \
        --storage.tsdb.retention.time=1d \
        --web.listen-address="$ESPER_HOST:$PORT" \
        --web.external-url="http://$ESPER_HOST:$PORT/" \
        --web.enable-lifecycle
}

service_main prometheus "$@"
