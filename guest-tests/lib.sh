# guest-tests/lib.sh: helpers for guest tests (POSIX sh; /bin/sh in the guest is dash).
# Not a test itself.
#
# Use from a test:   . "$(dirname "$0")/lib.sh"
#
# Contract (see docs/guests.md): /init runs /guest-tests/NAME with the items of
# vnic.args as positional arguments, KEY=VALUE items also exported as
# VNIC_ARG_KEY; the test's exit status is the verdict (0 pass, 77 skip by
# convention, anything else fail). The working directory is /tmp.

VNIC_TEST_NAME=${VNIC_TEST:-$(basename "$0")}

# --- output ----------------------------------------------------------------
log()  { printf '[%s] %s\n' "$VNIC_TEST_NAME" "$*"; }
warn() { printf '[%s] WARNING: %s\n' "$VNIC_TEST_NAME" "$*" >&2; }
fail() { printf '[%s] FAIL: %s\n' "$VNIC_TEST_NAME" "$*" >&2; exit 1; }
skip() { printf '[%s] SKIP: %s\n' "$VNIC_TEST_NAME" "$*"; exit 77; }
pass() { printf '[%s] PASS%s\n' "$VNIC_TEST_NAME" "${1:+: $*}"; exit 0; }
# run CMD...: log the command, run it, return its status
run()  { log "+ $*"; "$@"; }

