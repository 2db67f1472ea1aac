#!/usr/bin/env bash
# S3-compatible object store: SeaweedFS `weed mini` (master + volume + filer + S3 in one process).
#
#   bash infra/s3.sh up|down|status
#
# S3 endpoint http://127.0.0.1:8333, path-style addressing, access key esper / secret esper-secret,
# any region (use us-east-1). `down` deletes every bucket (the data directory).
#
# Environment (defaults):
#   ESPER_S3_PORT=8333            S3 API
#   ESPER_S3_MASTER_PORT=17333    SeaweedFS master   (its gRPC port is +10000, as for all below)
#   ESPER_S3_VOLUME_PORT=17340    SeaweedFS volume server
#   ESPER_S3_FILER_PORT=17888     SeaweedFS filer
#   ESPER_S3_ADMIN_PORT=17646     SeaweedFS admin server (UI disabled)
#   ESPER_S3_ACCESS_KEY=esper  ESPER_S3_SECRET_KEY=esper-secret
#   ESPER_S3_START_TIMEOUT=60
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT="${ESPER_S3_PORT:-8333}"
MASTER_PORT="${ESPER_S3_MASTER_PORT:-17333}"
VOLUME_PORT="${ESPER_S3_VOLUME_PORT:-17340}"
FILER_PORT="${ESPER_S3_FILER_PORT:-17888}"
ADMIN_PORT="${ESPER_S3_ADMIN_PORT:-17646}"
ACCESS_KEY="${ESPER_S3_ACCESS_KEY:-esper}"
SECRET_KEY="${ESPER_S3_SECRET_KEY:-esper-secret}"

SVC=s3
SVC_ADDR="http://$ESPER_HOST:$PORT"
STATE="$(state_dir s3)"
DATA="$STATE/data"
SVC_MARKER="-dir=$DATA"
SVC_EXE=weed
# SeaweedFS puts each gRPC port 10000 above its HTTP port.
SVC_PORTS=("$PORT" "$((PORT + 10000))" "$MASTER_PORT" "$((MASTER_PORT + 10000))"
    "$VOLUME_PORT" "$((VOLUME_PORT + 10000))" "$FILER_PORT" "$((FILER_PORT + 10000))"
    "$ADMIN_PORT" "$((ADMIN_PORT + 10000))")
SVC_TIMEOUT="${ESPER_S3_START_TIMEOUT:-60}"
SVC_STOP_TIMEOUT=30

# Ready when a signed ListBuckets with our credentials succeeds (curl >= 7.75 signs SigV4);
# older curl: when the S3 port answers with an S3 error document.
svc_ready() {
    if curl --help all 2>/dev/null | grep -q -- '--aws-sigv4'; then
        [[ "$(curl -s -o /dev/null -w '%{http_code}' --connect-timeout 2 --max-time 5 \
            --aws-sigv4 "aws:amz:us-east-1:s3" --user "$ACCESS_KEY:$SECRET_KEY" \
            "http://$ESPER_HOST:$PORT/" 2>/dev/null)" == 200 ]]
    else
        curl -s --connect-timeout 2 --max-time 5 "http://$ESPER_HOST:$PORT/" 2>/dev/null | grep -q '<Error>\|<ListAllMyBucketsResult'
    fi
}

svc_wipe() { rm -rf "$DATA" "/tmp/esper-s3-$(printf '%s' "$STATE" | sha256sum | cut -c1-10)"; }

svc_start() {
    local weed
    weed="$(weed_bin)" || die "s3: weed not found (run infra/install-deps.sh s3)"
    local run="$DATA/run"
    # Unix socket paths are limited to ~107 bytes.
    ((${#run} <= 80)) || run="/tmp/esper-s3-$(printf '%s' "$STATE" | sha256sum | cut -c1-10)"
    mkdir -p "$DATA/logs" "$run"
    # weed mini creates an admin identity from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
    # No telemetry, no WebDAV / Iceberg / Lance endpoints, logs and sockets in our directory.
    start_daemon s3 env AWS_ACCESS_KEY_ID="$ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$SECRET_KEY" \
        "$weed" -logdir="$DATA/logs" mini \
        -dir="$DATA" -ip="$ESPER_HOST" -ip.bind="$ESPER_HOST" \
        -s3.port="$PORT" -master.port="$MASTER_PORT" -volume.port="$VOLUME_PORT" \
        -filer.port="$FILER_PORT" -admin.port="$ADMIN_PORT" -admin.ui=false \
        -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 \
        -master.telemetry=false -master.volumeSizeLimitMB=64 \
        -filer.localSocket="$run/filer.sock" -s3.localSocket="$run/s3.sock"
}

service_main s3 "$@"
