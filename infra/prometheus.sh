#!/usr/bin/env bash
# Prometheus (Debian package binary) as a plain process, never as the system service.
#
#   bash infra/prometheus.sh up|down|status|reload
#
# Serves http://127.0.0.1:19090 with infra/prometheus/prometheus.yml and Esper's alert rules
# (deploy/prometheus/rules); `down` deletes the TSDB. It scrapes, as job "esper", the targets whose file_sd
# files tests write into the state directory's targets/. `reload` rewrites the configuration and the rules
# into the state directory and has the running Prometheus read them again (for one started by older scripts).
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

# write_config: the configuration, the alert rules and the (empty) targets folder in the state directory.
write_config() {
    mkdir -p "$STATE/targets" "$STATE/rules"
    sed -e "s/127\.0\.0\.1:19090/$ESPER_HOST:$PORT/g" "$ESPER_INFRA_DIR/prometheus/prometheus.yml" >"$STATE/prometheus.yml"
    rm -f "$STATE"/rules/*.yml
    cp "$ESPER_INFRA_DIR"/../deploy/prometheus/rules/*.yml "$STATE/rules/"
}

svc_start() {
    local prom conf
    prom="$(command -v prometheus)" || die "prometheus: binary not found (run infra/install-deps.sh prometheus)"
    mkdir -p "$DATA"
    write_config
    conf="$STATE/prometheus.yml"
    start_daemon prometheus "$prom" \
        --config.file="$conf" \
        --storage.tsdb.path="$DATA" \
        --storage.tsdb.retention.time=1d \
        --web.listen-address="$ESPER_HOST:$PORT" \
        --web.external-url="http://$ESPER_HOST:$PORT/" \
        --web.enable-lifecycle
}

if [[ "${1:-}" == reload ]]; then
    svc_ready || die "prometheus: not running at $SVC_ADDR"
    write_config
    [[ "$(curl -s -o /dev/null -w '%{http_code}' -X POST "$SVC_ADDR/-/reload")" == 200 ]] \
        || die "prometheus: $SVC_ADDR refused to reload $STATE/prometheus.yml (see its log)"
    say "prometheus: configuration and rules reloaded ($SVC_ADDR)"
    exit 0
fi
service_main prometheus "$@"