# --- arguments ---------------------------------------------------------------
# arg KEY [DEFAULT]: value of vnic.args item KEY=..., else DEFAULT, else fail.
# KEY is matched case-insensitively ('-' and '.' count as '_').
arg() {
    _k=$(echo "$1" | tr 'a-z.-' 'A-Z__')
    eval "_v=\${VNIC_ARG_$_k-}"
    eval "_set=\${VNIC_ARG_$_k+x}"
    if [ -n "$_set" ]; then printf '%s\n' "$_v"; return 0; fi
    if [ $# -ge 2 ]; then printf '%s\n' "$2"; return 0; fi
    fail "missing vnic.args item '$1=...'"
}
# has_arg KEY: true if KEY=... was given
has_arg() {
    _k=$(echo "$1" | tr 'a-z.-' 'A-Z__')
    eval "[ -n \"\${VNIC_ARG_$_k+x}\" ]"
}

# --- commands --------------------------------------------------------------
has_cmd()     { command -v "$1" >/dev/null 2>&1; }
require_cmd() { for _c; do has_cmd "$_c" || fail "command not found: $_c"; done; }

# retry COUNT DELAY CMD...: run CMD until it succeeds, at most COUNT times.
retry() {
    _n=$1 _d=$2; shift 2
    _i=0
    while [ "$_i" -lt "$_n" ]; do
        "$@" && return 0
        _i=$((_i + 1))
        [ "$_i" -lt "$_n" ] && sleep "$_d"
    done
    return 1
}

# wait_until TIMEOUT_SECS CMD...: poll CMD every 0.1 s until it succeeds.
wait_until() {
    _t=$1; shift
    _end=$(( $(cut -d. -f1 /proc/uptime) + _t ))
    while ! "$@"; do
        [ "$(cut -d. -f1 /proc/uptime)" -ge "$_end" ] && return 1
        sleep 0.1
    done
    return 0
}

# --- devices and interfaces -----------------------------------------------------
# virtio_net_count: number of virtio devices with device id 1 (network card)
virtio_net_count() {
    _c=0
    for _d in /sys/bus/virtio/devices/*; do
        [ -r "$_d/device" ] || continue
        [ "$(cat "$_d/device")" = 0x0001 ] && _c=$((_c + 1))
    done
    echo "$_c"
}
# nic_driver IFACE: kernel driver bound to the interface (e.g. virtio_net)
nic_driver() {
    _l=$(readlink "/sys/class/net/$1/device/driver" 2>/dev/null) || return 1
    basename "$_l"
}
# virtio_ifaces: names of interfaces driven by virtio_net, one per line
virtio_ifaces() {
    for _i in /sys/class/net/*; do
        _i=$(basename "$_i")
        [ "$(nic_driver "$_i" 2>/dev/null)" = virtio_net ] && echo "$_i"
    done
    return 0
}
_first_virtio_iface() { _fi=$(virtio_ifaces | head -n 1); [ -n "$_fi" ]; }
# wait_for_iface [TIMEOUT]: wait for a virtio_net interface, print its name
wait_for_iface() {
    wait_until "${1:-10}" _first_virtio_iface || return 1
    echo "$_fi"
}
# link_is_up IFACE: administratively up and carrier present
link_is_up() {
    [ "$(cat "/sys/class/net/$1/carrier" 2>/dev/null)" = 1 ]
}
# wait_for_link IFACE [TIMEOUT]: bring IFACE up and wait for carrier
wait_for_link() {
    ip link set dev "$1" up || return 1
    wait_until "${2:-10}" link_is_up "$1"
}
# setup_ip IFACE CIDR [TIMEOUT]: add the address, bring the link up, wait for carrier
setup_ip() {
    ip addr add "$2" dev "$1" || return 1
    wait_for_link "$1" "${3:-10}"
}
# wait_for_ping PEER [TIMEOUT]: wait until PEER answers one ping
wait_for_ping() {
    wait_until "${2:-10}" ping -c 1 -W 1 "$1" >/dev/null 2>&1
}
# iface_mac IFACE / iface_mtu IFACE
iface_mac() { cat "/sys/class/net/$1/address"; }
iface_mtu() { cat "/sys/class/net/$1/mtu"; }
# queue_count IFACE: number of rx queues the kernel created
queue_count() { ls -d "/sys/class/net/$1/queues/rx-"* 2>/dev/null | wc -l; }
# virtio_features IFACE: the negotiated virtio feature bits as a 0/1 string (bit 0 first)
virtio_features() {
    _l=$(readlink -f "/sys/class/net/$1/device") || return 1
    cat "$_l/features"
}
# has_feature IFACE BIT: true if virtio feature BIT was negotiated
has_feature() {
    _f=$(virtio_features "$1") || return 1
    [ "$(echo "$_f" | cut -c$(($2 + 1)))" = 1 ]
}
# stat IFACE NAME: a counter from /sys/class/net/IFACE/statistics
iface_stat() { cat "/sys/class/net/$1/statistics/$2"; }

# expect_eq ACTUAL EXPECTED WHAT
expect_eq() {
    [ "$1" = "$2" ] || fail "$3: got '$1', expected '$2'"
}

# --- helpers for the issue-3 guest tests ----------------------------------------------
# (used by negotiation, interrupts, switch, tap, reconnect, queue-change, demo)

# now: seconds since boot, with decimals
now() { cut -d' ' -f1 /proc/uptime; }

# sync_point NAME [HOLD]: tell the host scenario (which watches the console) that the guest
# reached NAME, then stay there HOLD seconds (default 3) so the host can look at vnic while
# this guest's state still holds (e.g. its queues are still enabled).
sync_point() {
    printf 'VNIC-SYNC %s\n' "$1"
    sleep "${2:-3}"
}

# virtio_dev IFACE: the virtio device name behind IFACE (e.g. virtio1)
virtio_dev() { basename "$(readlink -f "/sys/class/net/$1/device")"; }

# irq_count NAME: total count over all CPUs of the /proc/interrupts line whose name is NAME
# (empty if there is no such line)
irq_count() {
    awk -v n="$1" '
        NR == 1 { ncpu = NF; next }
        $NF == n { s = 0; for (i = 2; i <= ncpu + 1; i++) s += $i; print s; found = 1 }
    ' /proc/interrupts
}

# channels IFACE: "MAX CURRENT" combined channels from ethtool -l
channels() {
    ethtool -l "$1" 2>/dev/null | awk '/^Combined:/ { v[++n] = $2 } END { print v[1], v[2] }'
}
# set_channels IFACE N: ethtool -L IFACE combined N and check that it took
set_channels() {
    ethtool -L "$1" combined "$2" || fail "ethtool -L $1 combined $2 failed"
    _cur=$(channels "$1" | cut -d' ' -f2)
    [ "$_cur" = "$2" ] || fail "after ethtool -L $1 combined $2, ethtool -l says current combined $_cur"
}

# iperf_json_intervals FILE: one line per interval of an iperf3 --json result:
# "START END BYTES [REVERSE_BYTES]" (REVERSE_BYTES only with --bidir)
iperf_json_intervals() {
    awk '
        /^\t"intervals":/ { inint = 1; next }
        /^\t"end":/ { inint = 0 }
        !inint { next }
        /"sum":[ \t]*\{/ { insum = 1; rev = 0; next }
        /"sum_bidir_reverse":[ \t]*\{/ { insum = 1; rev = 1; next }
        insum && /"start":/ { v = $2; gsub(/[^0-9.]/, "", v); if (!rev) st = v }
        insum && /"end":/ { v = $2; gsub(/[^0-9.]/, "", v); if (!rev) en = v }
        insum && /"bytes":/ {
            v = $2; gsub(/[^0-9]/, "", v)
            if (rev) { rb[n] = v } else { n++; s[n] = st; e[n] = en; b[n] = v }
        }
        insum && /^\t*\}/ { insum = 0 }
        END { for (i = 1; i <= n; i++) print s[i], e[i], b[i], rb[i] }
    ' "$1"
}
# iperf_json_value FILE SECTION KEY: first numeric KEY inside "SECTION": { ... } of the
# "end" object (e.g. iperf_json_value f sum lost_packets)
iperf_json_value() {
    awk -v sec="\"$2\":" -v key="\"$3\":" '
        /^\t"end":/ { inend = 1 }
        inend && index($0, sec) && /\{/ { insec = 1; next }
        insec && index($0, key) == 0 && /^\t*\}/ { insec = 0 }
        insec && $1 == key { v = $2; gsub(/[^0-9.e+-]/, "", v); print v; exit }
    ' "$1"
}
# iperf_error FILE: the "error" string of an iperf3 --json result, if any
iperf_error() { sed -n 's/^\t"error":[ \t]*"\(.*\)".*/\1/p' "$1"; }

# check_iperf_json FILE WHAT: fail unless the run has no error, at least one interval and
# every interval (each direction with --bidir) moved bytes; logs the per-interval rates.
check_iperf_json() {
    _e=$(iperf_error "$1")
    [ -z "$_e" ] || fail "$2: iperf3 error: $_e"
    iperf_json_intervals "$1" >/tmp/intervals.$$
    _n=$(wc -l </tmp/intervals.$$)
    [ "$_n" -gt 0 ] || fail "$2: no intervals in iperf3 output"
    # A last interval shorter than 0.5 s is the tail after the end of the test: ignore it.
    _last=$(tail -n 1 /tmp/intervals.$$)
    if [ "$_n" -gt 1 ] && awk -v l="$_last" 'BEGIN { split(l, f, " "); exit !(f[2] - f[1] < 0.5) }'; then
        sed -i '$d' /tmp/intervals.$$
    fi
    while read -r _s _en _b _rb; do
        log "$2: $(awk -v s="$_s" -v e="$_en" -v b="$_b" -v r="$_rb" 'BEGIN {
            d = e - s; if (d <= 0) d = 1
            printf "%5.2f-%5.2fs %8.2f Mbit/s", s, e, b * 8 / d / 1e6
            if (r != "") printf ", reverse %8.2f Mbit/s", r * 8 / d / 1e6 }')"
        [ "$_b" -gt 0 ] || fail "$2: interval ${_s}-${_en}s moved 0 bytes (stall)"
        [ -z "$_rb" ] || [ "$_rb" -gt 0 ] || fail "$2: interval ${_s}-${_en}s moved 0 bytes in reverse (stall)"
    done </tmp/intervals.$$
    rm -f /tmp/intervals.$$
}

# --- payload integrity (vnic-stream, a static tool of this repo: guest-tests/tools) ------
VNIC_STREAM_PORT=5310
# stream_serve: start a vnic-stream server in the background (log in /tmp/stream-server.log)
stream_serve() {
    require_cmd vnic-stream
    vnic-stream serve --listen "[::]:$VNIC_STREAM_PORT" >/tmp/stream-server.log 2>&1 &
}
# stream_check PEER BYTES STREAMS: BYTES on each of STREAMS TCP connections each way between
# this guest and PEER's vnic-stream server, every byte compared with what was sent (iperf3
# never looks at the bytes). Fails on a wrong, missing or stalled byte.
stream_check() {
    require_cmd vnic-stream
    _out=$(vnic-stream run --to "$1:$VNIC_STREAM_PORT" --bytes "$2" --streams "$3" --dir both \
           2>/tmp/stream-client.log)
    _rc=$?
    sed 's/^/    /' /tmp/stream-client.log
    log "$_out"
    [ "$_rc" = 0 ] || fail "vnic-stream with $1: $(grep -m1 -E 'FAILED|vnic-stream: [a-z]' /tmp/stream-client.log)"
}

# iperf_client OUT RETRIES ARGS...: run "iperf3 --json ARGS" until it connects (the server may
# not be up yet), at most RETRIES times 1 s apart; result in OUT. Fails on other errors.
iperf_client() {
    _out=$1 _tries=$2; shift 2
    _i=0
    while :; do
        _i=$((_i + 1))
        timeout 120 iperf3 --json "$@" >"$_out" 2>/tmp/iperf.err
        _rc=$?
        _e=$(iperf_error "$_out")
        if [ "$_rc" = 0 ] && [ -z "$_e" ]; then return 0; fi
        case "$_e" in
            *"unable to connect"*|*"Connection refused"*|*"server is busy"*)
                [ "$_i" -lt "$_tries" ] || fail "iperf3 $*: $_e (after $_i tries)"
                sleep 1 ;;
            *) fail "iperf3 $* (rc $_rc): ${_e:-$(cat /tmp/iperf.err)}" ;;
        esac
    done
}

