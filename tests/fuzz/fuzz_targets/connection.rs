//! The connection state machine with valid keys on both ends: the peer
//! sends records it seals (data, alerts, handshake messages, KeyUpdates)
//! and raw bytes, all cut at arbitrary points, and the server answers,
//! sends and closes between them. Checks that application data arrives in
//! order and exactly once, that nothing arrives after the read side
//! closed, and that every byte the connection sends opens at the peer.
#![no_main]

use arbitrary::Arbitrary;
use keyferry_fuzz::{server_and_peer, suite};
use keyferry_record::ContentType;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    /// A record the peer seals; `split` cuts the bytes into two deliveries.
    Record {
        content_type: u8,
        payload: Vec<u8>,
        padding: u8,
        split: u16,
    },
    /// The peer updates its sending key.
    PeerKeyUpdate { request: bool },
    /// Bytes without protection, from an attacker on the path.
    Raw(Vec<u8>),
    /// The server sends data.
    Send(Vec<u8>),
    /// The server updates its own key.
    KeyUpdate { request: bool },
    /// The server closes.
    Close,
    /// The transport ends.
    EndOfStream,
}

#[derive(Arbitrary, Debug)]
struct Input {
    suite: u8,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let suite = suite(input.suite);
    let (mut conn, mut peer_seal, mut peer_open) = server_and_peer(suite);
    conn.start();
    let mut sent_data = Vec::new();
    let mut got_data = Vec::new();
    let mut tampered = false;
    let mut to_peer = Vec::new();
    for op in input.ops.iter().take(32) {
        let mut output = None;
        match op {
            Op::Record {
                content_type,
                payload,
                padding,
                split,
            } => {
                let Some(ct) = ContentType::from_code(*content_type) else {
                    continue;
                };
                let Ok(bytes) = peer_seal.seal(ct, payload, *padding as usize) else {
                    continue;
                };
                if ct == ContentType::ApplicationData {
                    sent_data.extend_from_slice(payload);
                } else {
                    // Alerts, handshake messages and CCS may end or change
                    // the stream; only compare data up to the first one.
                    tampered = true;
                }
                let at = (*split as usize).min(bytes.len());
                let first = conn.receive(&bytes[..at]);
                got_data.extend_from_slice(&first.plaintext);
                to_peer.extend_from_slice(&first.to_send);
                output = Some(conn.receive(&bytes[at..]));
            }
            Op::PeerKeyUpdate { request } => {
                if let Ok(bytes) = peer_seal.send_key_update(*request) {
                    output = Some(conn.receive(&bytes));
                }
            }
            Op::Raw(bytes) => {
                tampered = true;
                output = Some(conn.receive(bytes));
            }
            Op::Send(data) => {
                if let Ok(bytes) = conn.send(data) {
                    to_peer.extend_from_slice(&bytes);
                }
            }
            Op::KeyUpdate { request } => {
                if let Ok(bytes) = conn.key_update(*request) {
                    to_peer.extend_from_slice(&bytes);
                }
            }
            Op::Close => {
                if let Ok(bytes) = conn.close() {
                    to_peer.extend_from_slice(&bytes);
                }
            }
            Op::EndOfStream => {
                tampered = true;
                output = Some(conn.end_of_stream());
            }
        }
        if let Some(out) = output {
            got_data.extend_from_slice(&out.plaintext);
            to_peer.extend_from_slice(&out.to_send);
        }
    }
    if tampered {
        // Whatever ended or broke the stream, what did arrive is what the
        // peer sent, in order, with nothing repeated or invented.
        assert!(
            sent_data.starts_with(&got_data),
            "delivered data is not a prefix of what was sent"
        );
    } else {
        assert_eq!(got_data, sent_data, "data in order, exactly once");
    }
    // Everything the connection sent is well-formed records the peer's
    // key opens, in order, until an alert or a KeyUpdate it cannot follow.
    let mut rest = &to_peer[..];
    while let keyferry_record::framing::Frame::Record(n) = keyferry_record::framing::next_record(rest)
    {
        let (record, tail) = rest.split_at(n);
        rest = tail;
        match peer_open.open(record.to_vec()) {
            Ok((ContentType::Handshake, body)) if body.first() == Some(&24) => {
                // The server's KeyUpdate: follow it.
                let _ = peer_open.update();
            }
            Ok(_) => {}
            Err(e) => panic!("the peer could not open the connection's record: {e:?}"),
        }
    }
    assert!(rest.is_empty(), "the connection sent a partial record");
});
