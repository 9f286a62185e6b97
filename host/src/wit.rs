//! Conversions between the one set of generated WIT types
//! ([`crate::bindings`]) and the record layer's own types, which the
//! library's API speaks. The value types' mappings come from
//! [`keyferry_record::wit_conversions!`], shared with the guest glue; only
//! the error, whose host form differs, is mapped here.

use crate::bindings::keyferry::dataplane::types as wit;
use crate::error::{Error, GuestError};

keyferry_record::wit_conversions!(wit);

/// A guest's text, made safe for a log line: no control characters (no
/// forged lines), at most 200 characters.
pub(crate) fn guest_text(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

impl From<wit::Error> for Error {
    fn from(e: wit::Error) -> Self {
        use keyferry_record::Error as G;
        Error::Record(match e {
            wit::Error::Blob(b) => G::Blob(b.into()),
            wit::Error::Alert(a) => G::Alert(a.into()),
            wit::Error::Unusable(u) => G::Unusable(u.into()),
            wit::Error::NotExportable => G::NotExportable,
            wit::Error::WrongKeyType => G::WrongKeyType,
            wit::Error::KeyService(k) => G::KeyService(k.into()),
            wit::Error::InvalidArgument(text) => {
                return GuestError::InvalidArgument(guest_text(&text)).into();
            }
        })
    }
}
