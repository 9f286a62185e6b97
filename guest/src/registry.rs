//! What one instance remembers about the keys it has held, so a blob cannot
//! be imported twice and a key cannot come back at an older sequence number.
//!
//! A rollback is how AES-GCM nonces get reused, and reuse is fatal, so the
//! check runs before any key is built.

use std::collections::{HashMap, HashSet};

use crate::error::{BlobError, Result};

/// A key's identity: [`crate::record::TrafficKey::fingerprint`], a hash of
/// its material, so the marks follow the key and not the labels a sealer
/// put on it.
pub type Fingerprint = [u8; 16];

/// The position of a key in its sequence space: generation, then sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// KeyUpdates so far.
    pub generation: u32,
    /// Next sequence number.
    pub sequence: u64,
}

#[derive(Clone, Copy, Debug)]
struct Mark {
    /// The furthest position this instance has reached with the key.
    reached: Position,
    /// Whether a handle for the key is alive here now.
    live: bool,
}

/// Imported blob ids and per-key high-water marks of one instance.
#[derive(Default)]
pub struct Registry {
    imported: HashSet<[u8; 16]>,
    marks: HashMap<Fingerprint, Mark>,
}

impl Registry {
    /// Admits a traffic key: refuses a blob id seen before, a second live
    /// copy of a key, and a position behind one already reached.
    pub fn admit_traffic(
        &mut self,
        blob_id: [u8; 16],
        key: Fingerprint,
        at: Position,
    ) -> Result<()> {
        self.admit_blob(blob_id)?;
        if let Some(mark) = self.marks.get(&key) {
            if mark.live {
                return Err(BlobError::Replayed.into());
            }
            if at < mark.reached {
                return Err(BlobError::SequenceRollback.into());
            }
        }
        self.imported.insert(blob_id);
        self.marks.insert(
            key,
            Mark {
                reached: at,
                live: true,
            },
        );
        Ok(())
    }

    /// Admits a MAC key: its blob id must be new.
    pub fn admit_mac(&mut self, blob_id: [u8; 16]) -> Result<()> {
        self.admit_blob(blob_id)?;
        self.imported.insert(blob_id);
        Ok(())
    }

    fn admit_blob(&self, blob_id: [u8; 16]) -> Result<()> {
        if self.imported.contains(&blob_id) {
            return Err(BlobError::Replayed.into());
        }
        Ok(())
    }

    /// Records where a key was when its handle was exported or dropped. A
    /// key that moved to a later generation here leaves its earlier
    /// generations marked live: importing one of those is a rollback too.
    pub fn release(&mut self, key: Fingerprint, at: Position) {
        let mark = self.marks.entry(key).or_insert(Mark {
            reached: at,
            live: false,
        });
        mark.reached = mark.reached.max(at);
        mark.live = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    const K7S: Fingerprint = [7; 16];
    const K7O: Fingerprint = [8; 16];
    const AT0: Position = Position {
        generation: 0,
        sequence: 0,
    };

    #[test]
    fn blob_ids_are_single_use() {
        let mut r = Registry::default();
        r.admit_traffic([1; 16], K7S, AT0).unwrap();
        r.release(K7S, AT0);
        assert_eq!(
            r.admit_traffic([1; 16], K7S, AT0),
            Err(Error::Blob(BlobError::Replayed))
        );
        r.admit_mac([2; 16]).unwrap();
        assert_eq!(r.admit_mac([2; 16]), Err(Error::Blob(BlobError::Replayed)));
    }

    #[test]
    fn a_live_key_cannot_be_imported_twice() {
        let mut r = Registry::default();
        r.admit_traffic([1; 16], K7S, AT0).unwrap();
        assert_eq!(
            r.admit_traffic([2; 16], K7S, AT0),
            Err(Error::Blob(BlobError::Replayed))
        );
        // The other direction of the same connection is another key.
        r.admit_traffic([3; 16], K7O, AT0).unwrap();
    }

    #[test]
    fn rollback_is_refused_and_progress_accepted() {
        let mut r = Registry::default();
        r.admit_traffic([1; 16], K7S, AT0).unwrap();
        r.release(
            K7S,
            Position {
                generation: 1,
                sequence: 5,
            },
        );
        let behind = Position {
            generation: 1,
            sequence: 4,
        };
        assert_eq!(
            r.admit_traffic([2; 16], K7S, behind),
            Err(Error::Blob(BlobError::SequenceRollback))
        );
        let older_generation = Position {
            generation: 0,
            sequence: 1000,
        };
        assert_eq!(
            r.admit_traffic([3; 16], K7S, older_generation),
            Err(Error::Blob(BlobError::SequenceRollback))
        );
        r.admit_traffic(
            [4; 16],
            K7S,
            Position {
                generation: 1,
                sequence: 5,
            },
        )
        .unwrap();
    }
}
