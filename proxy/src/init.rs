//! `proxy init`: the iptables rules that make interception transparent. Run once in
//! the pod's network namespace before the app starts. Inbound TCP is redirected to
//! the inbound listener, outbound TCP to the outbound listener; the proxy's own
//! traffic is recognised by its uid (`-m owner --uid-owner`) and left alone, so it
//! does not loop through itself. Rules are generated as data first ([`rules`]),
//! so they are unit-tested without a kernel, then applied by running `iptables`.

use std::process::Command;

use crate::Error;

/// The nat chain holding the inbound rules.
pub const INBOUND_CHAIN: &str = "MESHLINK_INBOUND";
/// The nat chain holding the outbound rules.
pub const OUTBOUND_CHAIN: &str = "MESHLINK_OUTPUT";

/// What to intercept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitConfig {
    /// The uid the proxy runs as; its traffic is never redirected.
    pub proxy_uid: u32,
    /// The inbound listener's port.
    pub inbound_port: u16,
    /// The outbound listener's port.
    pub outbound_port: u16,
    /// Inbound destination ports not intercepted (the admin port, say).
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports not intercepted.
    pub skip_outbound_ports: Vec<u16>,
}

/// The iptables argument lists, in order, that set up interception.
pub fn rules(c: &InitConfig) -> Vec<Vec<String>> {
    let uid = c.proxy_uid.to_string();
    let mut out = intercept(
        INBOUND_CHAIN,
        "PREROUTING",
        &[],
        &c.skip_inbound_ports,
        c.inbound_port,
    );
    out.extend(intercept(
        OUTBOUND_CHAIN,
        "OUTPUT",
        &[
            &["-m", "owner", "--uid-owner", &uid],
            // The app talking to itself (and the proxy handing traffic to the app) stays local.
            &["-d", "127.0.0.1/32"],
        ],
        &c.skip_outbound_ports,
        c.outbound_port,
    ));
    out
}

/// Creates the nat chain `chain`, in which the packets matching one of `exempt`
/// or bound for one of `skip_ports` return and all other TCP is redirected to
/// `to_port`, and sends `hook`'s TCP through it.
fn intercept(
    chain: &str,
    hook: &str,
    exempt: &[&[&str]],
    skip_ports: &[u16],
    to_port: u16,
) -> Vec<Vec<String>> {
    let nat = |args: &[&str]| -> Vec<String> {
        ["-t", "nat"]
            .iter()
            .chain(args)
            .map(|a| a.to_string())
            .collect()
    };
    let mut out = vec![nat(&["-N", chain])];
    for matches in exempt {
        out.push(nat(
            &[&["-A", chain][..], matches, &["-j", "RETURN"]].concat()
        ));
    }
    for port in skip_ports {
        let port = port.to_string();
        out.push(nat(&[
            "-A", chain, "-p", "tcp", "--dport", &port, "-j", "RETURN",
        ]));
    }
    let to_port = to_port.to_string();
    out.push(nat(&[
        "-A",
        chain,
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        &to_port,
    ]));
    out.push(nat(&["-A", hook, "-p", "tcp", "-j", chain]));
    out
}

/// Applies [`rules`] by running `program` (e.g. `["iptables"]`, or
/// `["ip", "netns", "exec", "pod", "iptables"]`) once per rule.
pub fn apply(c: &InitConfig, program: &[&str]) -> Result<(), Error> {
    let (bin, prefix) = program
        .split_first()
        .ok_or_else(|| Error::Config("empty iptables command".into()))?;
    for args in rules(c) {
        let status = Command::new(bin).args(prefix).args(&args).status()?;
        if !status.success() {
            return Err(Error::Config(format!(
                "`{} {}` failed: {status}",
                program.join(" "),
                args.join(" ")
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on bad fixtures
mod tests {
    use super::*;

    fn config() -> InitConfig {
        InitConfig {
            proxy_uid: 2102,
            inbound_port: 4143,
            outbound_port: 4140,
            skip_inbound_ports: vec![4191],
            skip_outbound_ports: vec![],
        }
    }

    /// The index of `rule` in the generated list (panics if missing).
    fn position(rule: &str) -> usize {
        let rules: Vec<String> = rules(&config()).iter().map(|r| r.join(" ")).collect();
        rules
            .iter()
            .position(|r| r == rule)
            .unwrap_or_else(|| panic!("no {rule:?} in {rules:#?}"))
    }

    #[test]
    fn proxy_uid_returns_before_the_outbound_redirect() {
        let owner = position("-t nat -A MESHLINK_OUTPUT -m owner --uid-owner 2102 -j RETURN");
        let redirect = position("-t nat -A MESHLINK_OUTPUT -p tcp -j REDIRECT --to-ports 4140");
        assert!(owner < redirect);
        assert!(position("-t nat -A OUTPUT -p tcp -j MESHLINK_OUTPUT") > redirect);
    }

    #[test]
    fn the_whole_rule_set_in_order() {
        let c = InitConfig {
            skip_outbound_ports: vec![25, 3306],
            ..config()
        };
        let rules: Vec<String> = rules(&c).iter().map(|r| r.join(" ")).collect();
        assert_eq!(
            rules,
            [
                "-t nat -N MESHLINK_INBOUND",
                "-t nat -A MESHLINK_INBOUND -p tcp --dport 4191 -j RETURN",
                "-t nat -A MESHLINK_INBOUND -p tcp -j REDIRECT --to-ports 4143",
                "-t nat -A PREROUTING -p tcp -j MESHLINK_INBOUND",
                "-t nat -N MESHLINK_OUTPUT",
                "-t nat -A MESHLINK_OUTPUT -m owner --uid-owner 2102 -j RETURN",
                "-t nat -A MESHLINK_OUTPUT -d 127.0.0.1/32 -j RETURN",
                "-t nat -A MESHLINK_OUTPUT -p tcp --dport 25 -j RETURN",
                "-t nat -A MESHLINK_OUTPUT -p tcp --dport 3306 -j RETURN",
                "-t nat -A MESHLINK_OUTPUT -p tcp -j REDIRECT --to-ports 4140",
                "-t nat -A OUTPUT -p tcp -j MESHLINK_OUTPUT",
            ]
        );
    }

    #[test]
    fn admin_port_skips_inbound_redirect() {
        let skip = position("-t nat -A MESHLINK_INBOUND -p tcp --dport 4191 -j RETURN");
        let redirect = position("-t nat -A MESHLINK_INBOUND -p tcp -j REDIRECT --to-ports 4143");
        assert!(skip < redirect);
        assert!(position("-t nat -A PREROUTING -p tcp -j MESHLINK_INBOUND") > redirect);
    }
}
