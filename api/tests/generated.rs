//! The discovery and identity protocols' Rust code is generated from `proto/` and checked in,
//! so building meshlink needs no protobuf compiler. This test regenerates it with
//! a pure-Rust compiler and fails if the checked-in copy differs; run it with
//! `MESHLINK_REGENERATE=1` to rewrite the copy after changing a `.proto` file.

use std::path::Path;

#[test]
fn generated_code_matches_protos() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fds = protox::compile(["discovery.proto", "certify.proto"], [root.join("proto")])?;
    let out = tempfile::tempdir()?;
    tonic_prost_build::configure()
        .build_transport(true)
        .emit_rerun_if_changed(false)
        .out_dir(out.path())
        .compile_fds(fds)?;

    for file in ["meshlink.discovery.v1.rs", "meshlink.certify.v1.rs"] {
        let fresh = std::fs::read_to_string(out.path().join(file))?;
        let checked_in = root.join("src/gen").join(file);
        if std::env::var_os("MESHLINK_REGENERATE").is_some() {
            std::fs::write(&checked_in, &fresh)?;
        }
        let current = std::fs::read_to_string(&checked_in).unwrap_or_default();
        assert!(
            current == fresh,
            "{} is stale; regenerate with MESHLINK_REGENERATE=1 cargo test -p api --test generated",
            checked_in.display()
        );
    }
    Ok(())
}
