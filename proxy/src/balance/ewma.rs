//! Peak-EWMA load estimate for one endpoint (as in Finagle and linkerd): an
//! exponentially weighted moving average of round-trip time that jumps straight up
//! to any slower observation (the peak) and decays back down over time, multiplied
//! by the number of requests in flight plus one. Reacting fast to slowness and
//! slowly to speed keeps a struggling endpoint from being piled on.
//!
//! For cost tiers it also keeps a per-sample mean RTT (one outlier moves it a
//! little, a real slowdown within a few requests) and that mean's floor, the
//! lowest it has been, which rises only slowly: the endpoint's unloaded latency.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The load estimate of one endpoint.
#[derive(Debug)]
pub struct PeakEwma {
    decay_ns: f64,
    in_flight: AtomicUsize,
    rtt: Mutex<Rtt>,
}

#[derive(Debug)]
struct Rtt {
    ewma_ns: f64,
    stamp: Instant,
    /// Mean and floor, once a round trip has been observed.
    mean: Option<Mean>,
}

#[derive(Clone, Copy, Debug)]
struct Mean {
    mean_ns: f64,
    floor_ns: f64,
}

/// How much one sample moves the mean.
const MEAN_ALPHA: f64 = 0.1;
/// The floor rises toward the mean this many decay times slower than the EWMA
/// decays, so a lasting change of latency becomes the new normal only slowly.
const FLOOR_SLOWNESS: f64 = 10.0;

impl PeakEwma {
    /// A fresh estimate that assumes `default_rtt` until it observes one.
    pub fn new(default_rtt: Duration, decay: Duration, now: Instant) -> Self {
        Self {
            decay_ns: decay.as_nanos().max(1) as f64,
            in_flight: AtomicUsize::new(0),
            rtt: Mutex::new(Rtt {
                ewma_ns: default_rtt.as_nanos() as f64,
                stamp: now,
                mean: None,
            }),
        }
    }

    /// Records one observed round trip.
    pub fn observe(&self, rtt: Duration, now: Instant) {
        let rtt_ns = rtt.as_nanos() as f64;
        let mut s = self.rtt.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(s.stamp);
        s.mean = Some(match s.mean {
            None => Mean {
                mean_ns: rtt_ns,
                floor_ns: rtt_ns,
            },
            Some(m) => {
                let mean_ns = m.mean_ns + MEAN_ALPHA * (rtt_ns - m.mean_ns);
                let rise = 1.0 - self.weight(elapsed.div_f64(FLOOR_SLOWNESS));
                let floor_ns = if mean_ns < m.floor_ns {
                    mean_ns
                } else {
                    m.floor_ns + (mean_ns - m.floor_ns) * rise
                };
                Mean { mean_ns, floor_ns }
            }
        });
        if rtt_ns > s.ewma_ns {
            s.ewma_ns = rtt_ns;
        } else {
            let w = self.weight(elapsed);
            s.ewma_ns = s.ewma_ns * w + rtt_ns * (1.0 - w);
        }
        s.stamp = now;
    }

    /// The cost of sending one more request: decayed RTT × (in flight + 1).
    pub fn cost(&self, now: Instant) -> f64 {
        let pending = self.in_flight.load(Ordering::Relaxed) as f64;
        let s = self.rtt.lock().unwrap_or_else(|e| e.into_inner());
        // Decay toward zero while idle so a once-slow endpoint is tried again.
        let idle = self.weight(now.saturating_duration_since(s.stamp));
        s.ewma_ns * idle * (pending + 1.0)
    }

    /// The per-sample mean RTT and its floor in nanoseconds, once observed.
    pub fn mean_and_floor(&self) -> Option<(f64, f64)> {
        let s = self.rtt.lock().unwrap_or_else(|e| e.into_inner());
        s.mean.map(|m| (m.mean_ns, m.floor_ns))
    }

    /// Marks a request as started.
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks a request as finished.
    pub fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Requests currently in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn weight(&self, elapsed: Duration) -> f64 {
        (-(elapsed.as_nanos() as f64) / self.decay_ns).exp()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on bad fixtures
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn peaks_up_immediately_and_decays_down_slowly() {
        let t0 = Instant::now();
        let e = PeakEwma::new(MS, Duration::from_secs(10), t0);
        e.observe(100 * MS, t0);
        assert!((e.cost(t0) - 100e6).abs() < 1.0, "jumps to the peak");
        e.observe(MS, t0 + MS);
        assert!(e.cost(t0 + MS) > 99e6, "one fast sample barely lowers it");
        assert!(e.cost(t0 + Duration::from_secs(60)) < 1e6, "idle decay");
    }

    #[test]
    fn mean_follows_samples_and_floor_rises_slowly() {
        let t0 = Instant::now();
        let decay = Duration::from_secs(1);
        let e = PeakEwma::new(MS, decay, t0);
        assert_eq!(e.mean_and_floor(), None);
        e.observe(MS, t0);
        e.observe(21 * MS, t0 + MS);
        let (mean, floor) = e.mean_and_floor().unwrap();
        assert!(
            (mean - 3e6).abs() < 1.0,
            "one outlier moves the mean a tenth"
        );
        assert!(floor < 1.1e6, "and the floor hardly: {floor}");
        for i in 2..40 {
            e.observe(50 * MS, t0 + i * MS);
        }
        let (mean, floor) = e.mean_and_floor().unwrap();
        assert!(
            mean > 45e6,
            "a real slowdown shows within a few dozen samples"
        );
        assert!(
            floor < 2e6,
            "the floor remembers the unloaded latency: {floor}"
        );
        e.observe(50 * MS, t0 + 100 * decay);
        let (_, floor) = e.mean_and_floor().unwrap();
        assert!(floor > 40e6, "a lasting change becomes the floor: {floor}");
    }

    #[test]
    fn in_flight_multiplies_cost() {
        let t0 = Instant::now();
        let e = PeakEwma::new(10 * MS, Duration::from_secs(10), t0);
        let idle = e.cost(t0);
        e.start();
        e.start();
        assert!((e.cost(t0) - 3.0 * idle).abs() < 1.0);
        e.end();
        e.end();
        assert_eq!(e.in_flight(), 0);
    }
}
