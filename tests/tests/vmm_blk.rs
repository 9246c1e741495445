//! pvio's VMM runs pvio's guest against pvio's backend-blk: the guest writes a disk pattern
//! that the host then finds in the image, and verifies a pattern the host wrote, over 1 and 2
//! queues, completing by interrupt and by polling. Also: the VMM's answers to bad input (a
//! back-end without VIRTIO_F_VERSION_1 included) and
//! guest faults, and that nothing is left running.

use std::path::Path;

use pvio_tests::backend::{BlkBackend, BlkBackendConfig, BlkBackendKind};
use pvio_tests::image::{create_sparse, read_at, write_at, MIB};
use pvio_tests::tmp::TempDir;
use pvio_tests::vmm::{VmmOutput, VmmRun};
use pvio_tests::OrPanic;
use vmm::pattern;

const IMAGE_BYTES: u64 = 16 * MIB;
/// The guest writes pattern GUEST_SEED at [0, LEN); the host writes HOST_SEED at
/// [HOST_AT, HOST_AT + LEN) for the guest to verify.
const GUEST_SEED: u64 = 0x6775_6573;
const HOST_SEED: u64 = 0x686f_7374;
const HOST_AT: u64 = 8 * MIB;
const LEN: u64 = 512 * 1024;

struct Setup {
    dir: TempDir,
    image: std::path::PathBuf,
    socket: std::path::PathBuf,
    backend: BlkBackend,
}

fn setup(label: &str, queues: u16) -> Setup {
    let dir = TempDir::new(label).or_panic("temp dir");
    let image = dir.join("disk.img");
    create_sparse(&image, IMAGE_BYTES).or_panic("image");
    let mut host = vec![0u8; LEN as usize];
    pattern::fill_disk(&mut host, HOST_SEED, HOST_AT);
    write_at(&image, HOST_AT, &host).or_panic("host pattern");
    let socket = dir.join("blk.sock");
    let backend = BlkBackend::start(
        &BlkBackendKind::pvio(),
        &BlkBackendConfig::new(&image, &socket, queues),
        &dir.join("backend.log"),
    )
    .or_panic("backend-blk");
    Setup {
        dir,
        image,
        socket,
        backend,
    }
}

fn guest_words(mode: &str) -> Vec<String> {
    let mut words: Vec<String> = mode.split(' ').map(String::from).collect();
    words.extend([
        "qd=8".into(),
        format!("write={GUEST_SEED}@0+{LEN}"),
        format!("verify={HOST_SEED}@{HOST_AT}+{LEN}"),
    ]);
    words
}

fn assert_guest_pattern(image: &Path, out: &VmmOutput) {
    let data = read_at(image, 0, LEN as usize).or_panic("read image");
    if let Some(at) = pattern::check_disk(&data, GUEST_SEED, 0) {
        panic!("guest pattern wrong in the image at byte {at}\n{out}");
    }
}

fn run_pattern_job(label: &str, queues: u16, mode: &str) {
    let s = setup(label, queues);
    let words = guest_words(mode);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let out = VmmRun::new()
        .disk(&s.socket, queues)
        .guest(&words)
        .run(s.dir.path(), "vmm");
    out.assert_success();
    let want = format!("queues={queues} ");
    for job in ["blk write ok", "blk verify ok"] {
        let line = out
            .console
            .lines()
            .find(|l| l.contains(job))
            .unwrap_or_else(|| panic!("no {job:?} line\n{out}"));
        assert!(line.contains(&want), "{line} should use {queues} queue(s)");
        let indirect = format!("indirect={}", mode.contains("indirect"));
        assert!(line.contains(&indirect), "{line} should say {indirect}");
    }
    assert!(out.console.contains("all jobs passed"), "{out}");
    s.backend.stop().or_panic("backend-blk stop");
    assert_guest_pattern(&s.image, &out);
}

#[test]
fn one_queue_with_interrupts() {
    run_pattern_job("vmm-blk-1q-irq", 1, "irq");
}

#[test]
fn two_queues_with_interrupts_and_indirect_descriptors() {
    run_pattern_job("vmm-blk-2q-irq", 2, "irq indirect");
}

#[test]
fn two_queues_polling_with_the_pattern_work_at_cpl0() {
    run_pattern_job("vmm-blk-2q-poll", 2, "poll cpl0-data");
}

