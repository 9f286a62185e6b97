//! What one instance remembers about the keys it has held, so a blob cannot
//! be imported twice and a key cannot come back at an older sequence number.
//!
//! A rollback is how AES-GCM nonces get reused, and reuse is fatal, so the
//! check runs before any key is built.

use alloc::collections::BTreeMap;

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
    /// The exchange-key epoch the mark was last written in.
    epoch: u32,
}

/// Imported blob ids and per-key high-water marks of one instance, each
/// with the exchange-key epoch it belongs to.
#[derive(Default)]
pub struct Registry {
    imported: BTreeMap<[u8; 16], u32>,
    marks: BTreeMap<Fingerprint, Mark>,
}

impl Registry {
    /// Admits a traffic key: refuses a blob id seen before, a second live
    /// copy of a key, and a position behind one already reached.
    pub fn admit_traffic(
        &mut self,
        blob_id: [u8; 16],
        key: Fingerprint,
        at: Position,
        epoch: u32,
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
        self.imported.insert(blob_id, epoch);
        self.marks.insert(
            key,
            Mark {
                reached: at,
                live: true,
                epoch,
            },
        );
        Ok(())
    }

    /// Admits a MAC key: its blob id must be new.
    pub fn admit_mac(&mut self, blob_id: [u8; 16], epoch: u32) -> Result<()> {
        self.admit_blob(blob_id)?;
        self.imported.insert(blob_id, epoch);
        Ok(())
    }

    /// Forgets blob ids and released marks older than `epoch`: blobs sealed
    /// to those exchange keys can no longer be opened, so they cannot be
    /// replayed. Marks of keys still live here are kept.
    pub fn retire_before(&mut self, epoch: u32) {
        self.imported.retain(|_, e| *e >= epoch);
        self.marks.retain(|_, m| m.live || m.epoch >= epoch);
    }

    /// Entries remembered.
    pub fn len(&self) -> usize {
        self.imported.len() + self.marks.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn admit_blob(&self, blob_id: [u8; 16]) -> Result<()> {
        if self.imported.contains_key(&blob_id) {
            return Err(BlobError::Replayed.into());
        }
        Ok(())
    }

    /// Records where a key was when its handle was exported or dropped. A
    /// key that moved to a later generation here leaves its earlier
    /// generations marked live: importing one of those is a rollback too.
    pub fn release(&mut self, key: Fingerprint, at: Position, epoch: u32) {
        let mark = self.marks.entry(key).or_insert(Mark {
            reached: at,
            live: false,
            epoch,
        });
        mark.reached = mark.reached.max(at);
        mark.live = false;
        mark.epoch = epoch;
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
        r.admit_traffic([1; 16], K7S, AT0, 0).unwrap();
        r.release(K7S, AT0, 0);
        assert_eq!(
            r.admit_traffic([1; 16], K7S, AT0, 0),
            Err(Error::Blob(BlobError::Replayed))
        );
        r.admit_mac([2; 16], 0).unwrap();
        assert_eq!(
            r.admit_mac([2; 16], 0),
            Err(Error::Blob(BlobError::Replayed))
        );
    }

    #[test]
    fn a_live_key_cannot_be_imported_twice() {
        let mut r = Registry::default();
        r.admit_traffic([1; 16], K7S, AT0, 0).unwrap();
        assert_eq!(
            r.admit_traffic([2; 16], K7S, AT0, 0),
            Err(Error::Blob(BlobError::Replayed))
        );
        // The other direction of the same connection is another key.
        r.admit_traffic([3; 16], K7O, AT0, 0).unwrap();
    }

    #[test]
    fn rollback_is_refused_and_progress_accepted() {
        let mut r = Registry::default();
        r.admit_traffic([1; 16], K7S, AT0, 0).unwrap();
        r.release(
            K7S,
            Position {
                generation: 1,
                sequence: 5,
            },
            0,
        );
        let behind = Position {
            generation: 1,
            sequence: 4,
        };
        assert_eq!(
            r.admit_traffic([2; 16], K7S, behind, 0),
            Err(Error::Blob(BlobError::SequenceRollback))
        );
        let older_generation = Position {
            generation: 0,
            sequence: 1000,
        };
        assert_eq!(
            r.admit_traffic([3; 16], K7S, older_generation, 0),
            Err(Error::Blob(BlobError::SequenceRollback))
        );
        r.admit_traffic(
            [4; 16],
            K7S,
            Position {
                generation: 1,
                sequence: 5,
            },
            0,
        )
        .unwrap();
    }

    #[test]
    fn retiring_an_epoch_forgets_released_entries_but_not_live_keys() {
        let mut r = Registry::default();
        r.admit_traffic([1; 16], K7S, AT0, 0).unwrap();
        r.admit_traffic([2; 16], K7O, AT0, 0).unwrap();
        r.release(K7S, AT0, 0);
        r.admit_mac([3; 16], 0).unwrap();
        r.admit_traffic([4; 16], [9; 16], AT0, 1).unwrap();
        r.retire_before(1);
        // Epoch 0's blob ids and released marks are gone; the live key K7O
        // is still known, so a second copy of it is still refused.
        assert_eq!(r.len(), 1 + 1 + 1);
        assert_eq!(
            r.admit_traffic([5; 16], K7O, AT0, 1),
            Err(Error::Blob(BlobError::Replayed))
        );
    }
}
