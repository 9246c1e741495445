//! With the `nbd` feature: Rust bindings for libnbd's C API, generated from the system header
//! (`/usr/include/libnbd.h`, Debian's libnbd-dev) into `$OUT_DIR/libnbd.rs`, and linking libnbd.

fn main() {
    #[cfg(feature = "nbd")]
    nbd_bindings();
}

#[cfg(feature = "nbd")]
fn nbd_bindings() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-lib=nbd");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindgen::Builder::default()
        .header_contents("wrapper.h", "#include <libnbd.h>\n")
        .allowlist_function("nbd_.*")
        .allowlist_var("LIBNBD_.*")
        .allowlist_type("nbd_.*")
        .generate()
        .expect("generate libnbd bindings: install libnbd-dev, clang and libclang-dev")
        .write_to_file(out.join("libnbd.rs"))
        .expect("write libnbd bindings");
}
