# offload-tap.sh: the body of the offload-tap-on and offload-tap-off scenarios (sourced by
# them with TAP_OFFLOADS=on|off; not a test itself, hence not executable).
#
# A 1-queue guest with every offload on (QEMU's defaults) on a tap port with
# tap_offloads=$TAP_OFFLOADS and pcap=FILE. As in the tap scenario, vnic creates the tap and this
# scenario moves it into a netns of its own, with an address, an iperf3 server and tcpdump on
# the tap. The guest (guest-tests/offload, GRO off) runs iperf3 TCP -P 2 to the netns and back
# (-R) and vnic-stream both ways (every byte verified by the receiver), checks that it counted
# no checksum errors and that it received TCP frames longer than MTU + 14 (either way vnic
# hands it large frames: the host's GSO frames as they are, or, with the tap's offloads off,
# the tap's MTU-sized segments merged by vnic), then prints "VNIC-SYNC checked" and waits. This scenario then checks:
#   - the tap's own features (ethtool -k in the netns): tx-checksumming and TSO = $TAP_OFFLOADS;
#   - no checksum errors counted in the netns during the traffic (with the offloads off its
#     kernel verifies every checksum, including those vnic completed for the guest's frames);
#   - tcpdump on the tap: on: TCP frames longer than MTU + 14 both ways (the guest's TSO jobs
#     reach the host whole; the host's stack hands the tap GSO frames); off: none either way
#     (vnic cut the guest's jobs; the host's stack segmented before the tap), and every TCP/UDP
#     checksum in the guest's frames complete and right (tcpdump -vv);
#   - vnic stats: tx_gso > 0 (the guest sends jobs either way), rx_segments = 0; on: rx_gso > 0
#     (the host's GSO frames passed to the guest) and tap_segments = 0; off: rx_coalesced > 0
#     (the tap's segments merged for the guest) and tap_segments > 0 (vnic cut the guest's
#     jobs for the tap); no tap_error, no drops;
#   - vnic's pcap of the port: TCP frames of 20000+ bytes from the guest (its jobs enter vnic
#     whole in both cases) and frames longer than MTU + 14 delivered to it.
source "$(dirname "$0")/lib.sh"
need_cmd iperf3 tcpdump ethtool socat
[[ -x $GT_REPO/target/guest-tools/vnic-stream ]] || fail "target/guest-tools/vnic-stream missing (images/build-guest builds it)"

case "${TAP_OFFLOADS:-}" in on|off) ;; *) fail "TAP_OFFLOADS must be on or off (got '${TAP_OFFLOADS:-}')" ;; esac
MODE=$TAP_OFFLOADS
if [[ $MODE == on ]]; then NET=10.0.7 GMAC=02:76:6e:07:00:0a; else NET=10.0.8 GMAC=02:76:6e:08:00:0a; fi
TAP=vgo$$ NS=vnic-gt-otap-$$ MTU=1500
HOST_IP=$NET.1 GUEST_IP=$NET.2
add_port g 1 "$GMAC" "$MTU" "tap:$TAP" "tap_offloads=$MODE,pcap=$GT_WORK/g.pcap"
register_tap "$TAP"
add_netns "$NS"
start_vnic
ip link show "$TAP" >/dev/null 2>&1 || fail "vnic did not create tap $TAP"
ip link set "$TAP" netns "$NS" || fail "cannot move tap $TAP into netns $NS"
in_ns "$NS" ip addr add "$HOST_IP/24" dev "$TAP" || fail "cannot address $TAP in $NS"
in_ns "$NS" ip link set "$TAP" mtu "$MTU" up || fail "cannot bring $TAP up in $NS"

feat() { in_ns "$NS" ethtool -k "$TAP" | awk -v n="$1:" '$1 == n { print $2; exit }'; }
st=""
for f in tx-checksumming tcp-segmentation-offload generic-segmentation-offload rx-checksumming generic-receive-offload; do
    st+=" $f=$(feat "$f")"
done
log "tap $TAP (tap_offloads=$MODE) ethtool -k:$st"
for f in tx-checksumming tcp-segmentation-offload; do
    [[ $(feat "$f") == "$MODE" ]] || fail "tap $TAP with tap_offloads=$MODE: ethtool -k says $f $(feat "$f")"
done

before=$(csum_errors "$NS")
log "netns checksum errors before: $before"
run_bg ip netns exec "$NS" tcpdump -i "$TAP" -nn -s 0 -U -w "$GT_WORK/tap.pcap" tcp 2>"$GT_LOGS/tap-tcpdump.log"
TCPDUMP_PID=$!
for i in $(seq 1 50); do grep -q 'listening on' "$GT_LOGS/tap-tcpdump.log" && break; sleep 0.2; done
grep -q 'listening on' "$GT_LOGS/tap-tcpdump.log" || fail "tcpdump on $TAP did not start: $(cat "$GT_LOGS/tap-tcpdump.log")"
run_bg ip netns exec "$NS" iperf3 -s >"$GT_LOGS/host-iperf3.log" 2>&1
# The guests' payload checker (guest-tests/tools, static): the guest verifies what it receives,
# this server what the guest sends.
run_bg ip netns exec "$NS" "$GT_REPO/target/guest-tools/vnic-stream" serve >"$GT_LOGS/host-vnic-stream.log" 2>&1