#[test]
fn a_wrong_pattern_fails_the_guest_and_the_back_end_serves_the_next_vm() {
    let s = setup("vmm-blk-mismatch", 1);
    // The host pattern sits at HOST_AT with HOST_SEED: checking another seed must fail.
    let out = VmmRun::new()
        .disk(&s.socket, 1)
        .guest(&[&format!("verify=1@{HOST_AT}+{LEN}")])
        .run(s.dir.path(), "vmm-bad");
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(out.console.contains("pattern mismatch"), "{out}");
    // The VMM is gone and the back-end took its disconnect: a second VM is served.
    let out = VmmRun::new()
        .disk(&s.socket, 1)
        .guest(&[&format!("verify={HOST_SEED}@{HOST_AT}+64K")])
        .run(s.dir.path(), "vmm-good");
    out.assert_success();
    s.backend.stop().or_panic("backend-blk stop");
}

#[test]
fn bad_input_gives_a_clear_error_and_a_non_zero_exit() {
    let dir = TempDir::new("vmm-bad-input").or_panic("temp dir");
    let missing = dir.join("nobody.sock");
    let out = VmmRun::new().disk(&missing, 1).run(dir.path(), "missing");
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(out.log.contains("nobody.sock"), "{out}");

    let out = VmmRun::new()
        .arg("--disk")
        .arg(format!("{},cache=none", missing.display()))
        .run(dir.path(), "option");
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(out.log.contains("unknown --disk option \"cache\""), "{out}");

    let not_elf = dir.join("not-elf");
    std::fs::write(&not_elf, b"#!/bin/sh\necho hello\n").or_panic("write");
    let out = VmmRun::default()
        .arg("--guest")
        .arg(not_elf.display().to_string())
        .run(dir.path(), "not-elf");
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(
        out.log.contains("not a 64-bit little-endian x86-64 ELF"),
        "{out}"
    );

    // pvio's guest with its bss made 8 MiB larger than the 4 MiB of RAM given.
    let mut elf = std::fs::read(vmm::GUEST_PAYLOAD).or_panic("read the guest");
    grow_last_load_segment(&mut elf, 8 << 20);
    let big = dir.join("big-guest");
    std::fs::write(&big, &elf).or_panic("write");
    let out = VmmRun::default()
        .arg("--guest")
        .arg(big.display().to_string())
        .arg("--mem")
        .arg("4")
        .run(dir.path(), "big");
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(out.log.contains("only 4 MiB given"), "{out}");
}

use pvio_tests::hostile::req;

/// A scripted vhost-user back-end for one connection: it offers `features` (and, with
/// VHOST_USER_F_PROTOCOL_FEATURES, the MQ protocol feature and 2 queues), answers the requests
/// that need an answer, and returns every request code in order when the front-end leaves.
/// It never processes a ring. Wire format (vhost-user.rst): a 12-byte header `request, flags,
/// size`; replies carry flags 0x5 (version 1, reply). Attached fds are dropped.
fn scripted_backend(listener: std::os::unix::net::UnixListener, features: u64) -> Vec<u32> {
    use std::io::{Read, Write};
    let mut seen = Vec::new();
    let Ok((mut conn, _)) = listener.accept() else {
        return seen;
    };
    let mut hdr = [0u8; 12];
    while conn.read_exact(&mut hdr).is_ok() {
        let request = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
        let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
        let mut body = vec![0u8; size];
        if conn.read_exact(&mut body).is_err() {
            break;
        }
        seen.push(request);
        let payload: Vec<u8> = match request {
            req::GET_FEATURES => features.to_le_bytes().to_vec(),
            // VHOST_USER_PROTOCOL_F_MQ.
            req::GET_PROTOCOL_FEATURES => 1u64.to_le_bytes().to_vec(),
            req::GET_QUEUE_NUM => 2u64.to_le_bytes().to_vec(),
            // struct vhost_vring_state { index, num }: the queue stopped at 0.
            req::GET_VRING_BASE => [&body[0..4], &[0u8; 4][..]].concat(),
            _ => continue,
        };
        let mut reply = Vec::new();
        for word in [request, 0x5, payload.len() as u32] {
            reply.extend_from_slice(&word.to_le_bytes());
        }
        reply.extend_from_slice(&payload);
        if conn.write_all(&reply).is_err() {
            break;
        }
    }
    seen
}