# wait_peer PEER SECS: wait until PEER answers ping (the other guest may still be booting)
wait_peer() {
    log "waiting for $1 to answer ping (up to ${2}s)"
    wait_for_ping "$1" "$2" || fail "$1 does not answer ping after ${2}s"
    log "$1 answers ping"
}

# net_up IFACE CIDR MTU: configure the NIC (address, link up, carrier) and check its MTU
net_up() {
    setup_ip "$1" "$2" 20 || fail "$1: no carrier 20 s after link up"
    [ -z "${3:-}" ] || expect_eq "$(iface_mtu "$1")" "$3" "$1 MTU"
    log "$1 up: $2 mtu $(iface_mtu "$1") mac $(iface_mac "$1") channels $(channels "$1")"
}

# ping_ok PEER COUNT [PING-OPTIONS...]: COUNT pings 0.2 s apart, all answered
ping_ok() {
    _p=$1 _c=$2; shift 2
    _out=$(ping -c "$_c" -i 0.2 -W 2 "$@" "$_p" 2>&1)
    _rx=$(printf '%s\n' "$_out" | sed -n 's/.* \([0-9][0-9]*\) received.*/\1/p')
    log "ping${*:+ $*} $_p: ${_rx:-0}/$_c answered ($(printf '%s\n' "$_out" | grep -E '^rtt|^round-trip' || true))"
    [ "${_rx:-0}" = "$_c" ]
}

