//! The memory budget: every byte read into memory for a transfer is paid for here first and
//! released when the destination has it, so the data in flight never exceeds the budget,
//! however many files and parts run at once.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits are KiB so that a budget of terabytes still fits a semaphore's `u32` requests.
const UNIT: u64 = 1024;

#[derive(Clone)]
pub struct Budget {
    permits: Arc<Semaphore>,
    total_units: u32,
}

impl Budget {
    pub fn new(bytes: u64) -> Self {
        let total_units = u32::try_from(bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX);
        Self {
            permits: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
        }
    }

    /// Waits until `bytes` may be held. A request larger than the whole budget takes the
    /// whole budget (it then runs alone) rather than waiting forever.
    pub async fn acquire(&self, bytes: u64) -> OwnedSemaphorePermit {
        let units = u32::try_from(bytes.div_ceil(UNIT).max(1))
            .unwrap_or(u32::MAX)
            .min(self.total_units);
        self.permits
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("the budget's semaphore is never closed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use futures::FutureExt;

    #[tokio::test]
    async fn holders_beyond_the_budget_wait_until_bytes_are_released() {
        let budget = Budget::new(10 * 1024);
        let first = budget.acquire(6 * 1024).await;
        // 6 of 10 KiB are held: another 6 KiB must wait.
        assert!(budget.acquire(6 * 1024).now_or_never().is_none());
        assert!(budget.acquire(4 * 1024).now_or_never().is_some());
        drop(first);
        let second = budget.acquire(6 * 1024).now_or_never();
        assert!(second.is_some());
        drop(second);
        // Oversized requests are clamped to the whole budget instead of waiting forever.
        assert!(budget.acquire(1 << 40).now_or_never().is_some());
    }
}
