//! Cost tiers: how dear an endpoint is for a subscriber. By default 0 in the
//! subscriber's zone, 1 elsewhere in its cluster and 2 in another cluster. Users
//! override the tier of a locality class per Service or Namespace (annotation
//! `balancer.meshlink.io/tiers`, Service first) and per zone pair (a ConfigMap of
//! relative costs). Parsing is strict and returns a reason; callers log it and
//! keep what they had, so a typo never stops discovery.

use std::collections::HashMap;

/// Where an endpoint is relative to the subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Locality {
    /// Same zone, same cluster.
    SameZone,
    /// Same cluster, another (or unknown) zone.
    SameCluster,
    /// Another cluster.
    OtherCluster,
}

impl Locality {
    /// The tier when nothing overrides it.
    pub fn default_tier(self) -> u32 {
        match self {
            Self::SameZone => 0,
            Self::SameCluster => 1,
            Self::OtherCluster => 2,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::SameZone => "same-zone",
            Self::SameCluster => "same-cluster",
            Self::OtherCluster => "other-cluster",
        }
    }
}

const LOCALITIES: [Locality; 3] = [
    Locality::SameZone,
    Locality::SameCluster,
    Locality::OtherCluster,
];

/// Tier overrides per locality, from a `balancer.meshlink.io/tiers` annotation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TierOverrides([Option<u32>; 3]);

/// Why an annotation or ConfigMap was ignored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TiersError {
    /// An annotation entry that is not `<locality>=<tier>`.
    #[error(
        "entry {0:?} is not <locality>=<tier> with locality same-zone, same-cluster or other-cluster and tier a non-negative integer"
    )]
    Entry(String),
    /// A locality named twice.
    #[error("locality {0:?} is given twice")]
    Duplicate(String),
    /// An annotation with no entries.
    #[error("no entries (expected e.g. same-zone=0,same-cluster=1,other-cluster=2)")]
    Empty,
    /// A ConfigMap line that is not `<from-zone> <to-zone> <cost>`.
    #[error("line {0}: {1:?} is not <from-zone> <to-zone> <cost>")]
    Line(usize, String),
    /// A ConfigMap without the `costs` key.
    #[error("no {ZONE_COSTS_KEY:?} key in the ConfigMap's data")]
    NoCosts,
}

impl TierOverrides {
    /// Parses `same-zone=0,same-cluster=1,other-cluster=2`; any subset, any order.
    pub fn parse(text: &str) -> Result<Self, TiersError> {
        let mut tiers = [None; 3];
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = || TiersError::Entry(entry.to_string());
            let (name, tier) = entry.split_once('=').ok_or_else(bad)?;
            let slot = LOCALITIES
                .iter()
                .position(|l| l.key() == name.trim())
                .ok_or_else(bad)?;
            let tier = tier.trim().parse::<u32>().map_err(|_| bad())?;
            if tiers[slot].replace(tier).is_some() {
                return Err(TiersError::Duplicate(name.trim().to_string()));
            }
        }
        if tiers.iter().all(Option::is_none) {
            return Err(TiersError::Empty);
        }
        Ok(Self(tiers))
    }

    fn get(&self, locality: Locality) -> Option<u32> {
        self.0[locality as usize]
    }
}

/// The ConfigMap data key holding zone-pair costs.
pub const ZONE_COSTS_KEY: &str = "costs";

/// Relative costs between zone pairs, from a ConfigMap whose `costs` key holds
/// lines `<from-zone> <to-zone> <cost>` (`#` starts a comment). A pair applies
/// both ways unless the reverse pair has its own line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ZoneCosts(HashMap<(String, String), u32>);

impl ZoneCosts {
    /// Parses a ConfigMap's data.
    pub fn from_data(
        data: Option<&std::collections::BTreeMap<String, String>>,
    ) -> Result<Self, TiersError> {
        let text = data
            .and_then(|d| d.get(ZONE_COSTS_KEY))
            .ok_or(TiersError::NoCosts)?;
        Self::parse(text)
    }

