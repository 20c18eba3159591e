//! Links the `kpiforge` binary as a fixed-address (non-PIE) executable on
//! Linux. A position-independent one spends its start-up relocating some
//! 280,000 pointers (DataFusion's many vtables) and copying the pages that hold
//! them: about 10 ms before `main`, every run, which a short nightly run notices.
//! The trade-off: the binary's own code and data load at a fixed address (no
//! ASLR for them; the heap, stack and libraries are still randomised). Remove
//! this file to build a position-independent binary.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
