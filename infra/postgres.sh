#!/usr/bin/env bash
# Throwaway PostgreSQL cluster (Debian packages), loopback only.
#
#   bash infra/postgres.sh up|down|status
#
# `up` creates a fresh cluster (initdb) with role esper/esper owning database esper:
#   postgresql+psycopg://esper:esper@127.0.0.1:15432/esper
# `down` stops it and deletes the cluster. The server is tuned for tests (fsync off).
#
# Environment (defaults):
#   ESPER_PG_PORT=15432
#   ESPER_PG_START_TIMEOUT=60
#
# PostgreSQL refuses to run as root: when run as root the server runs as the `postgres` system
# user (created by the package) via setpriv. If that user cannot reach .cache/infra/postgres
# (e.g. a checkout under /root), the cluster lives in /tmp/esper-postgres-<hash> instead.
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT="${ESPER_PG_PORT:-15432}"
PG_USER=esper
PG_PASSWORD=esper
PG_DB=esper

SVC=postgres
SVC_ADDR="$ESPER_HOST:$PORT"
STATE="$(state_dir postgres)"
SVC_EXE=postgres
SVC_PORTS=("$PORT")
SVC_TIMEOUT="${ESPER_PG_START_TIMEOUT:-60}"
# SIGINT is PostgreSQL's "fast" shutdown (SIGTERM would wait for every client to disconnect).
SVC_STOP_SIGNAL=INT
SVC_STOP_TIMEOUT=30

running_as_root() { [[ "$(id -u)" == 0 ]]; }

# Prefix that runs a command as the postgres user when we are root (setpriv execs: no extra process).
AS_PG=()
if running_as_root; then AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups --); fi
as_pg() { "${AS_PG[@]}" "$@"; }

# Where the cluster lives: under the state dir if the server's user can reach it.
pg_base_dir() {
    if running_as_root && id postgres >/dev/null 2>&1; then
        mkdir -p "$STATE"
        if ! as_pg test -x "$STATE" 2>/dev/null; then
            printf '/tmp/esper-postgres-%s' "$(printf '%s' "$STATE" | sha256sum | cut -c1-10)"
            return 0
        fi
    fi
    printf '%s' "$STATE"
}

pg_paths() {
    BASE="$(pg_base_dir)"
    DATA="$BASE/data"
    SOCKDIR="$BASE/run"
    SVC_MARKER="$DATA"
    # Unix socket paths are limited to ~107 bytes.
    if ((${#SOCKDIR} > 80)); then
        SOCKDIR="/tmp/esper-pg-$(printf '%s' "$STATE" | sha256sum | cut -c1-10)"
    fi
}
pg_paths
# After install-deps (which may create the postgres user) the location may change.
svc_prepare() { pg_paths; }

svc_ready() {
    local bindir
    if bindir="$(pg_bindir)"; then
        "$bindir/pg_isready" -q -h "$ESPER_HOST" -p "$PORT" -t 2 >/dev/null 2>&1
    else
        port_open "$PORT"
    fi
}

svc_wipe() {
    rm -rf "$DATA" "$SOCKDIR"
    if [[ "$BASE" != "$STATE" ]]; then rm -rf "$BASE"; fi
}

svc_start() {
    local bindir
    bindir="$(pg_bindir)" || die "postgres: initdb not found (run infra/install-deps.sh postgres)"
    mkdir -p "$DATA" "$SOCKDIR"
    chmod 700 "$DATA"
    if running_as_root; then chown -R postgres:postgres "$BASE" "$SOCKDIR"; fi
    as_pg "$bindir/initdb" -D "$DATA" -U postgres -E UTF8 --no-locale \
        --auth-local=trust --auth-host=scram-sha-256 >>"$(log_file postgres)" 2>&1 ||
        {
            log_tail "$(log_file postgres)"
            die "postgres: initdb failed"
        }
    # Throwaway test cluster: durability off, loopback only, sockets in our own directory.
    cat >>"$DATA/postgresql.conf" <<EOF

# --- esper infra/postgres.sh (throwaway cluster) ---
listen_addresses = '$ESPER_HOST'
port = $PORT
unix_socket_directories = '$SOCKDIR'
max_connections = 200
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
log_min_messages = warning
EOF
    start_daemon postgres "${AS_PG[@]}" "$bindir/postgres" -D "$DATA" -p "$PORT" -k "$SOCKDIR" -c "listen_addresses=$ESPER_HOST"
}

# Create the application role and database (first start of a fresh cluster only).
svc_post_start() {
    local bindir sql
    bindir="$(pg_bindir)" || return 1
    sql="DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  END IF;
END \$\$;"
    as_pg "$bindir/psql" -q -h "$SOCKDIR" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "$sql" || return 1
    if [[ "$(as_pg "$bindir/psql" -tAq -h "$SOCKDIR" -p "$PORT" -U postgres -d postgres \
        -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]]; then
        as_pg "$bindir/createdb" -h "$SOCKDIR" -p "$PORT" -U postgres -O "$PG_USER" "$PG_DB" || return 1
    fi
}

service_main postgres "$@"
