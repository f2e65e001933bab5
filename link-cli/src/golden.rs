//! Golden-file comparison for tests: `tests/golden/<name>` holds the expected
//! output; set `MESHLINK_UPDATE_GOLDEN=1` to rewrite the files from the actual output.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

/// Asserts `actual` equals golden file `name`, or rewrites it when asked to.
pub fn check(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("MESHLINK_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with MESHLINK_UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert_eq!(actual, expected, "output differs from {}", path.display());
}
