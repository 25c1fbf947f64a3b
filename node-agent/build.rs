//! Builds the eBPF programs in ../node-ebpf for the BPF target and leaves the
//! object in OUT_DIR, where the agent embeds it.
//!
//! The toolchain is a pinned nightly (with rust-src, as scripts/setup
//! installs): its LLVM must be the one bpf-linker is built against (22),
//! and nightlies moved to LLVM 23 in 2026, whose bitcode bpf-linker 0.13 on
//! LLVM 22 refuses ("Invalid record").

/// Keep in step with scripts/setup.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-15";

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../node-ebpf");
    println!("cargo:rerun-if-changed={root}/src");
    println!("cargo:rerun-if-changed={root}/common/src");
    println!("cargo:rerun-if-changed={root}/Cargo.toml");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "node-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
