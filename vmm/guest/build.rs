//! Links the guest with its own linker script (and relinks when the script changes).

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it");
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rustc-link-arg=-Wl,-T,{dir}/link.ld");
}
