//! Leader election on a `coordination.k8s.io/v1` Lease, so two replicas of one
//! Link's controller never both write. Every update carries the resourceVersion
//! read just before, so two candidates racing for an expired lease cannot both
//! win. Expiry is judged by how long *this* replica has seen the same lease
//! record unchanged, not by the holder's timestamps, so clock skew between
//! replicas does not matter.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::time::Instant;

use crate::error::{Error, is_conflict};

/// What a candidate should do after reading the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it.
    Acquire,
    /// Someone else holds it and it has not expired.
    Wait,
}

/// Decides from the current holder and how long the record has stayed unchanged.
pub fn decide(
    holder: Option<&str>,
    me: &str,
    unchanged_for: Duration,
    lease_duration: Duration,
) -> Decision {
    match holder {
        Some(h) if h == me => Decision::Renew,
        None | Some("") => Decision::Acquire,
        Some(_) if unchanged_for >= lease_duration => Decision::Acquire,
        Some(_) => Decision::Wait,
    }
}

/// Settings of one election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// This candidate's identity (pod name).
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub duration: Duration,
    /// How often the holder renews (well under `duration`).
    pub renew_every: Duration,
}

/// One candidate in an election.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// resourceVersion last seen and when this replica first saw it.
    observed: Option<(String, Instant)>,
}

impl Elector {
    /// A candidate for the Lease in `api`'s namespace.
    pub fn new(api: Api<Lease>, config: LeaseConfig) -> Self {
        Self {
            api,
            config,
            observed: None,
        }
    }

    /// One round: reads the lease and takes or renews it if allowed. `Ok(true)`
    /// means we hold it until at least `duration` from now.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, Error> {
        let Some(lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = self.lease_record(None, 0, true);
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let now = Instant::now();
        let since = match &self.observed {
            Some((seen, at)) if *seen == rv => *at,
            _ => now,
        };
        self.observed = Some((rv.clone(), since));
        let spec = lease.spec.clone().unwrap_or_default();
        let decision = decide(
            spec.holder_identity.as_deref(),
            &self.config.identity,
            now - since,
            self.config.duration,
        );
        if decision == Decision::Wait {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        let acquiring = decision == Decision::Acquire;
        let mut record = self.lease_record(Some(rv), transitions, acquiring);
        if !acquiring {
            record.spec.get_or_insert_default().acquire_time = spec.acquire_time;
        }
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &record)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn lease_record(&self, rv: Option<String>, transitions: i32, acquiring: bool) -> Lease {
        let now = MicroTime(Timestamp::now());
        Lease {
            metadata: ObjectMeta {
                name: Some(self.config.name.clone()),
                resource_version: rv,
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.config.identity.clone()),
                lease_duration_seconds: Some(
                    i32::try_from(self.config.duration.as_secs().max(1)).unwrap_or(i32::MAX),
                ),
                acquire_time: acquiring.then(|| now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(transitions + i32::from(acquiring)),
                ..LeaseSpec::default()
            }),
        }
    }

    /// Waits until this candidate holds the lease.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "lease acquisition failed"),
            }
            tokio::time::sleep(self.config.renew_every).await;
        }
    }

    /// Renews until leadership is lost: returns once a renewal is refused, or
    /// when renewals have failed for long enough that another replica may take
    /// over (two thirds of the duration), so we stop writing before it can start.
    pub async fn hold(&mut self) {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(self.config.renew_every).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_ok = Instant::now(),
                Ok(false) => {
                    tracing::warn!("lease taken by another replica");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed");
                    if last_ok.elapsed() >= self.config.duration * 2 / 3 {
                        return;
                    }
                }
            }
        }
    }

    /// Gives the lease up so another replica can take over at once.
    pub async fn release(&mut self) {
        let Ok(Some(lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let held = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(self.config.identity.as_str());
        if !held {
            return;
        }
        let mut record = lease;
        if let Some(spec) = record.spec.as_mut() {
            spec.holder_identity = None;
        }
        if let Err(e) = self
            .api
            .replace(&self.config.name, &PostParams::default(), &record)
            .await
        {
            tracing::warn!(error = %e, "lease release failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn holder_renews() {
        assert_eq!(decide(Some("a"), "a", D * 10, D), Decision::Renew);
    }

    #[test]
    fn free_lease_is_acquired() {
        assert_eq!(decide(None, "a", Duration::ZERO, D), Decision::Acquire);
        assert_eq!(decide(Some(""), "a", Duration::ZERO, D), Decision::Acquire);
    }

    #[test]
    fn others_lease_is_taken_only_after_expiry() {
        assert_eq!(decide(Some("b"), "a", D / 2, D), Decision::Wait);
        assert_eq!(decide(Some("b"), "a", D, D), Decision::Acquire);
    }
}
