//! The key blob reader, every format: any bytes offered as a blob give a
//! typed error or the key, never a panic. Blobs sealed here (HPKE to an
//! instance, format 1; wrapped, format 2; in a worker's HPKE session,
//! format 3) and then cut, extended or flipped reach the checks behind the
//! header, and never open.
#![no_main]

use std::sync::{Mutex, OnceLock};

use arbitrary::Arbitrary;
use keyferry_fuzz::{material, suite};
use keyferry_record::Direction;
use keyferry_record::blob::{
    self, ExchangeKeyPair, Recipient, SessionReceiver, SessionSender, WrappingSecret,
};
use libfuzzer_sys::fuzz_target;

fn keys() -> &'static (ExchangeKeyPair, WrappingSecret) {
    static KEYS: OnceLock<(ExchangeKeyPair, WrappingSecret)> = OnceLock::new();
    KEYS.get_or_init(|| {
        (
            ExchangeKeyPair::generate(),
            WrappingSecret::from_bytes(&[0x33; 32]).expect("32 bytes"),
        )
    })
}

/// A worker's session, both ends.
fn session() -> &'static Mutex<(SessionSender, SessionReceiver)> {
    static SESSION: OnceLock<Mutex<(SessionSender, SessionReceiver)>> = OnceLock::new();
    SESSION.get_or_init(|| {
        let worker = ExchangeKeyPair::generate();
        let (sender, enc) = SessionSender::new(&worker.public_key()).expect("a session");
        let receiver = SessionReceiver::new(&worker, &enc).expect("the same session");
        Mutex::new((sender, receiver))
    })
}

#[derive(Arbitrary, Debug)]
enum Format {
    Hpke,
    Wrapped,
    Session,
}

#[derive(Arbitrary, Debug)]
enum Input {
    /// Bytes as they came.
    Raw(Vec<u8>),
    /// A blob sealed to this recipient, then damaged.
    Damaged {
        format: Format,
        suite: u8,
        buffered: Vec<u8>,
        cut: u16,
        flip: Vec<(u16, u8)>,
        tail: Vec<u8>,
    },
}

fuzz_target!(|input: Input| {
    let (keys, secret) = keys();
    let recipients = [Recipient::Exchange(keys), Recipient::Wrapping(secret)];
    let bytes = match input {
        Input::Raw(bytes) => bytes,
        Input::Damaged {
            format,
            suite: s,
            buffered,
            cut,
            flip,
            tail,
        } => {
            let mut m = material(suite(s), Direction::Open, 3);
            m.buffered_ciphertext = buffered;
            let mut b = match format {
                Format::Wrapped => blob::wrap_traffic_key(secret, &m).expect("wrap"),
                Format::Hpke => blob::seal_traffic_key(&keys.public_key(), &m).expect("seal"),
                Format::Session => session()
                    .lock()
                    .unwrap()
                    .0
                    .seal_traffic_key(&m)
                    .expect("seal"),
            };
            let intact = b.clone();
            b.truncate(b.len().saturating_sub(cut as usize));
            for (at, x) in flip {
                let at = at as usize;
                if at < b.len() {
                    b[at] ^= x;
                }
            }
            b.extend_from_slice(&tail);
            if b != intact {
                for r in recipients {
                    assert!(
                        blob::open_traffic_key(r, &b).is_err(),
                        "a damaged blob opened"
                    );
                }
                assert!(
                    session().lock().unwrap().1.open_traffic_key(&b).is_err(),
                    "a damaged blob opened in the session"
                );
            }
            b
        }
    };
    let _ = blob::peek_header(&bytes);
    for r in recipients {
        if let Ok((_, m)) = blob::open_traffic_key(r, &bytes) {
            let _ = keyferry_record::record::TrafficKey::from_material(m, None);
        }
        let _ = blob::open_mac_key(r, &bytes);
    }
    if let Ok((_, m)) = session().lock().unwrap().1.open_traffic_key(&bytes) {
        let _ = keyferry_record::record::TrafficKey::from_material(m, None);
    }
});
