//! pvctl: pvio's toolstack. It writes what a domain should have into xenstore-lite in Xen's
//! layout (see the `xenbus` crate) and leaves the rest to the parties that watch the store:
//! the back-end daemons in store mode and the guest's front ends walk the XenbusState
//! handshake. Every change is one transaction, so a refused command leaves nothing behind.
//!
//! - [`cli`]: the command line.
//! - [`domain`]: `domain create` / `destroy`.
//! - [`devices`]: `disk` / `nic` `attach` / `detach`.
//! - [`list`]: the `list` command.

pub mod cli;
pub mod devices;
pub mod domain;
pub mod error;
pub mod list;

use std::process::ExitCode;

use xenbus::DeviceKind::{Vbd, Vif};
use xenstore_lite::client::socket_path_from_env;
use xenstore_lite::{error_chain, Client, ClientError};

use crate::cli::{Cli, Command, DiskCommand, DomainCommand, NicCommand};
pub use crate::error::{PvctlError, Result};

/// Connects to the store at `--xenstore` or where libxenstore would look.
///
/// # Errors
/// [`PvctlError::StoreNotRunning`].
pub fn connect(cli: &Cli) -> Result<Client> {
    let path = cli.xenstore.clone().unwrap_or_else(socket_path_from_env);
    match Client::connect(&path) {
        Ok(c) => Ok(c),
        Err(ClientError::Connect { path, source }) => Err(PvctlError::StoreNotRunning {
            path,
            cause: source,
        }),
        Err(e) => Err(e.into()),
    }
}

/// Runs one command; what it prints goes to standard output, errors to standard error.
pub fn run(cli: &Cli) -> ExitCode {
    match execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pvctl: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn execute(cli: &Cli) -> Result<()> {
    let mut client = connect(cli)?;
    let c = &mut client;
    match &cli.command {
        Command::Domain(DomainCommand::Create(args)) => {
            println!("{}", domain::create(c, args)?);
        }
        Command::Domain(DomainCommand::Destroy { domid, timeout }) => {
            domain::destroy(c, *domid, secs(*timeout))?;
        }
        Command::Disk(DiskCommand::Attach {
            common,
            image,
            readonly,
            queues,
        }) => {
            let config = devices::disk_config(image, *readonly, *queues)?;
            println!("{}", devices::attach(c, Vbd, common, |_| config)?);
        }
        Command::Nic(NicCommand::Attach {
            common,
            mac,
            switch,
            tap,
            queue_pairs,
            mtu,
        }) => {
            let devid = devices::attach(c, Vif, common, |devid| {
                let id = (common.domid, devid);
                devices::nic_config(id, *mac, switch, tap, *queue_pairs, *mtu)
            })?;
            println!("{devid}");
        }
        Command::Disk(DiskCommand::Detach(args)) => {
            devices::detach(c, Vbd, args)?;
        }
        Command::Nic(NicCommand::Detach(args)) => {
            devices::detach(c, Vif, args)?;
        }
        Command::List => print!("{}", list::render(c)?),
    }
    Ok(())
}

fn secs(s: u64) -> std::time::Duration {
    std::time::Duration::from_secs(s)
}
