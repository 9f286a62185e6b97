//! One open key fed records: raw bytes, records a peer with the key seals,
//! and TLS 1.3 records with an arbitrary inner plaintext. Checks that a
//! record round-trips, that no plaintext exceeds 2^14 bytes, and that a
//! failed open is final.
#![no_main]

use arbitrary::Arbitrary;
use keyferry_fuzz::{key, suite, tls13_record};
use keyferry_record::{ContentType, Direction, ProtocolVersion};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Record {
    Raw(Vec<u8>),
    Sealed {
        content_type: u8,
        payload: Vec<u8>,
        padding: u16,
    },
    Inner {
        outer_type: u8,
        inner: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    suite: u8,
    records: Vec<Record>,
}

fuzz_target!(|input: Input| {
    let suite = suite(input.suite);
    let mut open = key(suite, Direction::Open, 2);
    let mut peer = key(suite, Direction::Seal, 2);
    let mut failed = false;
    for record in input.records.iter().take(16) {
        let (bytes, expect) = match record {
            Record::Raw(bytes) => (bytes.clone(), None),
            Record::Sealed {
                content_type,
                payload,
                padding,
            } => {
                let Some(ct) = ContentType::from_code(*content_type) else {
                    continue;
                };
                match peer.seal(ct, payload, *padding as usize) {
                    // A KeyUpdate at the limit would make two records.
                    Ok(bytes) => (bytes, Some((ct, payload.clone()))),
                    Err(_) => continue,
                }
            }
            Record::Inner { outer_type, inner } => {
                if suite.0 != ProtocolVersion::Tls13 || inner.len() > (1 << 14) + 256 {
                    continue;
                }
                let sequence = open.state().sequence;
                (tls13_record(suite.1, 2, sequence, *outer_type, inner), None)
            }
        };
        match open.open(bytes) {
            Ok((ct, plaintext)) => {
                assert!(!failed, "a key opened a record after a failed open");
                assert!(plaintext.len() <= 1 << 14, "plaintext over 2^14 bytes");
                if let Some((want_ct, want)) = expect
                    && open.state().sequence == peer.state().sequence
                {
                    assert_eq!((ct, &plaintext), (want_ct, &want), "round trip");
                }
            }
            Err(_) => failed = true,
        }
    }
});
