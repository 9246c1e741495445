//! A front end and a back end in two processes (fork), meeting only through the broker's
//! listening socket: the grant ref and port travel over a pipe, as they would through XenStore.

mod common;

use std::fs::File;
use std::io::{Read, Write};

use common::{run_back, run_front, temp_path, Req, Rsp};
use evtchn::{Broker, Domain, SharedRing};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, pipe, ForkResult};

const TOTAL: u64 = 1_000_000;

/// The child: domain 0's back end. Returns a failure description, if any.
fn back_end(path: &std::path::Path, mut from_parent: File) -> Result<(), String> {
    let dom = Domain::connect(path, 0).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 8];
    from_parent
        .read_exact(&mut buf)
        .map_err(|e| e.to_string())?;
    let gref = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let port = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let region = dom.map_grant(1, gref).map_err(|e| e.to_string())?;
    let local = dom.bind_interdomain(1, port).map_err(|e| e.to_string())?;
    let mut back = SharedRing::<Req, Rsp>::new(region)
        .map_err(|e| e.to_string())?
        .back(0);
    run_back(&mut back, &dom, local, TOTAL, 3);
    Ok(())
}

#[test]
fn two_processes_stream_a_million_requests() {
    let path = temp_path("two-proc");
    // Bind before forking, start threads after: the child is forked from a thread-free broker.
    let broker = Broker::new();
    let listener = broker.listen(&path).unwrap();
    let (to_child_r, to_child_w) = pipe().unwrap();
    let (status_r, status_w) = pipe().unwrap();
    // SAFETY: the child only runs this test's code (connecting to the broker, mapping, ring
    // work) and then exits; it never returns into the test harness.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            drop(to_child_w);
            drop(status_r);
            let outcome = std::panic::catch_unwind(|| back_end(&path, File::from(to_child_r)));
            let msg = match outcome {
                Ok(Ok(())) => "ok".to_string(),
                Ok(Err(e)) => e,
                Err(p) => p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into()),
            };
            let _ = File::from(status_w).write_all(msg.as_bytes());
            std::process::exit(0);
        }
        ForkResult::Parent { child } => {
            drop(to_child_r);
            drop(status_w);
            let _handle = listener.spawn().unwrap();
            let dom = Domain::connect(&path, 1).unwrap();
            let (gref, region) = dom.grant_access(0, 1).unwrap();
            let port = dom.alloc_unbound(0).unwrap();
            let shared = SharedRing::<Req, Rsp>::new(region).unwrap();
            shared.init(0);
            let mut front = shared.front(0);
            let mut msg = gref.to_le_bytes().to_vec();
            msg.extend_from_slice(&port.to_le_bytes());
            File::from(to_child_w).write_all(&msg).unwrap();

            let stats = run_front(&mut front, &dom, port, TOTAL, 5);
            let mut child_says = String::new();
            File::from(status_r)
                .read_to_string(&mut child_says)
                .unwrap();
            assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
            assert_eq!(child_says, "ok", "back end process failed");
            assert!(stats.notifies < TOTAL, "{stats:?}");
        }
    }
}