#[test]
fn a_back_end_without_virtio_1_is_refused() {
    let dir = TempDir::new("vmm-featureless").or_panic("temp dir");
    let socket = dir.join("old.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).or_panic("bind");
    let server = std::thread::spawn(move || scripted_backend(listener, 0));
    let out = VmmRun::new().disk(&socket, 1).run(dir.path(), "old");
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(
        out.log
            .contains("the back-end does not offer VIRTIO_F_VERSION_1"),
        "{out}"
    );
    let seen = server.join().expect("fake back-end thread");
    assert_eq!(seen, [req::SET_OWNER, req::GET_FEATURES], "then nothing");
}

#[test]
fn driver_ok_sizes_every_vring_first_and_reset_stops_every_vring() {
    use req::*;
    let dir = TempDir::new("vmm-sequence").or_panic("temp dir");
    let socket = dir.join("scripted.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).or_panic("bind");
    // VIRTIO_F_VERSION_1, VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_BLK_F_MQ.
    let features = 1u64 << 32 | 1 << 30 | 1 << 12;
    let server = std::thread::spawn(move || scripted_backend(listener, features));
    // A job of 0 bytes: the guest sets the device up (DRIVER_OK), then resets it.
    let out = VmmRun::new()
        .disk(&socket, 2)
        .guest(&["write=1@0+0"])
        .run(dir.path(), "sequence");
    out.assert_success();
    assert!(out.console.contains("queues=2"), "{out}");
    let seen = server.join().expect("scripted back-end thread");
    let attach = [
        SET_VRING_ADDR,
        SET_VRING_BASE,
        SET_VRING_CALL,
        SET_VRING_ERR,
        SET_VRING_KICK,
        SET_VRING_ENABLE,
    ];
    let mut want = vec![
        SET_OWNER,
        GET_FEATURES,
        GET_PROTOCOL_FEATURES,
        SET_PROTOCOL_FEATURES,
        GET_QUEUE_NUM,
        SET_FEATURES,
        SET_MEM_TABLE,
        SET_VRING_NUM,
        SET_VRING_NUM,
    ];
    want.extend(attach);
    want.extend(attach);
    want.extend([GET_VRING_BASE, GET_VRING_BASE]);
    assert_eq!(seen, want, "\n{out}");
}

/// Adds `extra` bytes to the memory size of the last PT_LOAD program header of an ELF64.
fn grow_last_load_segment(elf: &mut [u8], extra: u64) {
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(elf, 54), u16_at(elf, 56));
    let last = (0..phnum)
        .map(|i| phoff + i * phentsize)
        .rfind(|&ph| elf[ph..ph + 4] == [1, 0, 0, 0])
        .expect("a PT_LOAD segment");
    let memsz = u64::from_le_bytes(elf[last + 40..last + 48].try_into().unwrap());
    elf[last + 40..last + 48].copy_from_slice(&(memsz + extra).to_le_bytes());
}

#[test]
fn guest_faults_are_reported_with_registers_and_code_bytes() {
    let dir = TempDir::new("vmm-faults").or_panic("temp dir");
    let out = VmmRun::new().guest(&["crash=sse"]).run(dir.path(), "sse");
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(
        out.log
            .contains("KVM_EXIT_INTERNAL_ERROR suberror 1 (emulation failure)"),
        "{out}"
    );
    // pxor %xmm0,%xmm0 is 66 0f ef c0.
    assert!(out.log.contains("[66, 0f, ef, c0"), "{out}");
    assert!(
        out.log.contains("rip 0x") && out.log.contains("cr3 0x9000"),
        "{out}"
    );

    let out = VmmRun::new()
        .guest(&["crash=triple"])
        .run(dir.path(), "triple");
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(
        out.log.contains("KVM_EXIT_SHUTDOWN (triple fault)"),
        "{out}"
    );
    // ud2 is 0f 0b.
    assert!(out.log.contains("[0f, 0b"), "{out}");
}

#[test]
fn unknown_accesses_are_logged_once_and_the_vm_goes_on_to_a_cpl3_run() {
    let dir = TempDir::new("vmm-unknown").or_panic("temp dir");
    let out = VmmRun::new()
        .guest(&["touch-unknown", "cpl-compare=64K"])
        .run(dir.path(), "unknown");
    out.assert_success();
    for what in ["port 0x510", "MMIO address 0xe0000000"] {
        let n = out.log.lines().filter(|l| l.contains(what)).count();
        assert_eq!(n, 1, "{what} logged {n} times\n{out}");
    }
    // The CPL3 run of the pattern loop (user segments, TSS, #UD gate back) wrote the pattern.
    assert!(out.console.contains("cpl-compare ok bytes=65536"), "{out}");
    assert!(out.console.contains("all jobs passed"), "{out}");
}
