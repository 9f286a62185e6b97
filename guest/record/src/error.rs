//! The one error type of the record layer, blobs and MAC keys.
//!
//! Messages are lowercase and never carry key material or anything derived
//! from it; they are safe to log and to hand across the WIT boundary.

/// Every way a data-plane operation can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key blob was refused.
    #[error("key blob refused: {0}")]
    Blob(#[from] BlobError),
    /// A record broke a TLS rule; the connection sends this alert and closes.
    #[error("record refused, alert {0}")]
    Alert(#[from] Alert),
    /// The key can no longer be used.
    #[error("key unusable: {0}")]
    Unusable(#[from] UnusableReason),
    /// Export was asked of a key imported without the exportable flag.
    #[error("key is not exportable")]
    NotExportable,
    /// Sealing with an open key, opening with a seal key, or KeyUpdate on TLS 1.2.
    #[error("operation does not fit this key")]
    WrongKeyType,
    /// An argument out of range; the text names it.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The host key service refused the operation.
    #[error("host key service refused: {0}")]
    KeyService(#[from] KeyServiceError),
}

/// Why a key blob was refused at import.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// Too short, a length out of range, or inconsistent fields.
    #[error("malformed")]
    Malformed,
    /// The format version is newer than this reader knows.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u8),
    /// A MAC-key blob where a traffic-key blob was expected, or the reverse.
    #[error("wrong kind of key")]
    WrongKind,
    /// Sealed to another instance's exchange key.
    #[error("sealed to another recipient")]
    WrongRecipient,
    /// The sealed contents failed authentication.
    #[error("authentication failed")]
    AuthenticationFailed,
    /// A blob with this id was already imported here.
    #[error("already imported")]
    Replayed,
    /// The blob's sequence is below one this instance already used.
    #[error("sequence number rollback")]
    SequenceRollback,
    /// A host-resident key, but no host key service is linked.
    #[error("host-resident key but no host key service")]
    HostKeysUnavailable,
    /// The decrypted state does not hold together.
    #[error("inconsistent key state")]
    InvalidState,
}

/// A TLS alert description raised by the record layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Alert {
    /// unexpected_message (10).
    #[error("unexpected_message")]
    UnexpectedMessage,
    /// bad_record_mac (20).
    #[error("bad_record_mac")]
    BadRecordMac,
    /// record_overflow (22).
    #[error("record_overflow")]
    RecordOverflow,
    /// illegal_parameter (47).
    #[error("illegal_parameter")]
    IllegalParameter,
    /// decode_error (50).
    #[error("decode_error")]
    DecodeError,
    /// internal_error (80): the record layer itself could not go on (its
    /// key service refused, or its sequence numbers ran out).
    #[error("internal_error")]
    InternalError,
}

impl Alert {
    /// The AlertDescription wire value (RFC 8446 section 6).
    pub fn code(self) -> u8 {
        match self {
            Self::UnexpectedMessage => 10,
            Self::BadRecordMac => 20,
            Self::RecordOverflow => 22,
            Self::IllegalParameter => 47,
            Self::DecodeError => 50,
            Self::InternalError => 80,
        }
    }
}

/// Why a key can no longer be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnusableReason {
    /// An open failed; failure is final.
    #[error("a record failed to open")]
    Failed,
    /// The sequence numbers (or the AES-GCM record budget) are used up.
    #[error("sequence numbers exhausted")]
    Exhausted,
}

/// Why the host key store refused an operation on a host-resident key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyServiceError {
    /// No such key reference.
    #[error("unknown key")]
    UnknownKey,
    /// The sequence number was already used for sealing.
    #[error("sequence number reused")]
    SequenceReused,
    /// Decryption failed authentication.
    #[error("authentication failed")]
    AuthenticationFailed,
    /// A size or argument out of range.
    #[error("invalid argument")]
    InvalidArgument,
    /// The key cannot do this.
    #[error("unsupported")]
    Unsupported,
    /// The key reached the AEAD's usage limit (RFC 8446 section 5.5) in
    /// this generation: it must update (TLS 1.3) or the connection end.
    #[error("usage limit reached")]
    Exhausted,
}

/// Results of this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;
