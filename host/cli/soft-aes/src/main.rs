//! Seals and opens records with the guest crate's record layer built
//! natively, over RustCrypto's AES-GCM with software AES: what `keyferry
//! bench` calls "native", with the AES instructions taken away, as the
//! guest has none. Prints MB/s, one line per AEAD and operation:
//! `AES-128-GCM seal 201.3`. `keyferry bench --soft-aes PATH` runs it with
//! its own records, rounds, record size, protocol version and the AEAD it
//! is measuring, and sets the figures beside the guest's.
//!
//! Usage: `keyferry-soft-aes RECORDS ROUNDS RECORD_SIZE [tls12|tls13]
//! [AES-128-GCM|AES-256-GCM]` (both AEADs when none is named).

#[cfg(not(aes_backend = "soft"))]
compile_error!(
    "build from host/cli/soft-aes (its .cargo/config.toml sets --cfg aes_backend=\"soft\")"
);

use std::hint::black_box;
use std::time::Instant;

use keyferry_record::record::{TrafficKey, TrafficKeyMaterial};
use keyferry_record::{AeadAlgorithm, ContentType, Direction, ProtocolVersion};

/// The bench's own key material (`keyferry_cli::bench`): a fixed secret.
fn material(
    version: ProtocolVersion,
    aead: AeadAlgorithm,
    direction: Direction,
) -> TrafficKeyMaterial {
    match version {
        ProtocolVersion::Tls13 => TrafficKeyMaterial::from_tls13_secret(
            aead,
            direction,
            &vec![0x3c; aead.tls13_hash().output_len()],
            0,
            1,
        )
        .expect("derivation of a fixed secret"),
        ProtocolVersion::Tls12 => TrafficKeyMaterial::new(
            version,
            aead,
            direction,
            &vec![0x3c; aead.key_len()],
            &[0x5a; 12],
            &[],
            0,
            1,
        ),
    }
}

/// The median of `rates`.
fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// Seals `records` records, then opens them, `rounds` times, as the
/// bench's native measurement does; median MB/s of each.
fn run(
    version: ProtocolVersion,
    aead: AeadAlgorithm,
    records: usize,
    rounds: usize,
    size: usize,
) -> (f64, f64) {
    let payload = vec![0xa5u8; size];
    let (mut seals, mut opens) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let key = |direction| {
            TrafficKey::from_material(material(version, aead, direction), None).expect("key")
        };
        let (mut seal, mut open) = (key(Direction::Seal), key(Direction::Open));
        let start = Instant::now();
        let wire: Vec<Vec<u8>> = (0..records)
            .map(|_| {
                seal.seal(ContentType::ApplicationData, &payload, 0)
                    .expect("seal")
            })
            .collect();
        seals.push((records * size) as f64 / start.elapsed().as_secs_f64() / 1e6);
        let start = Instant::now();
        for record in wire {
            black_box(open.open(record).expect("open"));
        }
        opens.push((records * size) as f64 / start.elapsed().as_secs_f64() / 1e6);
    }
    (median(seals), median(opens))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize| -> usize {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .expect("usage: keyferry-soft-aes RECORDS ROUNDS RECORD_SIZE [tls12|tls13] [AEAD]")
    };
    let (records, rounds, size) = (number(0).max(1), number(1).max(1), number(2));
    let version = match args.get(3).map(String::as_str) {
        None | Some("tls13") => ProtocolVersion::Tls13,
        Some("tls12") => ProtocolVersion::Tls12,
        Some(other) => panic!("unknown version {other}: tls12 or tls13"),
    };
    let only = args.get(4).map(String::as_str);
    let aeads = [
        ("AES-128-GCM", AeadAlgorithm::Aes128Gcm),
        ("AES-256-GCM", AeadAlgorithm::Aes256Gcm),
    ];
    if let Some(name) = only.filter(|n| aeads.iter().all(|(a, _)| a != n)) {
        panic!("unknown AEAD {name}: AES-128-GCM or AES-256-GCM");
    }
    for (name, aead) in aeads
        .into_iter()
        .filter(|(a, _)| only.is_none_or(|n| n == *a))
    {
        let (seal, open) = run(version, aead, records, rounds, size);
        println!("{name} seal {seal:.1}");
        println!("{name} open {open:.1}");
    }
}
