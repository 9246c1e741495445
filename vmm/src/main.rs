//! `vmm run --guest PAYLOAD ...`: runs pvio's guest and exits with its status.

use std::process::ExitCode;

use clap::Parser;
use vmm::cli::{Cli, Command, RunArgs};
use vmm::linux::LinuxBoot;
use vmm::vm::{self, Boot, Outcome, VmConfig};

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

/// Set to boot `--kernel` even where [`vmm::linux::hardware_virtualization`] says it cannot
/// work (to watch where it stops).
const FORCE_LINUX_ENV: &str = "PVIO_VMM_FORCE_LINUX";

fn run(args: &RunArgs) -> Result<u8, String> {
    args.validate()?;
    let boot = match (&args.guest, &args.kernel) {
        (Some(payload), _) => Boot::Guest {
            payload: payload.clone(),
            args: args.guest_args.join(" "),
        },
        (None, Some(kernel)) => {
            if let Some(reason) = vmm::linux::hardware_virtualization() {
                if std::env::var_os(FORCE_LINUX_ENV).is_none() {
                    return Err(format!(
                        "cannot boot a Linux kernel on this host: {reason} (set {FORCE_LINUX_ENV}=1 to try anyway)"
                    ));
                }
            }
            Boot::Linux(LinuxBoot {
                kernel: kernel.clone(),
                initrd: args.initrd.clone(),
                cmdline: args.cmdline.clone(),
            })
        }
        (None, None) => return Err("--guest or --kernel is required".into()),
    };
    let config = VmConfig {
        boot,
        devices: args.disk.iter().chain(&args.net).cloned().collect(),
        mem_bytes: args.mem << 20,
        vcpus: args.vcpus,
    };
    match vm::run(&config).map_err(|e| e.to_string())? {
        Outcome::GuestExit(status) => {
            log::info!("guest exited with status {status}");
            Ok(u8::try_from(status).unwrap_or(u8::MAX))
        }
        Outcome::Fault(report) => Err(format!("guest stopped:\n{report}")),
    }
}
