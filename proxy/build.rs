//! Build script of the `proxy` package: link options for its binary.
include!("link_args.rs");
