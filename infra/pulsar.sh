#!/usr/bin/env bash
# Apache Pulsar standalone broker (broker + one embedded bookie + RocksDB metadata store, one JVM).
#
#   bash infra/pulsar.sh up|down|status
#
# Environment (defaults):
#   ESPER_PULSAR_PORT=16650         binary protocol   -> pulsar://127.0.0.1:16650
#   ESPER_PULSAR_HTTP_PORT=18080    admin REST API    -> http://127.0.0.1:18080
#   ESPER_PULSAR_BOOKIE_PORT=13181  embedded bookie (loopback only)
#   ESPER_PULSAR_HEAP=1g            JVM heap cap (-Xmx)
#   ESPER_PULSAR_DIRECT_MEMORY=512m JVM direct-memory cap (netty buffers, bookie caches)
#   ESPER_PULSAR_START_TIMEOUT=180  seconds to wait for readiness
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT="${ESPER_PULSAR_PORT:-16650}"
HTTP_PORT="${ESPER_PULSAR_HTTP_PORT:-18080}"
BOOKIE_PORT="${ESPER_PULSAR_BOOKIE_PORT:-13181}"
HEAP="${ESPER_PULSAR_HEAP:-1g}"
DIRECT_MEMORY="${ESPER_PULSAR_DIRECT_MEMORY:-512m}"

SVC=pulsar
SVC_ADDR="$ESPER_HOST:$PORT, admin http://$ESPER_HOST:$HTTP_PORT"
STATE="$(state_dir pulsar)"
DATA="$STATE/data"
SVC_MARKER="$DATA/metadata"
SVC_EXE=java
SVC_PORTS=("$PORT" "$HTTP_PORT" "$BOOKIE_PORT")
SVC_TIMEOUT="${ESPER_PULSAR_START_TIMEOUT:-180}"
SVC_STOP_TIMEOUT=60

# Ready when the admin API lists the default namespace (created by the standalone starter after
# the broker, the bookie and the metadata store are all up).
svc_ready() {
    curl -fsS --connect-timeout 2 --max-time 5 "http://$ESPER_HOST:$HTTP_PORT/admin/v2/namespaces/public" 2>/dev/null |
        grep -q '"public/default"'
}

svc_wipe() { rm -rf "$DATA"; }

svc_start() {
    local java lib conf
    java="$(find_java)" || die "pulsar: no Java 17+ found (run infra/install-deps.sh pulsar)"
    lib="$(pulsar_lib_dir)"
    [[ -d "$lib" ]] || die "pulsar: classpath $lib missing (run infra/install-deps.sh pulsar)"
    mkdir -p "$DATA/tmp"
    # Generated copy of the checked-in config with the chosen ports.
    conf="$STATE/standalone.conf"
    sed -e "s/^brokerServicePort=.*/brokerServicePort=$PORT/" \
        -e "s/^webServicePort=.*/webServicePort=$HTTP_PORT/" \
        -e "s|^narExtractionDirectory=.*|narExtractionDirectory=$DATA/nar|" \
        "$ESPER_INFRA_DIR/pulsar/standalone.conf" >"$conf"
    cd "$STATE" || die "pulsar: cannot enter $STATE"
    start_daemon pulsar "$java" \
        -Xms128m "-Xmx$HEAP" "-XX:MaxDirectMemorySize=$DIRECT_MEMORY" \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=50 -XX:+ExitOnOutOfMemoryError \
        --add-opens java.base/java.io=ALL-UNNAMED \
        --add-opens java.base/java.util.zip=ALL-UNNAMED \
        --add-opens java.base/java.nio=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.misc=ALL-UNNAMED \
        --add-opens java.base/sun.net=ALL-UNNAMED \
        --add-opens java.management/sun.management=ALL-UNNAMED \
        -Dio.netty.tryReflectionSetAccessible=true \
        -Djava.net.preferIPv4Stack=true \
        -Dlog4j2.formatMsgNoLookups=true \
        "-Djava.io.tmpdir=$DATA/tmp" \
        -cp "$lib/*" org.apache.pulsar.PulsarStandaloneStarter \
        --config "$conf" -nfw -nss \
        --metadata-dir "$DATA/metadata" \
        --bookkeeper-dir "$DATA/bookkeeper" \
        --bookkeeper-port "$BOOKIE_PORT"
}

service_main pulsar "$@"
