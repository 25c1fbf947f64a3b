//! Builds the eBPF programs in ../node-ebpf for the BPF target and leaves the
//! object in OUT_DIR, where the agent embeds it.
//!
//! The toolchain is a pinned nightly (with rust-src, as scripts/setup
//! installs), named once in node-ebpf/rust-toolchain.toml: its LLVM must be
//! the one bpf-linker is built against (22), and nightlies moved to LLVM 23
//! in 2026, whose bitcode bpf-linker 0.13 on LLVM 22 refuses ("Invalid
//! record").

/// node-ebpf/rust-toolchain.toml: the one place the eBPF nightly is named
/// (scripts/setup and deploy/Containerfile read it there too).
const TOOLCHAIN_FILE: &str = include_str!("../node-ebpf/rust-toolchain.toml");

/// The `channel = "…"` of [`TOOLCHAIN_FILE`].
fn ebpf_toolchain() -> anyhow::Result<&'static str> {
    TOOLCHAIN_FILE
        .lines()
        .find_map(|line| {
            let value = line
                .trim()
                .strip_prefix("channel")?
                .trim_start()
                .strip_prefix('=')?
                .trim();
            value.strip_prefix('"')?.strip_suffix('"')
        })
        .ok_or_else(|| anyhow::anyhow!("node-ebpf/rust-toolchain.toml has no `channel = \"…\"` line"))
}

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../node-ebpf");
    println!("cargo:rerun-if-changed={root}/src");
    println!("cargo:rerun-if-changed={root}/common/src");
    println!("cargo:rerun-if-changed={root}/Cargo.toml");
    println!("cargo:rerun-if-changed={root}/rust-toolchain.toml");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "node-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(ebpf_toolchain()?),
    )
}
