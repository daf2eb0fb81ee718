# guest-tests/host/lib.sh: host-side helpers for the guest test scenarios (bash).
# Not a test itself. A scenario guest-tests/host/NAME starts with
#
#     source "$(dirname "$0")/lib.sh"
#
# and then declares ports, starts vnic, boots guests and checks their verdicts. Everything it
# starts (vnic, run-vm/QEMU, host-side helpers, network namespaces, taps) is stopped or deleted
# by an EXIT trap, also when the scenario fails or is killed by SIGTERM/SIGINT.
#
# Environment (set by scripts/guest-tests; defaults when a scenario is run by hand):
#   GT_NAME   test name (default: the scenario's file name)
#   GT_LOGS   log directory (default target/guest-tests/NAME; emptied when run by hand)
#   GT_WORK   fresh work directory for sockets and scratch files (default: a new /tmp dir)
#   VNIC_BIN  the vnic binary (default target/release/vnic)
# Set by a scenario before it sources this file, for a guest image other than the default:
#   GT_IMAGE        directory with the image's vmlinuz and initramfs.cpio.gz, booted by every
#                   boot_guest (default target/guest/, images/build-guest)
#   GT_IMAGE_BUILD  the command that builds it (run from the repository; cached builds are
#                   quick); its failure fails the scenario, e.g. images/build-homa
#   GT_SKIP_REASON  the scenario found it cannot run here (e.g. HOMA_SRC not given): it is
#                   reported as SKIP with this reason before anything is built or booted
#
# Conventions:
#   fail MSG      the scenario's verdict: writes MSG to $GT_LOGS/reason and exits 1
#   pass          exits 0
# Guest consoles are in $GT_LOGS/ID.console.log, run-vm's own output in ID.run-vm.log,
# vnic's log in vnic.log, stats snapshots in stats-LABEL.json.

set -uo pipefail

GT_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
GT_NAME=${GT_NAME:-$(basename "$0")}
GT_LOGS=${GT_LOGS:-}
if [[ -z "$GT_LOGS" ]]; then
    GT_LOGS=$GT_REPO/target/guest-tests/$GT_NAME
    rm -rf "$GT_LOGS"
fi
mkdir -p "$GT_LOGS"
GT_OWN_WORK=0
if [[ -z "${GT_WORK:-}" ]]; then
    GT_WORK=$(mktemp -d "/tmp/vnic-gt-$GT_NAME.XXXXXX")
    GT_OWN_WORK=1
fi
VNIC_BIN=${VNIC_BIN:-$GT_REPO/target/release/vnic}
RUN_VM=$GT_REPO/scripts/run-vm
# Seconds a guest may run before run-vm kills it (its verdict is then rc=124).
GUEST_TIMEOUT=${GUEST_TIMEOUT:-200}

GT_T0=$(date +%s.%N)
rm -f "$GT_LOGS/reason" "$GT_LOGS/skip"

# --- output and verdict -----------------------------------------------------------
elapsed() { awk -v s="$GT_T0" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }'; }
log() { printf '[%6ss] %s\n' "$(elapsed)" "$*" >&2; }
fail() {
    log "FAIL: $*"
    [[ -s "$GT_LOGS/reason" ]] || printf '%s\n' "$*" >"$GT_LOGS/reason"
    exit 1
}
pass() { log "PASS${1:+: $*}"; exit 0; }
# skip REASON: the scenario cannot run here (something it needs is not given, e.g. HOMA_SRC):
# never a pass. Exit status 77; scripts/guest-tests reports "SKIP NAME: REASON".
skip() {
    log "SKIP: $*"
    printf '%s\n' "$*" >"$GT_LOGS/skip"
    exit 77
}
need_cmd() { local c; for c; do command -v "$c" >/dev/null || fail "host command not found: $c (run scripts/install-deps)"; done; }

# GT_VARIANT (scripts/guest-tests NAME@VARIANT): "packed" gives every guest's virtio-net-pci
# packed=on, so QEMU offers the guest VIRTIO_F_RING_PACKED and vnic drives packed rings.
GT_VARIANT=${GT_VARIANT:-}
GT_DEVICE_OPTS=()
case "$GT_VARIANT" in
    "") ;;
    packed) GT_DEVICE_OPTS=(--device-opts packed=on) ;;
    *) fail "unknown guest-test variant '$GT_VARIANT' (have: packed)" ;;
