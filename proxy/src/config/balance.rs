//! Balancer flags, shared by proxy and gateway: the tier policy, its water
//! marks and the EWMA decay, validated into a [`BalanceConfig`].

use std::time::Duration;

use clap::Args;

use crate::Error;
use crate::balance::BalanceConfig;
use crate::balance::tiered::{Policy, TierConfig};

/// How requests are balanced over a target's endpoints.
#[derive(Debug, Clone, Args)]
pub struct BalanceArgs {
    /// Which endpoints to use: `tiered` (the cheapest tier that can take the
    /// load), `all` (plain P2C, tiers ignored) or `cheapest` (the cheapest tier
    /// only, however loaded).
    #[arg(long, env = "MESHLINK_BALANCE_POLICY", value_enum, default_value_t = Policy::Tiered)]
    pub balance_policy: Policy,
    /// A tier's load, in in-flight equivalents per endpoint, above which the
    /// next tier is phased in.
    #[arg(long, env = "MESHLINK_BALANCE_HIGH_WATER", default_value_t = 8.0)]
    pub balance_high_water: f64,
    /// The load below which the last added tier is phased out again.
    #[arg(long, env = "MESHLINK_BALANCE_LOW_WATER", default_value_t = 4.0)]
    pub balance_low_water: f64,
    /// The peak-EWMA decay time constant, in milliseconds.
    #[arg(long, env = "MESHLINK_BALANCE_DECAY_MS", default_value_t = 10_000)]
    pub balance_decay_ms: u64,
}

impl BalanceArgs {
    /// The validated balancer settings.
    pub fn config(&self) -> Result<BalanceConfig, Error> {
        let Self {
            balance_policy,
            balance_high_water: high,
            balance_low_water: low,
            balance_decay_ms,
        } = *self;
        if !(low.is_finite() && high.is_finite() && 0.0 < low && low < high) {
            return Err(Error::Config(format!(
                "balance-low-water {low} and balance-high-water {high} must satisfy 0 < low < high"
            )));
        }
        if balance_decay_ms == 0 {
            return Err(Error::Config(
                "balance-decay-ms must be greater than zero".into(),
            ));
        }
        let defaults = BalanceConfig::default();
        Ok(BalanceConfig {
            decay: Duration::from_millis(balance_decay_ms),
            tiers: TierConfig {
                policy: balance_policy,
                high_water: high,
                low_water: low,
                ..defaults.tiers
            },
            ..defaults
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on bad fixtures
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        balance: BalanceArgs,
    }

    fn parse(args: &[&str]) -> Result<BalanceConfig, String> {
        let argv = std::iter::once("x").chain(args.iter().copied());
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        cli.balance.config().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_overrides() {
        let d = parse(&[]).unwrap();
        assert_eq!(d.tiers.policy, Policy::Tiered);
        assert_eq!((d.tiers.high_water, d.tiers.low_water), (8.0, 4.0));
        assert_eq!(d.decay, Duration::from_secs(10));
        let c = parse(&[
            "--balance-policy=cheapest",
            "--balance-high-water=3",
            "--balance-low-water=1.5",
            "--balance-decay-ms=500",
        ])
        .unwrap();
        assert_eq!(c.tiers.policy, Policy::Cheapest);
        assert_eq!((c.tiers.high_water, c.tiers.low_water), (3.0, 1.5));
        assert_eq!(c.decay, Duration::from_millis(500));
    }

    #[test]
    fn bad_values_name_the_flag() {
        for args in [
            &["--balance-low-water=8"][..],
            &["--balance-low-water=0"],
            &["--balance-high-water=NaN"],
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains("balance-low-water"), "{args:?}: {err}");
        }
        assert!(
            parse(&["--balance-decay-ms=0"])
                .unwrap_err()
                .contains("balance-decay-ms")
        );
        assert!(
            parse(&["--balance-policy=random"])
                .unwrap_err()
                .contains("random")
        );
    }
}