    /// Parses the `costs` text.
    pub fn parse(text: &str) -> Result<Self, TiersError> {
        let mut explicit = HashMap::new();
        let mut reverse = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let bad = || TiersError::Line(n + 1, line.to_string());
            let [from, to, cost] = line.split_whitespace().collect::<Vec<_>>()[..] else {
                return Err(bad());
            };
            let cost = cost.parse::<u32>().map_err(|_| bad())?;
            explicit.insert((from.to_string(), to.to_string()), cost);
            reverse.insert((to.to_string(), from.to_string()), cost);
        }
        reverse.extend(explicit);
        Ok(Self(reverse))
    }

    fn get(&self, from: &str, to: &str) -> Option<u32> {
        self.0.get(&(from.to_string(), to.to_string())).copied()
    }
}

/// The tier of an endpoint in `to_zone` for a subscriber in `from_zone`: the
/// Service's annotation, else the Namespace's, else the zone pair's cost (when
/// both zones are known), else the locality's default.
pub fn tier(
    locality: Locality,
    from_zone: &str,
    to_zone: &str,
    service: Option<&TierOverrides>,
    namespace: Option<&TierOverrides>,
    zones: &ZoneCosts,
) -> u32 {
    let pair = || {
        (!from_zone.is_empty() && !to_zone.is_empty())
            .then(|| zones.get(from_zone, to_zone))
            .flatten()
    };
    service
        .and_then(|t| t.get(locality))
        .or_else(|| namespace.and_then(|t| t.get(locality)))
        .or_else(pair)
        .unwrap_or(locality.default_tier())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on bad fixtures
mod tests {
    use super::*;

    #[test]
    fn annotations_parse_any_subset() {
        let t = TierOverrides::parse(" other-cluster=5 , same-cluster=0").unwrap();
        assert_eq!(t.get(Locality::SameZone), None);
        assert_eq!(t.get(Locality::SameCluster), Some(0));
        assert_eq!(t.get(Locality::OtherCluster), Some(5));
    }

    #[test]
    fn bad_annotations_name_the_problem() {
        for (text, want) in [
            ("same-zone", TiersError::Entry("same-zone".into())),
            ("zone=1", TiersError::Entry("zone=1".into())),
            ("same-zone=-1", TiersError::Entry("same-zone=-1".into())),
            (
                "same-zone=1,same-zone=2",
                TiersError::Duplicate("same-zone".into()),
            ),
            (" , ", TiersError::Empty),
        ] {
            assert_eq!(TierOverrides::parse(text), Err(want), "{text}");
        }
        assert!(
            TiersError::Entry("x".into())
                .to_string()
                .contains("same-zone, same-cluster or other-cluster")
        );
    }

    #[test]
    fn zone_costs_are_symmetric_unless_both_ways_are_given() {
        let z = ZoneCosts::parse("# costs\na b 1\nb a 3 # dear back\n\na c 7\n").unwrap();
        assert_eq!(z.get("a", "b"), Some(1));
        assert_eq!(z.get("b", "a"), Some(3));
        assert_eq!(z.get("a", "c"), Some(7));
        assert_eq!(z.get("c", "a"), Some(7));
        assert_eq!(z.get("b", "c"), None);
    }

    #[test]
    fn bad_zone_costs_name_the_line() {
        assert_eq!(
            ZoneCosts::parse("a b 1\na b\n"),
            Err(TiersError::Line(2, "a b".into()))
        );
        assert_eq!(
            ZoneCosts::parse("a b x"),
            Err(TiersError::Line(1, "a b x".into()))
        );
        assert_eq!(ZoneCosts::from_data(None), Err(TiersError::NoCosts));
    }

    #[test]
    fn service_beats_namespace_beats_zone_pair_beats_default() {
        let zones = ZoneCosts::parse("a b 4").unwrap();
        let svc = TierOverrides::parse("same-cluster=9").unwrap();
        let ns = TierOverrides::parse("same-cluster=8,same-zone=3").unwrap();
        let t = |l, to, s, n| tier(l, "a", to, s, n, &zones);
        assert_eq!(t(Locality::SameCluster, "b", Some(&svc), Some(&ns)), 9);
        assert_eq!(t(Locality::SameCluster, "b", None, Some(&ns)), 8);
        assert_eq!(t(Locality::SameZone, "a", Some(&svc), Some(&ns)), 3);
        assert_eq!(t(Locality::SameCluster, "b", None, None), 4);
        assert_eq!(t(Locality::SameCluster, "c", None, None), 1);
        assert_eq!(t(Locality::SameCluster, "", None, None), 1);
        assert_eq!(t(Locality::OtherCluster, "x", None, None), 2);
        assert_eq!(t(Locality::SameZone, "a", None, None), 0);
    }
}
