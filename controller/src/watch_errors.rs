//! Logging of watch failures that does not flood: a resource type the cluster
//! does not serve (its CRD is not installed) is reported once and then retried
//! quietly, while every other failure is a warning each time. [`CrdBackoff`] is
//! the retry pace for such optional types.

use std::time::Duration;

use kube::runtime::utils::Backoff;
use kube::runtime::watcher;

/// Retry pace for watches of a type whose CRD may be installed after the
/// controller starts (TrafficSplit): doubling from 0.5 s, at most 5 s apart.
/// kube's default backoff grows to 30 s, so a CRD installed a minute after
/// start could go unnoticed for up to half a minute more.
#[derive(Debug, Clone)]
pub struct CrdBackoff {
    next: Duration,
}

impl CrdBackoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(5);
}

impl Default for CrdBackoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Iterator for CrdBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (delay * 2).min(Self::MAX);
        Some(delay)
    }
}

impl Backoff for CrdBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// The logging state of one watch.
#[derive(Debug)]
pub struct WatchErrors {
    kind: &'static str,
    missing: bool,
}

impl WatchErrors {
    /// For a watch of `kind` (e.g. `"TrafficSplit"`).
    pub fn new(kind: &'static str) -> Self {
        Self {
            kind,
            missing: false,
        }
    }

    /// Records an event: once the type is served again, says so. The watcher
    /// emits `Init` before each list attempt, so only later events show that
    /// the type is served.
    pub fn ok<K>(&mut self, event: &watcher::Event<K>) {
        if matches!(event, watcher::Event::Init) {
            return;
        }
        if std::mem::take(&mut self.missing) {
            tracing::info!(kind = self.kind, "resource type is served now; watching it");
        }
    }

    /// Logs a failed watch attempt (the watcher retries it with backoff).
    pub fn failed(&mut self, error: &watcher::Error) {
        if !is_not_served(error) {
            tracing::warn!(kind = self.kind, %error, "watch failed; retrying with backoff");
        } else if !std::mem::replace(&mut self.missing, true) {
            tracing::warn!(
                kind = self.kind,
                "the cluster does not serve this resource type (is its CRD installed?); \
                 retrying quietly until it does"
            );
        } else {
            tracing::debug!(kind = self.kind, %error, "resource type still not served");
        }
    }
}

/// Whether the apiserver answered 404 for the resource type itself (its body is
/// then a plain "404 page not found", not a Status, so only the code tells).
fn is_not_served(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code == 404,
        watcher::Error::WatchError(status) => status.code == 404,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_backoff_doubles_to_five_seconds_and_starts_over_on_reset() {
        let mut b = CrdBackoff::default();
        let ms: Vec<u128> = b.by_ref().take(7).map(|d| d.as_millis()).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 5000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(500)));
    }

    fn api_error(reason: &str, code: u16) -> kube::Error {
        let status =
            kube::core::Status::failure("the server could not find it", reason).with_code(code);
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn a_missing_type_is_reported_once_until_it_is_served() {
        let mut errors = WatchErrors::new("TrafficSplit");
        errors.failed(&watcher::Error::InitialListFailed(api_error(
            "NotFound", 404,
        )));
        assert!(errors.missing);
        errors.failed(&watcher::Error::InitialListFailed(api_error(
            "NotFound", 404,
        )));
        assert!(errors.missing);
        // Each relist starts with Init, before the list that fails again.
        errors.ok(&watcher::Event::<()>::Init);
        assert!(errors.missing, "Init does not show the type is served");
        errors.ok(&watcher::Event::<()>::InitDone);
        assert!(!errors.missing);
    }

    #[test]
    fn other_failures_are_not_taken_for_a_missing_type() {
        let mut errors = WatchErrors::new("TrafficSplit");
        errors.failed(&watcher::Error::InitialListFailed(api_error(
            "Forbidden",
            403,
        )));
        errors.failed(&watcher::Error::NoResourceVersion);
        assert!(!errors.missing);
    }
}
