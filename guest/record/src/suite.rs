//! The algorithms and wire codes a key can have.
//!
//! These mirror the WIT enums of `keyferry:dataplane/types` but stay free of
//! bindings so the record layer is tested natively.

/// The TLS version whose record format a traffic key speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// TLS 1.2 with an AEAD suite (RFC 5288, RFC 7905).
    Tls12,
    /// TLS 1.3 (RFC 8446).
    Tls13,
}

impl ProtocolVersion {
    /// The name openssl and the logs use: `TLSv1.3`, `TLSv1.2`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tls12 => "TLSv1.2",
            Self::Tls13 => "TLSv1.3",
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Tls12 => 2,
            Self::Tls13 => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            2 => Some(Self::Tls12),
            3 => Some(Self::Tls13),
            _ => None,
        }
    }
}

/// A record AEAD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AeadAlgorithm {
    /// AES-128-GCM.
    Aes128Gcm,
    /// AES-256-GCM.
    Aes256Gcm,
    /// ChaCha20-Poly1305 (RFC 8439).
    ChaCha20Poly1305,
}

impl AeadAlgorithm {
    /// Every algorithm, in the order `describe` lists them.
    pub const ALL: [Self; 3] = [Self::Aes128Gcm, Self::Aes256Gcm, Self::ChaCha20Poly1305];

    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Self::Aes128Gcm => 16,
            Self::Aes256Gcm | Self::ChaCha20Poly1305 => 32,
        }
    }

    /// The hash a TLS 1.3 suite with this AEAD uses for HKDF and KeyUpdate.
    pub fn tls13_hash(self) -> MacAlgorithm {
        match self {
            Self::Aes256Gcm => MacAlgorithm::HmacSha384,
            Self::Aes128Gcm | Self::ChaCha20Poly1305 => MacAlgorithm::HmacSha256,
        }
    }

    /// AES-GCM keys are bound by the RFC 8446 section 5.5 record limit.
    pub fn is_aes_gcm(self) -> bool {
        matches!(self, Self::Aes128Gcm | Self::Aes256Gcm)
    }

    /// The IANA name of the TLS 1.3 suite, or the TLS 1.2 ECDHE family.
    pub fn suite_name(self, version: ProtocolVersion) -> &'static str {
        match (version, self) {
            (ProtocolVersion::Tls13, Self::Aes128Gcm) => "TLS_AES_128_GCM_SHA256",
            (ProtocolVersion::Tls13, Self::Aes256Gcm) => "TLS_AES_256_GCM_SHA384",
            (ProtocolVersion::Tls13, Self::ChaCha20Poly1305) => "TLS_CHACHA20_POLY1305_SHA256",
            (ProtocolVersion::Tls12, Self::Aes128Gcm) => "TLS_ECDHE_*_WITH_AES_128_GCM_SHA256",
            (ProtocolVersion::Tls12, Self::Aes256Gcm) => "TLS_ECDHE_*_WITH_AES_256_GCM_SHA384",
            (ProtocolVersion::Tls12, Self::ChaCha20Poly1305) => {
                "TLS_ECDHE_*_WITH_CHACHA20_POLY1305_SHA256"
            }
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Aes128Gcm => 1,
            Self::Aes256Gcm => 2,
            Self::ChaCha20Poly1305 => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Aes128Gcm),
            2 => Some(Self::Aes256Gcm),
            3 => Some(Self::ChaCha20Poly1305),
            _ => None,
        }
    }
}

/// Which way a traffic key moves records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Protects records this side sends.
    Seal,
    /// Opens records this side receives.
    Open,
}

impl Direction {
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Seal => 0,
            Self::Open => 1,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Seal),
            1 => Some(Self::Open),
            _ => None,
        }
    }
}

/// The hash of an HMAC key, also used to pick the HKDF hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MacAlgorithm {
    /// HMAC-SHA-256.
    HmacSha256,
    /// HMAC-SHA-384.
    HmacSha384,
}

impl MacAlgorithm {
    /// Every algorithm, in the order `describe` lists them.
    pub const ALL: [Self; 2] = [Self::HmacSha256, Self::HmacSha384];

    /// The full tag (and hash) length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Self::HmacSha256 => 32,
            Self::HmacSha384 => 48,
        }
    }

    /// The algorithm's conventional name.
    pub fn name(self) -> &'static str {
        match self {
            Self::HmacSha256 => "HMAC-SHA256",
            Self::HmacSha384 => "HMAC-SHA384",
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Self::HmacSha256 => 1,
            Self::HmacSha384 => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::HmacSha256),
            2 => Some(Self::HmacSha384),
            _ => None,
        }
    }
}

/// A TLS record content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContentType {
    /// change_cipher_spec (20).
    ChangeCipherSpec,
    /// alert (21).
    Alert,
    /// handshake (22).
    Handshake,
    /// application_data (23).
    ApplicationData,
}

impl ContentType {
    /// The wire value.
    pub fn code(self) -> u8 {
        match self {
            Self::ChangeCipherSpec => 20,
            Self::Alert => 21,
            Self::Handshake => 22,
            Self::ApplicationData => 23,
        }
    }

    /// The type for a wire value, if it is one TLS defines for records.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            20 => Some(Self::ChangeCipherSpec),
            21 => Some(Self::Alert),
            22 => Some(Self::Handshake),
            23 => Some(Self::ApplicationData),
            _ => None,
        }
    }
}
