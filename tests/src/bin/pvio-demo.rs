//! `pvio-demo`: the README's main job (see `pvio_tests::demo`). Run through `scripts/demo.sh`,
//! which installs what is missing and builds in release mode.

use clap::Parser;
use pvio_tests::demo::{self, Options};

fn main() {
    env_logger::init();
    let options = Options::parse();
    if let Err(e) = demo::install_interrupt_handler() {
        eprintln!("pvio-demo: cannot install signal handlers: {e}");
        std::process::exit(1);
    }
    match demo::run(&options) {
        Ok(report) => {
            println!("\nresults (guest clock; under TCG every guest instruction is emulated, so these are far below KVM figures):");
            println!("{report}");
        }
        Err(e) => {
            eprintln!("pvio-demo: {e}");
            std::process::exit(1);
        }
    }
}