boot_guest g offload "role=client,peer_is=host,ip=$GUEST_IP/24,peer=$HOST_IP,mtu=$MTU,offloads=on,rx_large=yes,secs=4"
wait_console g '^VNIC-SYNC checked' 200
stats=$(save_stats checked)
kill -INT "$TCPDUMP_PID" 2>/dev/null
for i in $(seq 1 25); do kill -0 "$TCPDUMP_PID" 2>/dev/null || break; sleep 0.2; done
log "tcpdump on $TAP: $(grep -E 'captured|dropped by kernel' "$GT_LOGS/tap-tcpdump.log" | tr '\n' ' ')"
after=$(csum_errors "$NS")
log "netns checksum errors after: $after"
for i in $(seq 1 20); do
    echo done | in_ns "$NS" socat -u - "TCP:$GUEST_IP:5999,connect-timeout=3" 2>/dev/null && break
    sleep 1
done
wait_guests_pass g
stop_vnic   # closes the pcap file

d=$(($(csum_error_total "$after") - $(csum_error_total "$before")))
((d == 0)) || fail "netns $NS counted $d checksum errors during the traffic (before: $before; after: $after)"

log "port g offload counters: $(port_offload_summary "$stats" g)"
bad=$(port_bad_drops "$stats" g)
[[ -z "$bad" ]] || fail "port g dropped frames: $bad"
expect_offload_features "$stats" g all
v=$(port_offload "$stats" g tx_gso); ((v > 0)) || fail "port g: tx_gso = 0: the guest sent no TSO job"
v=$(port_offload "$stats" g rx_segments); ((v == 0)) || fail "port g: rx_segments = $v: vnic cut jobs for a guest that takes TSO"
v=$(port_offload "$stats" g tap_segments)
if [[ $MODE == on ]]; then
    ((v == 0)) || fail "port g: tap_segments = $v: vnic cut the guest's jobs for a tap that takes them"
else
    ((v > 0)) || fail "port g: tap_segments = 0: vnic cut none of the guest's jobs for a tap without offloads"
fi
if [[ $MODE == on ]]; then
    v=$(port_offload "$stats" g rx_gso); ((v > 0)) || fail "port g: rx_gso = 0: none of the host's GSO frames reached the guest as such"
else
    v=$(port_offload "$stats" g rx_coalesced); ((v > 0)) || fail "port g: rx_coalesced = 0: vnic merged none of the tap's segments for the guest"
fi

lim=$((MTU + 14))
g2h=$(pcap_tcp_sizes "$GT_WORK/tap.pcap" "$lim" tcp and ether src "$GMAC")
h2g=$(pcap_tcp_sizes "$GT_WORK/tap.pcap" "$lim" tcp and ether dst "$GMAC")
log "tap $TAP capture: guest->host: $g2h"
log "tap $TAP capture: host->guest: $h2g"
(($(kv "$g2h" frames) > 0 && $(kv "$h2g" frames) > 0)) || fail "tcpdump on $TAP missed a direction (guest->host: $g2h; host->guest: $h2g)"
if [[ $MODE == on ]]; then
    (($(kv "$g2h" over) > 0)) || fail "tap_offloads=on: no TCP frame longer than $lim bytes from the guest on $TAP ($g2h)"
    (($(kv "$h2g" over) > 0)) || fail "tap_offloads=on: no TCP frame longer than $lim bytes from the host on $TAP ($h2g)"
else
    (($(kv "$g2h" over) == 0)) || fail "tap_offloads=off: $(kv "$g2h" over) TCP frames longer than $lim bytes from the guest on $TAP ($g2h)"
    (($(kv "$h2g" over) == 0)) || fail "tap_offloads=off: $(kv "$h2g" over) TCP frames longer than $lim bytes from the host on $TAP ($h2g)"
fi
# Checksums as the host saw them (whole frames): with the offloads off, vnic must have completed
# every checksum of the guest's frames before writing them to the tap; with them on, the
# guest's partial checksums reach the tap as such (only logged).
ck_g2h=$(pcap_csum_check "$GT_WORK/tap.pcap" ether src "$GMAC" and '(tcp or udp)')
log "tap $TAP capture checksums, guest->host: $ck_g2h"
if [[ $MODE == off ]]; then
    (($(kv "$ck_g2h" checked) > 0)) || fail "tap capture: no TCP/UDP checksum from the guest to verify"
    (($(kv "$ck_g2h" bad) == 0)) || fail "tap_offloads=off: $(kv "$ck_g2h" bad) wrong or partial checksums in the guest's frames on $TAP ($ck_g2h)"
fi
out=$(pcap_tcp_sizes "$GT_WORK/g.pcap" "$lim" tcp and ether src "$GMAC")
to=$(pcap_tcp_sizes "$GT_WORK/g.pcap" "$lim" tcp and ether dst "$GMAC")
log "port g pcap ($(stat -c %s "$GT_WORK/g.pcap") bytes): TCP from the guest: $out"
log "port g pcap: TCP to the guest:   $to"
(($(kv "$out" big) > 0)) || fail "port g pcap: no TCP frame of 20000+ bytes from the guest ($out)"
(($(kv "$to" over) > 0)) || fail "port g pcap: no TCP frame longer than $lim bytes delivered to the guest ($to)"
pass
