//! The first retained offset: where the log begins once retention has removed older events.
//!
//! Offsets below it are never served again (reads fail with [`StoreError::Trimmed`]); offsets
//! are never reused, so the head does not move back when everything is removed.

use tokio::sync::watch;

use super::{StoreError, codec::decode_offset, keys};

/// The first retained offset, readable by every reader and watchable by consumers that must
/// react when it moves (webhooks, consumer groups).
pub struct FirstOffset {
    tx: watch::Sender<u64>,
}

impl FirstOffset {
    /// The value stored in sled (1 when nothing was ever removed).
    pub fn load(tree: &sled::Tree) -> Result<Self, StoreError> {
        let first = match tree.get(keys::FIRST_RETAINED)? {
            Some(bytes) => decode_offset(&bytes, "first retained offset")?,
            None => 1,
        };
        Ok(Self {
            tx: watch::channel(first.max(1)).0,
        })
    }

    pub fn get(&self) -> u64 {
        *self.tx.borrow()
    }

    pub fn watch(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    /// Moves the first offset up (never down). Readers that started below it notice when they
    /// check it again after reading (see `SledLog::read_page`).
    pub fn raise(&self, first: u64) {
        self.tx.send_if_modified(|current| {
            let raised = first > *current;
            if raised {
                *current = first;
            }
            raised
        });
    }

    /// Fails with [`StoreError::Trimmed`] when `offset` is below the first retained offset.
    pub fn check(&self, offset: u64) -> Result<(), StoreError> {
        let first = self.get();
        if offset < first {
            return Err(StoreError::Trimmed {
                requested: offset,
                first,
            });
        }
        Ok(())
    }
}
