//! Prints the path of pvio's guest payload as built by the `vmm` crate (for scripts:
//! `vmm run --guest "$(cargo run -q -p vmm --example guest-path)"`).

fn main() {
    println!("{}", vmm::GUEST_PAYLOAD);
}
