#!/usr/bin/env bash
# Start, stop or inspect Esper's local services (all on 127.0.0.1, state under .cache/infra/).
#
#   bash infra/infra.sh up     [service...]   install what is missing, start, wait until ready
#   bash infra/infra.sh down   [service...]   stop and delete throwaway data
#   bash infra/infra.sh status [service...]   one line each; exit 0 only if all are running
#
# Services: pulsar postgres s3 prometheus (default: all). `up` and `down` handle the services in
# parallel; the exit status is non-zero if any of them failed.
#
#   service      endpoint (default)                              port variable
#   pulsar       pulsar://127.0.0.1:16650, http://127.0.0.1:18080  ESPER_PULSAR_PORT, ESPER_PULSAR_HTTP_PORT
#   postgres     postgresql+psycopg://esper:esper@127.0.0.1:15432/esper   ESPER_PG_PORT
#   s3           http://127.0.0.1:8333 (esper / esper-secret)      ESPER_S3_PORT
#   prometheus   http://127.0.0.1:19090                            ESPER_PROM_PORT
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ALL=(pulsar postgres s3 prometheus)

usage() {
    warn "usage: $(basename "$0") up|down|status [${ALL[*]}]"
    exit 2
}

action="${1:-}"
[[ "$action" == up || "$action" == down || "$action" == status ]] || usage
shift
services=("$@")
((${#services[@]})) || services=("${ALL[@]}")
for s in "${services[@]}"; do
    [[ " ${ALL[*]} " == *" $s "* ]] || die "infra: unknown service '$s' (known: ${ALL[*]})"
done

case "$action" in
    status)
        rc=0
        for s in "${services[@]}"; do
            bash "$ESPER_INFRA_DIR/$s.sh" status || rc=3
        done
        exit "$rc"
        ;;
    up)
        start="$(now_s)"
        # Install first, in one process: apt and Maven must not run concurrently.
        bash "$ESPER_INFRA_DIR/install-deps.sh" --quiet "${services[@]}"
        export ESPER_INFRA_DEPS_CHECKED=1
        ;;
    down)
        start="$(now_s)"
        ;;
esac

declare -A pids=()
for s in "${services[@]}"; do
    bash "$ESPER_INFRA_DIR/$s.sh" "$action" &
    pids[$s]=$!
done
failed=()
for s in "${services[@]}"; do
    wait "${pids[$s]}" || failed+=("$s")
done
if ((${#failed[@]})); then
    die "infra: $action failed for: ${failed[*]}"
fi
say "infra: $action done for ${services[*]} in $(($(now_s) - start))s"