# signal_done PEER [PORT]: tell PEER (waiting in wait_done) that we are finished
signal_done() {
    retry 30 1 sh -c "echo done | nc -w 5 $1 ${2:-5999}" || fail "could not tell $1 that we are done"
}
# wait_done [SECS] [PORT]: wait until the peer calls signal_done (TCP connection on PORT)
wait_done() {
    timeout "${1:-150}" nc -l -p "${2:-5999}" >/tmp/done.msg 2>/dev/null
    grep -q done /tmp/done.msg || fail "the peer did not report done within ${1:-150}s"
}

# --- helpers for the issue-4 offload guest tests -----------------------------------------
# (used by offload: guest-tests/host/offload-on, offload-mixed, offload-tap-on/-off)

# csum_errors: the kernel's checksum error counters, "Icmp=N IpExt=N Tcp=N Udp=N UdpLite=N"
# (InCsumErrors of /proc/net/snmp and /proc/net/netstat; what `nstat` calls TcpInCsumErrors,
# UdpInCsumErrors, IcmpInCsumErrors, IpExtInCsumErrors).
csum_errors() {
    cat /proc/net/snmp /proc/net/netstat | awk '
        { p = $1; sub(/:$/, "", p) }
        !(p in hdr) { hdr[p] = $0; next }
        {
            n = split(hdr[p], names, " ")
            for (i = 2; i <= n; i++) if (names[i] == "InCsumErrors") v[p] = $i
        }
        END { s = ""; for (k in v) s = s k "=" v[k] "\n"; printf "%s", s }' | sort | tr '\n' ' ' | sed 's/ $//'
}
# csum_error_total "Icmp=N Tcp=N ...": the sum of the counts
csum_error_total() { printf '%s\n' "$1" | tr ' ' '\n' | awk -F= '{ s += $2 } END { print s + 0 }'; }

