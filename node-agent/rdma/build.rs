//! Compiles the libibverbs shim when the `verbs` feature is on.

fn main() {
    println!("cargo:rerun-if-changed=src/shim.c");
    #[cfg(feature = "verbs")]
    {
        cc::Build::new()
            .file("src/shim.c")
            .flag_if_supported("-Wall")
            .flag_if_supported("-Wextra")
            .warnings_into_errors(true)
            .compile("flowmesh_ibverbs_shim");
        println!("cargo:rustc-link-lib=ibverbs");
    }
}
