//! Bounded, jittered exponential backoff for transient errors only.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use crate::error::{ConnectorError, Result};

/// How often and how patiently to retry a failed operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 disables retrying.
    pub max_retries: u32,
    /// Delay before the first retry; doubles each time.
    pub base_delay: Duration,
    /// No single wait is longer than this.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_retries: 3, base_delay: Duration::from_secs(5), max_delay: Duration::from_secs(300) }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0-based): `base * 2^retry`, capped, with the
    /// upper half jittered so that parallel workers do not retry in lockstep.
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = self.base_delay.saturating_mul(1u32.checked_shl(retry.min(20)).unwrap_or(u32::MAX));
        let capped = exp.min(self.max_delay);
        let half = capped / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(if jitter_ms == 0 { 0 } else { rand::rng().random_range(0..=jitter_ms) })
    }

    /// Runs `op` until it succeeds, fails with a non-transient error, or retries run out.
    /// `on_retry` hears about each retry (attempt number from 1, the error, the wait).
    pub async fn run<T, F, Fut>(&self, mut op: F, mut on_retry: impl FnMut(u32, &ConnectorError, Duration)) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut retry = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && retry < self.max_retries => {
                    let wait = self.delay(retry);
                    retry += 1;
                    on_retry(retry, &e, wait);
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast(max_retries: u32) -> RetryPolicy {
        RetryPolicy { max_retries, base_delay: Duration::from_millis(1), max_delay: Duration::from_millis(4) }
    }

    #[tokio::test]
    async fn retries_transient_errors_until_success() {
        let calls = AtomicU32::new(0);
        let mut retries = 0;
        let out = fast(3)
            .run(
                || async {
                    if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                        Err(ConnectorError::transient("server has gone away"))
                    } else {
                        Ok(7)
                    }
                },
                |_, _, _| retries += 1,
            )
            .await;
        assert_eq!(out.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(retries, 2);
    }

    #[tokio::test]
    async fn never_retries_permanent_errors_and_stops_at_the_bound() {
        let calls = AtomicU32::new(0);
        let out: Result<()> = fast(5)
            .run(
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(ConnectorError::permanent("no such table"))
                },
                |_, _, _| {},
            )
            .await;
        assert!(out.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let calls = AtomicU32::new(0);
        let out: Result<()> = fast(2)
            .run(
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(ConnectorError::transient("503"))
                },
                |_, _, _| {},
            )
            .await;
        assert!(out.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn delay_grows_and_is_capped() {
        let p = RetryPolicy { max_retries: 10, base_delay: Duration::from_secs(1), max_delay: Duration::from_secs(8) };
        for retry in 0..10 {
            let d = p.delay(retry);
            let full = Duration::from_secs(1 << retry.min(3));
            assert!(d >= full / 2 && d <= full, "retry {retry}: {d:?}");
        }
    }
}
