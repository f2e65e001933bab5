/// Link options for the data-plane binaries (`proxy`, `gateway`), for less
/// resident memory with the same code:
///
/// - `-z pack-relative-relocs`: the position-independent binary's ~28,000
///   relative relocations are stored packed (RELR, glibc 2.36+) instead of as a
///   670 KB table that the loader reads, and keeps resident, at every start;
/// - `--icf=all`: identical functions (frequent among monomorphized generics)
///   are folded into one, so less text is mapped.
fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    println!("cargo:rustc-link-arg-bins=-Wl,--icf=all");
}
