//! Build script of the `gateway` package: the proxy's link options.
include!("../proxy/link_args.rs");
