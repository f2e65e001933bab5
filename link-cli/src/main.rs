//! `meshlink`, the operator's command-line tool: install, link, unlink, check,
//! gateways, allow and export, with kubectl-like flags.

fn main() {}
