//! `vmm run --guest PAYLOAD ...`: runs pvio's guest and exits with its status.

use std::process::ExitCode;

use clap::Parser;
use vmm::cli::{Cli, Command, RunArgs};
use vmm::vm::{self, Outcome, VmConfig};

/// Exit status when the VMM itself fails (bad argument, back-end, payload) or the guest faults.
const FAILURE: u8 = 1;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let Command::Run(args) = Cli::parse().command;
    let code = match run(&args) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("vmm: {msg}");
            FAILURE
        }
    };
    // Exit the whole process now: vCPU threads may still sit in KVM_RUN.
    std::process::exit(code.into())
}

fn run(args: &RunArgs) -> Result<u8, String> {
    args.validate()?;
    let Some(payload) = &args.guest else {
        return Err(vmm::linux::unavailable_reason());
    };
    let config = VmConfig {
        payload: payload.clone(),
        devices: args.disk.iter().chain(&args.net).cloned().collect(),
        mem_bytes: args.mem << 20,
        vcpus: args.vcpus,
        args: args.guest_args.join(" "),
    };
    match vm::run(&config).map_err(|e| e.to_string())? {
        Outcome::GuestExit(status) => {
            log::info!("guest exited with status {status}");
            Ok(u8::try_from(status).unwrap_or(u8::MAX))
        }
        Outcome::Fault(report) => Err(format!("guest stopped:\n{report}")),
    }
}