esac

# --- cleanup ----------------------------------------------------------------------
declare -a GT_BG_PIDS=() GT_NETNS=() GT_TAPS=() GUESTS=()
declare -A GUEST_PID=() GUEST_RC=()
VNIC_PID=

gt_cleanup() {
    local rc=$? id pid i ns
    trap - EXIT INT TERM
    # A failed test keeps vnic's counters as they were at the failure (drops say whether
    # vnic or a guest lost what the test missed). Best effort: the verdict stands either way.
    if ((rc != 0)) && [[ -n "$VNIC_PID" && -n "${CONTROL:-}" ]] && kill -0 "$VNIC_PID" 2>/dev/null; then
        timeout 5 "$VNIC_BIN" stats --json --control "$CONTROL" \
            >"$GT_LOGS/stats-at-failure.json" 2>/dev/null || rm -f "$GT_LOGS/stats-at-failure.json"
    fi
    # Guests: run-vm kills its QEMU when it gets SIGTERM.
    for id in "${GUESTS[@]}"; do
        pid=${GUEST_PID[$id]:-}
        [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${GT_BG_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for i in $(seq 1 30); do
        local alive=0
        for id in "${GUESTS[@]}"; do kill -0 "${GUEST_PID[$id]:-0}" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.2
    done
    for id in "${GUESTS[@]}"; do
        pid=${GUEST_PID[$id]:-}
        [[ -n "$pid" ]] && kill -KILL "$pid" 2>/dev/null
    done
    for pid in "${GT_BG_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    if [[ -n "$VNIC_PID" ]] && kill -0 "$VNIC_PID" 2>/dev/null; then
        kill -TERM "$VNIC_PID" 2>/dev/null
        for i in $(seq 1 25); do kill -0 "$VNIC_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$VNIC_PID" 2>/dev/null
    fi
    wait 2>/dev/null
    for ns in "${GT_NETNS[@]}"; do ip netns del "$ns" 2>/dev/null; done
    for i in "${GT_TAPS[@]}"; do ip link del "$i" 2>/dev/null; done
    ((GT_OWN_WORK)) && rm -rf "$GT_WORK"
    log "cleaned up (exit $rc)"
    exit "$rc"
}
trap gt_cleanup EXIT
trap 'fail "interrupted (SIGINT)"' INT
trap 'fail "terminated (SIGTERM): test ran out of time?"' TERM

# run_bg CMD...: run CMD in the background, killed at cleanup; its pid is in $!
run_bg() { "$@" & GT_BG_PIDS+=($!); }

# --- preconditions ----------------------------------------------------------------
[[ -z "${GT_SKIP_REASON:-}" ]] || skip "$GT_SKIP_REASON"
[[ $(id -u) == 0 ]] || fail "needs root (vhost-user sockets, taps, network namespaces)"
[[ -x "$VNIC_BIN" ]] || fail "vnic binary missing: $VNIC_BIN (cargo build --release)"
if [[ -n "${GT_IMAGE_BUILD:-}" ]]; then
    log "building the guest image: $GT_IMAGE_BUILD (log: $GT_LOGS/image-build.log)"
    (cd "$GT_REPO" && $GT_IMAGE_BUILD) >"$GT_LOGS/image-build.log" 2>&1 \
        || fail "$GT_IMAGE_BUILD failed: $(grep -a -m1 'error:' "$GT_LOGS/image-build.log" || tail -n 1 "$GT_LOGS/image-build.log")"
fi
GT_IMAGE_OPTS=()
if [[ -n "${GT_IMAGE:-}" ]]; then
    GT_IMAGE_OPTS=(--kernel "$GT_IMAGE/vmlinuz" --initrd "$GT_IMAGE/initramfs.cpio.gz")
else
    GT_IMAGE=$GT_REPO/target/guest
fi
[[ -r $GT_IMAGE/vmlinuz && -r $GT_IMAGE/initramfs.cpio.gz ]] \
    || fail "guest image missing in $GT_IMAGE (${GT_IMAGE_BUILD:-images/build-guest})"
need_cmd jq ip qemu-system-x86_64

# --- ports and vnic -----------------------------------------------------------------
# add_port ID QUEUES MAC MTU [ATTACH] [KEYS]: declare a vnic port; its socket is
# $GT_WORK/ID.sock. KEYS: more --port keys, comma-separated (e.g. "pcap=FILE,tap_offloads=off").
declare -A P_SOCK=() P_Q=() P_MAC=() P_MTU=() P_ATTACH=() P_KEYS=()
declare -a PORTS=()
add_port() {
    local id=$1
    P_SOCK[$id]=$GT_WORK/$id.sock P_Q[$id]=$2 P_MAC[$id]=$3 P_MTU[$id]=$4 P_ATTACH[$id]=${5:-switch}
    P_KEYS[$id]=${6:-}
    PORTS+=("$id")
}
CONTROL=$GT_WORK/control.sock
VNIC_STARTS=0
# More `vnic serve` options for start_vnic (e.g. VNIC_OPTS=(--poll-cpus 0)).
VNIC_OPTS=()

# start_vnic: start `vnic serve` with every declared port, wait until it answers `vnic stats`.
start_vnic() {
    local id args=() i
    for id in "${PORTS[@]}"; do
        args+=(--port "socket=${P_SOCK[$id]},queues=${P_Q[$id]},mac=${P_MAC[$id]},mtu=${P_MTU[$id]},attach=${P_ATTACH[$id]}${P_KEYS[$id]:+,${P_KEYS[$id]}}")
    done
    VNIC_STARTS=$((VNIC_STARTS + 1))
    printf '=== vnic start #%d: %s serve %s %s --control %s\n' "$VNIC_STARTS" "$VNIC_BIN" "${args[*]}" "${VNIC_OPTS[*]}" "$CONTROL" >>"$GT_LOGS/vnic.log"
    log "starting vnic (#$VNIC_STARTS): ${args[*]} ${VNIC_OPTS[*]}"
    "$VNIC_BIN" serve "${args[@]}" "${VNIC_OPTS[@]}" --control "$CONTROL" >>"$GT_LOGS/vnic.log" 2>&1 </dev/null &
    VNIC_PID=$!
    for i in $(seq 1 100); do
        kill -0 "$VNIC_PID" 2>/dev/null || fail "vnic exited at start-up: $(tail -n 1 "$GT_LOGS/vnic.log")"
        if "$VNIC_BIN" stats --json --control "$CONTROL" >/dev/null 2>&1; then
            for id in "${PORTS[@]}"; do
                [[ -S ${P_SOCK[$id]} ]] || fail "vnic answers stats but port socket ${P_SOCK[$id]} is missing"
            done
            log "vnic running (pid $VNIC_PID)"
            return 0
        fi
        sleep 0.1
    done
    fail "vnic did not answer 'vnic stats' within 10 s of starting"
}

# kill_vnic SIGNAL: send SIGNAL to vnic and wait for it to end.
kill_vnic() {
    local sig=${1:-TERM} i
    [[ -n "$VNIC_PID" ]] || return 0
    log "sending SIG$sig to vnic (pid $VNIC_PID)"
    kill "-$sig" "$VNIC_PID" 2>/dev/null
    for i in $(seq 1 50); do kill -0 "$VNIC_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$VNIC_PID" 2>/dev/null && fail "vnic (pid $VNIC_PID) still running 5 s after SIG$sig"
    { wait "$VNIC_PID"; } 2>/dev/null
    VNIC_PID=
}

# stop_vnic: SIGTERM (clean shutdown) and check the log for panics.
stop_vnic() {
    kill_vnic TERM
    check_vnic_log
}
check_vnic_log() {
    if grep -q 'panicked at' "$GT_LOGS/vnic.log"; then
        fail "vnic panicked: $(grep -m1 'panicked at' "$GT_LOGS/vnic.log")"
    fi
}

# vnic_stats_json: the daemon's `vnic stats --json`
vnic_stats_json() { "$VNIC_BIN" stats --json --control "$CONTROL"; }
# save_stats LABEL: save stats to $GT_LOGS/stats-LABEL.json (and print the file name)
save_stats() {
    local f=$GT_LOGS/stats-$1.json
    vnic_stats_json >"$f" 2>>"$GT_LOGS/vnic.log" || fail "vnic stats failed ($1)"
    echo "$f"
}
# check_ring_format ID...: waits until the guests on ports ID... are connected and checks
# that each negotiated the ring format of the variant (RING_PACKED iff GT_VARIANT=packed).
check_ring_format() {
    local id j names i
    for id; do
        for i in $(seq 1 600); do
            j=$(vnic_stats_json | jq -e --arg s "${P_SOCK[$id]}" \
                '.ports[] | select(.socket == $s and .link_up and (.feature_names | index("VERSION_1")))') && break
            sleep 0.25
        done
        [[ -n "$j" ]] || fail "port $id: no guest connected within 150 s"
        names=$(jq -r '.feature_names | join(" ")' <<<"$j")
        if [[ "$GT_VARIANT" == packed ]]; then
            grep -qw RING_PACKED <<<"$names" || fail "port $id: packed=on, but RING_PACKED not negotiated ($names)"
        else
            grep -qw RING_PACKED <<<"$names" && fail "port $id: RING_PACKED negotiated without packed=on ($names)"
        fi
        log "port $id: ring format ${GT_VARIANT:-split} ($names)"
    done
}
# port_json FILE ID: the port object of port ID from a stats file
port_json() { jq -e --arg s "${P_SOCK[$2]}" '.ports[] | select(.socket == $s)' "$1"; }

# --- guests ---------------------------------------------------------------------------
# boot_guest ID TEST ARGS [RUN-VM-OPTIONS...]: boot a guest on port ID (same queues, MAC and
# MTU as the port) running /guest-tests/TEST with vnic.args ARGS, in the background.
boot_guest() {
    local id=$1 test=$2 args=$3; shift 3
    local cmd=("$RUN_VM" --socket "${P_SOCK[$id]}" --queues "${P_Q[$id]}" --mac "${P_MAC[$id]}"
               --mtu "${P_MTU[$id]}" --test "$test" --args "$args" --timeout "$GUEST_TIMEOUT"
               --log "$GT_LOGS/$id.console.log" "${GT_IMAGE_OPTS[@]}" "${GT_DEVICE_OPTS[@]}" "$@")
    log "booting guest $id: ${cmd[*]}"
    "${cmd[@]}" >"$GT_LOGS/$id.run-vm.log" 2>&1 </dev/null &
    GUEST_PID[$id]=$!
    GUESTS+=("$id")
}

guest_running() { kill -0 "${GUEST_PID[$1]}" 2>/dev/null; }

# guest_reason ID: why guest ID failed, from its console and run-vm output
guest_reason() {
    local id=$1 rc=${GUEST_RC[$1]:-?} msg
    msg=$(tr -d '\r' 2>/dev/null <"$GT_LOGS/$id.console.log" | grep -a -E '\] (FAIL|SKIP): ' | tail -n 1 | sed -E 's/^.*\] (FAIL|SKIP): /\1: /')
    case "$rc" in
        124) echo "guest $id timed out after ${GUEST_TIMEOUT}s${msg:+ ($msg)}" ;;
        125) echo "guest $id: QEMU ended without a verdict ($(grep -a -m1 -E '^run-vm: QEMU exited' "$GT_LOGS/$id.run-vm.log" | sed 's/^run-vm: //'); see $id.run-vm.log)" ;;
        130|143) echo "guest $id: run-vm was interrupted (status $rc)" ;;
        77) echo "guest $id skipped (never acceptable here): ${msg:-no message}" ;;
        *) echo "guest $id rc=$rc: ${msg:-no FAIL line (see $id.console.log)}" ;;
    esac
}

