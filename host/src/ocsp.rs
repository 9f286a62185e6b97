//! OCSP responses to staple (RFC 6066's `status_request`, TLS 1.3's
//! CertificateEntry extension): read from a file an operator refreshes, as
//! nginx's `ssl_stapling_file` and HAProxy's `.ocsp` files are, and matched
//! to the identity they are about.
//!
//! The server does not fetch responses itself: the handshake process makes
//! no outbound connection. A response is checked before it is stapled,
//! because a wrong one is worse than none (a client that requires stapling
//! refuses the connection): it must be a successful basic response, about
//! a certificate this server serves, report it `good`, and be current.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use der::Decode;
use rustls::pki_types::CertificateDer;
use x509_ocsp::{BasicOcspResponse, CertStatus, OcspResponse, OcspResponseStatus, SingleResponse};

use crate::error::{ConfigError, Result};

/// `id-pkix-ocsp-basic` (RFC 6960 4.2.1), the one response type in use.
const BASIC: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
/// SHA-1 and SHA-256, the hashes a CertID is made with (RFC 6960 4.1.1;
/// `openssl ocsp` uses SHA-1 unless told otherwise).
const SHA1: der::oid::ObjectIdentifier = der::oid::ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const SHA256: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");

/// A DER OCSP response read from a file, with what matching it needs.
pub struct OcspStaple {
    path: PathBuf,
    der: Vec<u8>,
    statuses: Vec<Status>,
}

/// One certificate's status in a response.
struct Status {
    serial: Vec<u8>,
    /// The hash algorithm and the hash of the issuer's public key, checked
    /// when the chain holds the issuer.
    issuer_key_hash: Option<(&'static ring::digest::Algorithm, Vec<u8>)>,
    good: Result<(), &'static str>,
    next_update: Option<SystemTime>,
}

impl OcspStaple {
    /// Reads a DER response (`openssl ocsp -respout`). Errors name the
    /// file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let der = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_der(path, der)
    }

    /// Parses `der`; `path` names it in errors.
    pub fn from_der(path: &Path, der: Vec<u8>) -> Result<Self> {
        let fail = |reason: String| ConfigError::Ocsp {
            path: path.into(),
            reason,
        };
        let response =
            OcspResponse::from_der(&der).map_err(|_| fail("not a DER OCSP response".into()))?;
        if response.response_status != OcspResponseStatus::Successful {
            return Err(fail(format!(
                "the responder answered {:?}, not successful",
                response.response_status
            ))
            .into());
        }
        let bytes = response
            .response_bytes
            .filter(|b| b.response_type == BASIC)
            .ok_or_else(|| fail("not a basic OCSP response".into()))?;
        let basic = BasicOcspResponse::from_der(bytes.response.as_bytes())
            .map_err(|_| fail("its basic response does not parse".into()))?;
        let statuses = basic
            .tbs_response_data
            .responses
            .iter()
            .map(status)
            .collect();
        Ok(Self {
            path: path.into(),
            der,
            statuses,
        })
    }

    /// The file it came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it holds a status for the leaf of `chain`: the serial
    /// number, and the issuer's key hash when `chain` holds the issuer.
    pub(crate) fn is_for(&self, chain: &[CertificateDer<'_>]) -> bool {
        self.status_for(chain).is_some()
    }

    /// Checks it can be stapled for `chain` at `now`, and returns the
    /// response bytes and until when they may be stapled.
    pub(crate) fn staple_for(
        &self,
        chain: &[CertificateDer<'_>],
        now: SystemTime,
    ) -> Result<(Vec<u8>, Option<SystemTime>)> {
        let fail = |reason: String| ConfigError::Ocsp {
            path: self.path.clone(),
            reason,
        };
        let status = self
            .status_for(chain)
            .ok_or_else(|| fail("it is about no certificate served here".into()))?;
        status.good.map_err(|what| fail(what.into()))?;
        if let Some(next) = status.next_update
            && next <= now
        {
            let ago = now.duration_since(next).unwrap_or_default().as_secs();
            return Err(fail(format!(
                "it expired {ago} s ago (nextUpdate); fetch a new one"
            ))
            .into());
        }
        Ok((self.der.clone(), status.next_update))
    }

    fn status_for(&self, chain: &[CertificateDer<'_>]) -> Option<&Status> {
        let (_, leaf) = x509_parser::parse_x509_certificate(chain.first()?.as_ref()).ok()?;
        let issuer_key = chain.get(1).and_then(|issuer| {
            let (_, issuer) = x509_parser::parse_x509_certificate(issuer.as_ref()).ok()?;
            Some(issuer.public_key().subject_public_key.data.to_vec())
        });
        let serial = trim_serial(leaf.raw_serial());
        self.statuses.iter().find(|s| {
            s.serial == serial
                && match (&s.issuer_key_hash, &issuer_key) {
                    (Some((alg, hash)), Some(key)) => {
                        ring::digest::digest(alg, key).as_ref() == hash
                    }
                    _ => true,
                }
        })
    }
}

fn status(single: &SingleResponse) -> Status {
    let id = &single.cert_id;
    let alg = match id.hash_algorithm.oid {
        SHA1 => Some(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY),
        SHA256 => Some(&ring::digest::SHA256),
        _ => None,
    };
    Status {
        serial: trim_serial(id.serial_number.as_bytes()),
        issuer_key_hash: alg.map(|a| (a, id.issuer_key_hash.as_bytes().to_vec())),
        good: match single.cert_status {
            CertStatus::Good(_) => Ok(()),
            CertStatus::Revoked(_) => Err("it reports the certificate revoked"),
            CertStatus::Unknown(_) => Err("the responder does not know the certificate (unknown)"),
        },
        next_update: single
            .next_update
            .map(|t| SystemTime::UNIX_EPOCH + t.0.to_unix_duration()),
    }
}

/// A serial number's value bytes without DER's leading zero, so the
/// parsers' encodings compare equal.
fn trim_serial(serial: &[u8]) -> Vec<u8> {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    serial[start..].to_vec()
}

/// How long before its nextUpdate a staple stops being served: a client
/// whose clock runs a little fast must not see an expired response.
pub(crate) const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_with_the_file_named() {
        let err = OcspStaple::from_der(Path::new("/etc/x.ocsp"), b"not der".to_vec())
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "OCSP response /etc/x.ocsp: not a DER OCSP response"
        );
    }

    #[test]
    fn an_unsuccessful_response_is_refused() {
        // OCSPResponse { responseStatus tryLater(3) }, no responseBytes.
        let der = vec![0x30, 0x03, 0x0a, 0x01, 0x03];
        let err = OcspStaple::from_der(Path::new("r.der"), der).err().unwrap();
        assert!(err.to_string().contains("TryLater"), "{err}");
    }

    #[test]
    fn serials_compare_without_the_sign_byte() {
        assert_eq!(trim_serial(&[0, 0x80, 1]), vec![0x80, 1]);
        assert_eq!(trim_serial(&[0x12]), vec![0x12]);
    }
}
