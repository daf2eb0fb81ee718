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