# wait_guest ID: wait for guest ID's run-vm to end; sets GUEST_RC[ID]; returns the rc.
wait_guest() {
    local id=$1 rc=0
    [[ -n "${GUEST_RC[$id]:-}" ]] && return "${GUEST_RC[$id]}"   # already reaped
    wait "${GUEST_PID[$id]}" || rc=$?
    GUEST_RC[$id]=$rc
    log "guest $id ended: rc=$rc"
    return "$rc"
}

# wait_guests_pass ID...: wait for all; fail with the reasons of those that did not pass.
wait_guests_pass() {
    local id reasons=()
    for id; do
        wait_guest "$id" || reasons+=("$(guest_reason "$id")")
    done
    ((${#reasons[@]} == 0)) || fail "$(IFS=';'; echo "${reasons[*]}" | sed 's/;/; /g')"
}

# console ID: the console log of guest ID without carriage returns
console() { tr -d '\r' 2>/dev/null <"$GT_LOGS/$1.console.log"; }

# wait_console ID REGEX SECS: wait until guest ID's console has a line matching REGEX.
# Fails the scenario if the guest ends first, another guest ends with a failure, or SECS pass.
wait_console() {
    local id=$1 re=$2 secs=$3 end other
    end=$(($(date +%s) + secs))
    while :; do
        console "$id" | grep -a -q -E "$re" && return 0
        if ! guest_running "$id"; then
            wait_guest "$id"
            fail "guest $id ended before printing /$re/: $(guest_reason "$id")"
        fi
        # Another guest that failed is the reason (its peer may otherwise wait a long time).
        for other in "${GUESTS[@]}"; do
            [[ $other != "$id" && -z "${GUEST_RC[$other]:-}" ]] && ! guest_running "$other" || continue
            wait_guest "$other" || fail "guest $other failed while guest $id had not printed /$re/: $(guest_reason "$other")"
        done
        (($(date +%s) < end)) || fail "guest $id: no /$re/ on its console within ${secs}s"
        sleep 0.2
    done
}
# console_value ID KEY: the rest of the last console line starting with "KEY "
console_value() { console "$1" | grep -a -E "^$2 " | tail -n 1 | cut -d' ' -f2-; }

# --- network namespaces and taps ---------------------------------------------------------
# add_netns NAME: create a network namespace (deleted at cleanup)
add_netns() {
    ip netns add "$1" || fail "cannot create network namespace $1"
    GT_NETNS+=("$1")
    echo "$1" >>"$GT_WORK/netns"
    ip -n "$1" link set lo up
}
# register_tap NAME: delete tap NAME at cleanup if it still exists in the root namespace
register_tap() { GT_TAPS+=("$1"); echo "$1" >>"$GT_WORK/taps"; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

log "test $GT_NAME: logs in $GT_LOGS, work dir $GT_WORK"

# --- helpers for the offload tests (offload-on, offload-mixed, offload-tap-on/-off) -------
# pcap_tcp_sizes FILE LIMIT [FILTER...]: sizes of the frames in pcap FILE that match the
# tcpdump FILTER (default "tcp"): "frames=N max=BYTES over=N big=N huge=N", over = longer
# than LIMIT (MTU + 14), big = 20000 bytes or more, huge = 60000 or more (full frame lengths).
pcap_tcp_sizes() {
    local f=$1 lim=$2; shift 2
    (($#)) || set -- tcp
    need_cmd tcpdump
    tcpdump -r "$f" -nn -e -t "$@" 2>/dev/null | awk -v lim="$lim" '
        match($0, /ethertype [^,]*, length [0-9]+/) {
            s = substr($0, RSTART, RLENGTH); sub(/.* length /, "", s); l = s + 0
            n++; if (l > max) max = l
            if (l > lim) over++; if (l >= 20000) big++; if (l >= 60000) huge++
        }
        END { printf "frames=%d max=%d over=%d big=%d huge=%d\n", n, max, over, big, huge }'
}
# kv STRING KEY: the value of KEY=VALUE in a space-separated STRING
kv() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }

# csum_errors [NS]: the checksum error counters of the root namespace or of netns NS,
# "Icmp=N IpExt=N Tcp=N Udp=N UdpLite=N" (InCsumErrors in /proc/net/snmp and /proc/net/netstat)
csum_errors() {
    local cmd=(cat /proc/net/snmp /proc/net/netstat)
    [[ -n "${1:-}" ]] && cmd=(ip netns exec "$1" "${cmd[@]}")
    "${cmd[@]}" | awk '
        { p = $1; sub(/:$/, "", p) }
        !(p in hdr) { hdr[p] = $0; next }
        {
            n = split(hdr[p], names, " ")
            for (i = 2; i <= n; i++) if (names[i] == "InCsumErrors") v[p] = $i
        }
        END { for (k in v) print k "=" v[k] }' | sort | tr '\n' ' ' | sed 's/ $//'
}
# csum_error_total "Icmp=N Tcp=N ...": the sum of the counts
csum_error_total() { tr ' ' '\n' <<<"$1" | awk -F= '{ s += $2 } END { print s + 0 }'; }

# port_offload FILE ID KEY: the sum over port ID's queue pairs of .offload.KEY (tx_gso, rx_gso,
# rx_segments, rx_coalesced, tap_segments) in stats FILE
port_offload() { jq -e --arg s "${P_SOCK[$2]}" --arg k "$3" '[.ports[] | select(.socket == $s) | .queues[].offload[$k]] | add' "$1"; }
# port_features FILE ID: port ID's negotiated feature names, space-separated
port_features() { jq -r --arg s "${P_SOCK[$2]}" '.ports[] | select(.socket == $s) | .feature_names | join(" ")' "$1"; }
# port_bad_drops FILE ID: "reason=N ..." for every drop counter > 0 of port ID other than
# port_down/queue_disabled (frames sent before a guest was up)
port_bad_drops() {
    jq -r --arg s "${P_SOCK[$2]}" '[.ports[] | select(.socket == $s) | .queues[].drops | to_entries[]
        | select(.value > 0 and .key != "port_down" and .key != "queue_disabled")]
        | group_by(.key) | map("\(.[0].key)=\(map(.value) | add)") | join(" ")' "$1"
}
# port_offload_summary FILE ID: one line for the log
port_offload_summary() {
    local k out=""
    for k in tx_gso rx_gso rx_segments rx_coalesced tap_segments; do out+="$k=$(port_offload "$1" "$2" "$k") "; done
    echo "${out% }"
}
# The offload features vnic negotiates with a Linux 6.1 guest whose QEMU device keeps its
# defaults (6.1's virtio_net has no USO; vnic offers no UFO).
LINUX_OFFLOAD_FEATURES=(CSUM GUEST_CSUM HOST_TSO4 HOST_TSO6 HOST_ECN GUEST_TSO4 GUEST_TSO6 GUEST_ECN)
ALL_OFFLOAD_FEATURES=(CSUM GUEST_CSUM HOST_TSO4 HOST_TSO6 HOST_ECN HOST_UFO HOST_USO GUEST_TSO4
                      GUEST_TSO6 GUEST_ECN GUEST_UFO GUEST_USO4 GUEST_USO6)
# expect_offload_features FILE ID all|none: port ID negotiated every one of
# LINUX_OFFLOAD_FEATURES, or none of ALL_OFFLOAD_FEATURES
expect_offload_features() {
    local feats f
    feats=" $(port_features "$1" "$2") "
    log "port $2 negotiated: ${feats# }"
    case "$3" in
        all) for f in "${LINUX_OFFLOAD_FEATURES[@]}"; do
                 [[ $feats == *" $f "* ]] || fail "port $2 did not negotiate $f (has:$feats)"
             done ;;
        none) for f in "${ALL_OFFLOAD_FEATURES[@]}"; do
                 [[ $feats != *" $f "* ]] || fail "port $2 negotiated $f although its guest's device has offloads off (has:$feats)"
             done ;;
    esac
}
# pcap_csum_check FILE FILTER...: verify with tcpdump -vv the IPv4, TCP and UDP checksums of
# the frames in FILE matching FILTER (which must be captured whole): "checked=N bad=N"
# (checked = TCP/UDP checksums tcpdump verified; bad = wrong TCP/UDP or IP header checksums).
# A frame carrying a partial checksum (an offloaded one) counts as bad: use it only where every
# checksum must be complete.
pcap_csum_check() {
    local f=$1; shift
    need_cmd tcpdump
    tcpdump -r "$f" -nn -vv "$@" 2>/dev/null | awk '
        /cksum 0x[0-9a-f]+ \(correct\)/ || /udp sum ok/ { ok++ }
        /cksum 0x[0-9a-f]+ \(incorrect/ || /bad udp cksum/ { bad++ }
        /bad cksum/ { bad++ }
        END { printf "checked=%d bad=%d\n", ok + bad, bad }'
}
