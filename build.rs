//! Links the `mkt` binary as a position-dependent executable on Linux.
//!
//! A position-independent `mkt` has 41,000 relative relocations, which the
//! dynamic loader applies at every start by writing to 160 more pages than
//! a fixed-address binary touches: `mkt --version` took 1.8-1.9 ms here
//! against 1.4-1.5 ms without them (`hyperfine -N`, 1,000 runs each),
//! and 297 page faults against 137 (ninja's: 131). Every command pays it,
//! and a no-op build of 100 targets takes 4-5 ms in all. The cost is
//! address-space randomisation of the executable's own image (libraries,
//! heap and stacks are still randomised); `MKT_PIE=1 cargo build` keeps a
//! position-independent binary for whoever needs that.

fn main() {
    println!("cargo::rerun-if-env-changed=MKT_PIE");
    println!("cargo::rerun-if-changed=build.rs");
    // (glibc only: musl targets link static-pie by default, another matter)
    let linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    let pie = std::env::var_os("MKT_PIE").is_some_and(|v| v != "0" && !v.is_empty());
    if linux && !pie {
        // the objects stay position-independent; only the link is fixed
        println!("cargo::rustc-link-arg-bins=-no-pie");
    }
}
