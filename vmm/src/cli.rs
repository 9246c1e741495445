//! The command line: `vmm run --guest PAYLOAD [--disk SOCKET[,num-queues=N]]...
//! [--net SOCKET[,mac=XX:XX:XX:XX:XX:XX]]... [--mem MiB] [--vcpus N] [-- GUEST ARGS]`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::boot_info::{CMDLINE_MAX, MAX_DEVICES};
use crate::virtio::DeviceKind;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "vmm",
    version,
    about = "A minimal KVM VMM for pvio's own guest"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a guest until it exits through the debug-exit port; the VMM exits with its status.
    Run(RunArgs),
}

/// `vmm run` options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The guest payload: a static x86-64 ELF entered in 64-bit mode at CPL0 (pvio's guest).
    #[arg(long, value_name = "PAYLOAD", required_unless_present = "kernel")]
    pub guest: Option<PathBuf>,
    /// A Linux kernel (bzImage, or vmlinux with a PVH entry). Needs hardware virtualization.
    #[arg(long, conflicts_with = "guest")]
    pub kernel: Option<PathBuf>,
    /// The initramfs for --kernel.
    #[arg(long, requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// The kernel command line for --kernel.
    #[arg(long, requires = "kernel", default_value = "console=ttyS0")]
    pub cmdline: String,
    /// A virtio-blk device served by the vhost-user-blk back-end on SOCKET; options:
    /// num-queues=N (default 1).
    #[arg(long, value_name = "SOCKET[,num-queues=N]", value_parser = parse_disk)]
    pub disk: Vec<DeviceSpec>,
    /// A virtio-net device served by the vhost-user-net back-end on SOCKET; options:
    /// mac=XX:XX:XX:XX:XX:XX (default: the back-end's).
    #[arg(long, value_name = "SOCKET[,mac=MAC]", value_parser = parse_net)]
    pub net: Vec<DeviceSpec>,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(4..=3072))]
    pub mem: u64,
    /// Number of vCPUs (the guest runs on the first; the others wait for an INIT/SIPI).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
    pub vcpus: u8,
    /// Arguments handed to the guest (words joined by spaces).
    #[arg(last = true)]
    pub guest_args: Vec<String>,
}

impl RunArgs {
    /// Checks what clap cannot: device count and argument length.
    ///
    /// # Errors
    /// A message saying what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let devices = self.disk.len() + self.net.len();
        if devices > MAX_DEVICES {
            return Err(format!(
                "{devices} devices given, at most {MAX_DEVICES} are supported"
            ));
        }
        let len = self.guest_args.join(" ").len();
        if len > CMDLINE_MAX {
            return Err(format!(
                "guest arguments are {len} bytes, at most {CMDLINE_MAX}"
            ));
        }
        Ok(())
    }
}

/// One `--disk` or `--net`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// The back-end's vhost-user socket.
    pub socket: PathBuf,
    /// Device type and options.
    pub kind: DeviceKind,
}

/// A socket path and its `key=value` options.
type SplitSpec<'a> = (PathBuf, Vec<(&'a str, &'a str)>);

/// Splits `SOCKET[,key=value]...`.
fn split_spec(s: &str) -> Result<SplitSpec<'_>, String> {
    let mut parts = s.split(',');
    let socket = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or("empty socket path")?;
    let opts = parts
        .map(|p| {
            p.split_once('=')
                .ok_or_else(|| format!("option {p:?} is not key=value"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((PathBuf::from(socket), opts))
}

/// Parses `--disk SOCKET[,num-queues=N]`.
///
/// # Errors
/// A message naming the bad option.
pub fn parse_disk(s: &str) -> Result<DeviceSpec, String> {
    let (socket, opts) = split_spec(s)?;
    let mut num_queues = 1u16;
    for (key, value) in opts {
        match key {
            "num-queues" => {
                num_queues = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| format!("num-queues={value}: want 1..=64"))?
            }
            other => {
                return Err(format!(
                    "unknown --disk option {other:?} (known: num-queues)"
                ))
            }
        }
    }
    Ok(DeviceSpec {
        socket,
        kind: DeviceKind::Blk { num_queues },
    })
}

/// Parses `--net SOCKET[,mac=XX:XX:XX:XX:XX:XX]`.
///
/// # Errors
/// A message naming the bad option.
pub fn parse_net(s: &str) -> Result<DeviceSpec, String> {
    let (socket, opts) = split_spec(s)?;
    let mut mac = None;
    for (key, value) in opts {
        match key {
            "mac" => mac = Some(parse_mac(value)?),
            other => return Err(format!("unknown --net option {other:?} (known: mac)")),
        }
    }
    Ok(DeviceSpec {
        socket,
        kind: DeviceKind::Net { mac },
    })
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("mac={s}: want six hex bytes separated by ':'");
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    bytes.try_into().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs_parse_and_bad_options_are_named() {
        assert_eq!(
            parse_disk("/s").unwrap(),
            DeviceSpec {
                socket: "/s".into(),
                kind: DeviceKind::Blk { num_queues: 1 }
            }
        );
        assert_eq!(
            parse_disk("/s,num-queues=2").unwrap().kind,
            DeviceKind::Blk { num_queues: 2 }
        );
        assert!(parse_disk("/s,num-queues=0").is_err());
        assert!(parse_disk("/s,cache=none").unwrap_err().contains("cache"));
        assert!(parse_disk("/s,junk").unwrap_err().contains("junk"));
        assert!(parse_disk("").is_err());
        assert_eq!(
            parse_net("/n,mac=52:54:00:00:00:0a").unwrap().kind,
            DeviceKind::Net {
                mac: Some([0x52, 0x54, 0, 0, 0, 0xa])
            }
        );
        assert!(parse_net("/n,mac=52:54:00").is_err());
        assert!(parse_net("/n,mac=zz:54:00:00:00:00").is_err());
    }

    #[test]
    fn run_arguments_parse() {
        let cli = Cli::try_parse_from([
            "vmm", "run", "--guest", "g", "--disk", "/d", "--mem", "32", "--", "a", "b=1",
        ])
        .unwrap();
        let Command::Run(run) = cli.command;
        assert_eq!(run.guest_args, ["a", "b=1"]);
        assert_eq!(run.mem, 32);
        assert!(run.validate().is_ok());
        assert!(Cli::try_parse_from(["vmm", "run"]).is_err());
        assert!(Cli::try_parse_from(["vmm", "run", "--guest", "g", "--mem", "1"]).is_err());
        assert!(Cli::try_parse_from(["vmm", "run", "--guest", "g", "--disk", "/d,x=1"]).is_err());
    }
}
