//! QEMU's own message order: virtio-net sends VHOST_USER_SET_VRING_ENABLE right after it
//! connects (and after a reset), before any VHOST_USER_SET_FEATURES. The connection must
//! survive that (see `vnic::device::relay`).

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use common::*;
use vnic_testdriver::GuestOptions;

const GET_FEATURES: u32 = 1;
const SET_OWNER: u32 = 3;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
const GET_QUEUE_NUM: u32 = 17;
const SET_VRING_ENABLE: u32 = 18;
const RESET_DEVICE: u32 = 34;

fn send(s: &mut UnixStream, request: u32, body: &[u8]) {
    s.write_all(&vhost_msg(request, body)).unwrap();
}

/// Sends a request that has a u64 reply and returns it.
fn ask(s: &mut UnixStream, request: u32) -> u64 {
    send(s, request, &[]);
    let mut reply = [0u8; 20];
    s.read_exact(&mut reply)
        .unwrap_or_else(|e| panic!("no reply to request {request}: {e}"));
    assert_eq!(u32::from_le_bytes(reply[0..4].try_into().unwrap()), request);
    u64::from_le_bytes(reply[12..20].try_into().unwrap())
}

fn vring_state(index: u32, num: u32) -> Vec<u8> {
    [index.to_le_bytes(), num.to_le_bytes()].concat()
}

#[test]
fn set_vring_enable_before_set_features_keeps_the_connection() {
    let net = start(&["queues=2"]);
    let mut s = UnixStream::connect(net.socket(0)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    // What QEMU 10 sends on connect (seen with strace): ...
    let features = ask(&mut s, GET_FEATURES);
    assert_ne!(features & (1 << 30), 0, "PROTOCOL_FEATURES offered");
    let proto = ask(&mut s, GET_PROTOCOL_FEATURES);
    send(&mut s, SET_PROTOCOL_FEATURES, &proto.to_le_bytes());
    assert_eq!(ask(&mut s, GET_QUEUE_NUM), 4);
    send(&mut s, SET_OWNER, &[]);
    assert_eq!(ask(&mut s, GET_FEATURES), features);
    // ... then peer_attach/peer_detach: enable pair 0, disable pair 1, no SET_FEATURES yet.
    for (q, on) in [(0, 1), (1, 1), (2, 0), (3, 0)] {
        send(&mut s, SET_VRING_ENABLE, &vring_state(q, on));
    }
    // A device reset, and the same again.
    send(&mut s, RESET_DEVICE, &[]);
    send(&mut s, SET_VRING_ENABLE, &vring_state(0, 1));
    assert_eq!(
        ask(&mut s, GET_FEATURES),
        features,
        "the connection survived the early SET_VRING_ENABLEs"
    );
    drop(s);

    // The port then serves the next frontend normally.
    net.wait_stats("first frontend gone", |st| !st.ports[0].link_up);
    let mut g = net.connect(0, GuestOptions::with_pairs(2));
    g.send(0, &[&frame(BCAST, mac(1), 60, 1)]).unwrap();
    net.wait_stats("second frontend up", |st| {
        st.ports[0].link_up && st.ports[0].connections == 2
    });
}