# ethtool_feature IF NAME: "on" or "off" (the state ethtool -k shows for NAME, without [fixed])
ethtool_feature() { ethtool -k "$1" 2>/dev/null | awk -v n="$2:" '$1 == n { print $2; exit }'; }

# rx_capture_start IF FILE: tcpdump the TCP frames IF receives (-Q in; 128-byte snaplen, the
# frame's full length is kept in the record) into FILE, in the background; waits until it
# listens. rx_capture_stop: stops it (its "captured/dropped" counts are logged).
rx_capture_start() {
    tcpdump -i "$1" -Q in -nn -s 128 -U -Z root -w "$2" tcp >/tmp/rx-capture.err 2>&1 &
    _cap_pid=$!
    wait_until 10 grep -q 'listening on' /tmp/rx-capture.err \
        || fail "tcpdump on $1 did not start: $(cat /tmp/rx-capture.err)"
}
rx_capture_stop() {
    kill -INT "$_cap_pid" 2>/dev/null
    wait "$_cap_pid" 2>/dev/null
    log "tcpdump: $(grep -E 'captured|dropped by kernel' /tmp/rx-capture.err | tr '\n' ' ')"
    RX_CAPTURED=$(sed -n 's/^\([0-9][0-9]*\) packets* captured.*/\1/p' /tmp/rx-capture.err)
}
# pcap_large_frames FILE LIMIT: the frames in FILE longer than LIMIT (MTU + 14; plus 4 per VLAN tag):
# "over=N max=BYTES big=N huge=N" (big = 20000 bytes or more, huge = 60000 or more; max = 0 when
# over = 0). Only those frames are decoded (BPF "greater"): reading every frame of a capture
# with tcpdump takes ~0.3 ms per frame under TCG.
pcap_large_frames() {
    tcpdump -r "$1" -nn -e -t greater $(($2 + 1)) 2>/dev/null | awk -v lim="$2" '
        match($0, /ethertype [^,]*, length [0-9]+/) {
            s = substr($0, RSTART, RLENGTH); sub(/.* length /, "", s); l = s + 0
            if (l <= lim + 4 * gsub(/vlan [0-9]+/, "&")) next   # a VLAN tag adds 4 bytes
            over++; if (l > max) max = l
            if (l >= 20000) big++; if (l >= 60000) huge++
        }
        END { printf "over=%d max=%d big=%d huge=%d\n", over, max, big, huge }'
}
# nic_counters IF: receive/transmit counters of IF and TCP retransmissions, for the log
nic_counters() {
    _o=""
    for _c in rx_packets rx_dropped rx_errors rx_length_errors rx_over_errors tx_packets tx_dropped tx_errors; do
        _o="$_o $_c=$(iface_stat "$1" "$_c")"
    done
    _r=$(awk '$1 == "Tcp:" { if (!h) { for (i = 2; i <= NF; i++) if ($i == "RetransSegs") c = i; h = 1 } else print $c }' /proc/net/snmp)
    echo "${_o# } tcp_retrans=$_r"
}
# kv STRING KEY: the value of KEY=VALUE in a space-separated STRING
kv() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
