//! A memory budget for the response bodies the client reads whole (manifests, tag pages,
//! token and error answers). Each is capped on its own, but many entries resolved at once
//! against a registry that answers every request with a body at its cap would add up: the
//! budget bounds their sum. Blob bodies stream and are not counted.
//!
//! A body's bytes are reserved before they are read (all at once when the registry declares a
//! length within the cap, else chunk by chunk) and stay reserved as long as anyone holds the
//! body (a [`Held`] travels with a fetched manifest). A request that waits for the budget
//! waits inside its request timeout, so a budget held by a hostile registry's answers turns
//! into timeouts, not into memory.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of buffered bodies held at once across one client.
pub const MAX_BUFFERED_BYTES: usize = 48 << 20;

/// The budget was closed: the client is shutting down.
#[derive(Debug)]
pub struct Closed;

/// The bytes one body has reserved so far.
#[derive(Default)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// Bytes reserved.
    pub fn bytes(&self) -> usize {
        self.permit
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Reserves up to `bytes` in total, waiting for the budget as needed.
    pub async fn grow_to(&mut self, pool: &Arc<Semaphore>, bytes: usize) -> Result<(), Closed> {
        let more = bytes.saturating_sub(self.bytes());
        if more == 0 {
            return Ok(());
        }
        // A single body is capped far below the budget; clamp anyway so that an acquire can
        // never ask for more than the pool has (it would wait forever).
        let more = u32::try_from(more.min(MAX_BUFFERED_BYTES)).map_err(|_| Closed)?;
        let permit = pool
            .clone()
            .acquire_many_owned(more)
            .await
            .map_err(|_| Closed)?;
        match &mut self.permit {
            Some(held) => held.merge(permit),
            None => self.permit = Some(permit),
        }
        Ok(())
    }

    /// Gives back what is reserved beyond `bytes` (a declared length that was too long).
    pub fn shrink_to(&mut self, bytes: usize) {
        let surplus = self.bytes().saturating_sub(bytes);
        if surplus > 0
            && let Some(held) = &mut self.permit
        {
            drop(held.split(surplus));
        }
    }

    /// The reservation as something a body's holders can share.
    pub fn into_held(self) -> Held {
        Held(self.permit.map(Arc::new))
    }
}

/// A body's reserved bytes, released when the last clone is dropped.
#[derive(Clone, Default)]
pub struct Held(Option<Arc<OwnedSemaphorePermit>>);

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = self.0.as_ref().map_or(0, |p| p.num_permits());
        write!(f, "Held({bytes} bytes)")
    }
}

/// Bookkeeping, not content: two bodies are equal whatever they hold of the budget.
impl PartialEq for Held {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Held {}

/// A fresh budget of [`MAX_BUFFERED_BYTES`].
pub fn pool() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(MAX_BUFFERED_BYTES))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_grow_shrink_and_come_back_when_dropped() {
        let pool = pool();
        let mut first = Reservation::default();
        first.grow_to(&pool, 1000).await.unwrap();
        first.grow_to(&pool, 3000).await.unwrap();
        first.grow_to(&pool, 2000).await.unwrap();
        assert_eq!(first.bytes(), 3000);
        first.shrink_to(500);
        assert_eq!(first.bytes(), 500);
        assert_eq!(pool.available_permits(), MAX_BUFFERED_BYTES - 500);
        let held = first.into_held();
        let copy = held.clone();
        drop(held);
        assert_eq!(pool.available_permits(), MAX_BUFFERED_BYTES - 500);
        drop(copy);
        assert_eq!(pool.available_permits(), MAX_BUFFERED_BYTES);
    }

    #[tokio::test]
    async fn a_full_budget_makes_the_next_body_wait() {
        let pool = pool();
        let mut all = Reservation::default();
        all.grow_to(&pool, MAX_BUFFERED_BYTES).await.unwrap();
        let mut next = Reservation::default();
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(50), next.grow_to(&pool, 1))
                .await;
        assert!(waited.is_err(), "no budget left: the read waits");
        drop(all);
        next.grow_to(&pool, 1).await.unwrap();
    }
}
