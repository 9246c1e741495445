//! The VM: KVM set-up, guest RAM, payload loading, devices and the vCPU threads.
//!
//! Guest-physical memory map: GDT at 0x500, boot info at 0x1000, guest arguments at 0x2000,
//! boot stack below 0x9000, page tables 0x9000..0xf000, the payload from 1 MiB; virtio-mmio
//! windows from [`MMIO_BASE`] (4 KiB each, GSI [`FIRST_GSI`] + i); the in-kernel IOAPIC at
//! 0xfec00000 and LAPIC at 0xfee00000 (the windows are `slots`: with `--xenstore` there are
//! [`MAX_DEVICES`] of them, the unused ones empty for hot-plug). The first vCPU enters the
//! payload in long mode; the others wait for INIT/SIPI. Each vCPU runs on its own thread and reports the first event
//! that ends the VM (debug-exit write, fault) to [`run`].

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};

use frontend_guest::host::HostRam;
use frontend_guest::GuestRam;
use kvm_bindings::{kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_memory::GuestAddress;
use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};

use crate::boot_info::{
    BootInfo, DeviceInfo, XenstoreInfo, BOOT_INFO_ADDR, CMDLINE_ADDR, DEBUG_EXIT_PORT, MAX_DEVICES,
    NO_DEVID, SERIAL_PORT, XENSTORE_NOTIFY_PORT,
};
use crate::cli::DeviceSpec;
use crate::linux::LinuxBoot;
use crate::mmio::WINDOW_BYTES;
use crate::slots::{Refused, Slots};
use crate::virtio::{DeviceError, VhostUserMmio};
use crate::x86;
use crate::xenstore::XenstoreGuest;

pub use crate::slots::{FIRST_GSI, MMIO_BASE};
/// Lowest guest-physical address a payload segment may use.
pub const PAYLOAD_START: u64 = 0x10_0000;
/// Bytes of guest code shown in a fault report.
const INSN_BYTES: usize = 16;

/// Errors setting the VM up.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A KVM ioctl failed.
    #[error("KVM: {what}: {source}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The ACPI tables for a Linux guest could not be built.
    #[error("ACPI tables: {0}")]
    Acpi(#[from] crate::acpi::AcpiError),
    /// Guest RAM could not be created.
    #[error("guest RAM: {0}")]
    Ram(#[source] frontend_guest::host::Error),
    /// The payload could not be read.
    #[error("payload {path}: {source}")]
    PayloadIo {
        /// The payload.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The payload is not a loadable ELF or does not fit.
    #[error("payload {path}: {reason}")]
    Payload {
        /// The payload.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A device could not be set up.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A vCPU thread could not be started.
    #[error("starting a vCPU thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The hot-plug thread could not start (store connection, watches).
    #[error("hot-plug: {0}")]
    Hotplug(#[source] crate::xenstore::XenstoreError),
}

/// How the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest wrote this status to the debug-exit port (0 for a Linux guest's ACPI
    /// power-off).
    GuestExit(u32),
    /// The VM stopped on a fault; the report says why, with registers and code bytes.
    Fault(String),
}

/// What the first vCPU enters.
#[derive(Debug, Clone)]
pub enum Boot {
    /// pvio's guest (or another static x86-64 ELF) with its argument string, told about the
    /// machine by the boot-info structure.
    Guest {
        /// The payload ELF.
        payload: PathBuf,
        /// Guest argument string.
        args: String,
    },
    /// A Linux bzImage through the 64-bit boot protocol (part 2 skeleton).
    Linux(LinuxBoot),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// What to boot.
    pub boot: Boot,
    /// Devices, in the order they get MMIO windows and GSIs.
    pub devices: Vec<DeviceSpec>,
    /// Guest RAM in bytes.
    pub mem_bytes: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// The guest's XenStore ring and its devices (placed after `devices`), with `--xenstore`.
    pub xenstore: Option<Arc<XenstoreGuest>>,
}

impl VmConfig {
    /// Every device in slot order: the command line's, then the store's.
    fn all_devices(&self) -> Vec<DeviceSpec> {
        let store = self.xenstore.iter().flat_map(|x| &x.devices);
        self.devices
            .iter()
            .cloned()
            .chain(store.map(|d| d.spec.clone()))
            .collect()
    }
}

/// GSI of the 16550's interrupt for a Linux guest (ISA IRQ 4, COM1).
pub const SERIAL_GSI: u32 = 4;

/// The 16550's interrupt line: not wired for pvio's guest (it polls the UART); a KVM irqfd
/// on [`SERIAL_GSI`] for Linux, whose 8250 driver waits for the transmitter-empty interrupt.
struct SerialInterrupt(Option<vmm_sys_util::eventfd::EventFd>);

impl Trigger for SerialInterrupt {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.as_ref().map_or(Ok(()), |fd| fd.write(1))
    }
}

/// The serial interrupt for `boot`: an irqfd on [`SERIAL_GSI`] for Linux.
fn serial_interrupt(vm: &VmFd, boot: &Boot) -> Result<SerialInterrupt, VmError> {
    if !matches!(boot, Boot::Linux(_)) {
        return Ok(SerialInterrupt(None));
    }
    let fd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Kvm {
        what: "serial interrupt eventfd",
        source: e.into(),
    })?;
    vm.register_irqfd(&fd, SERIAL_GSI)
        .map_err(|source| VmError::Kvm {
            what: "KVM_IRQFD (serial)",
            source,
        })?;
    Ok(SerialInterrupt(Some(fd)))
}

/// What the vCPUs' port and MMIO exits reach.
struct Bus {
    serial: Mutex<Serial<SerialInterrupt, NoEvents, std::io::Stdout>>,
    slots: Arc<Slots>,
    /// Unknown addresses already logged: (is MMIO, address).
    logged: Mutex<HashSet<(bool, u64)>>,
    /// The XenStore ring's event channel, with `--xenstore`.
    xenstore: Option<Arc<XenstoreGuest>>,
    ram: Arc<HostRam>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Bus {
    fn log_once(&self, mmio: bool, addr: u64, what: &str) {
        if lock(&self.logged).insert((mmio, addr)) {
            log::warn!("{what} (logged once per address)");
        }
    }

    /// Logs a slot's refusal of a guest access once per address; false if no slot is there.
    fn slot_access(&self, addr: u64, what: &str, result: Option<Result<(), Refused>>) -> bool {
        match result {
            None => false,
            Some(Ok(())) => true,
            Some(Err((name, e))) => {
                self.log_once(true, addr, &format!("{name}: {what} refused: {e}"));
                true
            }
        }
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        let result = self.slots.read(addr, data);
        if !self.slot_access(addr, "read", result) {
            data.fill(0xff);
            let msg = format!("read of unknown MMIO address {addr:#x}");
            self.log_once(true, addr, &msg);
        }
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        let result = self.slots.write(addr, data);
        if !self.slot_access(addr, "write", result) {
            let msg = format!("write to unknown MMIO address {addr:#x}");
            self.log_once(true, addr, &msg);
        }
    }

    /// Handles an `out`; returns the guest's exit status for a debug-exit write, 0 for a
    /// Linux guest's ACPI power-off (S5 written to the sleep control register).
    fn port_write(&self, port: u16, data: &[u8]) -> Option<u32> {
        if port == crate::acpi::SLEEP_PORT && data.first() == Some(&crate::acpi::S5_SLEEP_VALUE) {
            return Some(0);
        }
        if port == DEBUG_EXIT_PORT {
            let mut b = [0u8; 4];
            let n = data.len().min(4);
            b[..n].copy_from_slice(&data[..n]);
            return Some(u32::from_le_bytes(b));
        }
        // The doorbell is a KVM ioeventfd (xenstore::attach); writes it does not match (another
        // value or width) still notify the store from here.
        if let (XENSTORE_NOTIFY_PORT, Some(xs)) = (port, &self.xenstore) {
            if let Err(e) = xs.domain.notify(xs.port) {
                log::warn!("xenstore notify: {e}");
            }
            return None;
        }
        if (SERIAL_PORT..SERIAL_PORT + 8).contains(&port) {
            // port - SERIAL_PORT < 8.
            let offset = (port - SERIAL_PORT) as u8;
            if let Err(e) = lock(&self.serial).write(offset, data[0]) {
                log::warn!("serial write: {e:?}");
            }
            return None;
        }
        self.log_once(
            false,
            port.into(),
            &format!("write to unknown port {port:#x}"),
        );
        None
    }

    fn port_read(&self, port: u16, data: &mut [u8]) {
        if (SERIAL_PORT..SERIAL_PORT + 8).contains(&port) {
            data.fill(0);
            data[0] = lock(&self.serial).read((port - SERIAL_PORT) as u8);
            return;
        }
        data.fill(0xff);
        self.log_once(
            false,
            port.into(),
            &format!("read of unknown port {port:#x}"),
        );
    }
}

/// Sets the VM up, runs it until the guest exits or faults, and says how it ended. Threads
/// still in KVM_RUN are left to the caller's process exit.
///
/// # Errors
/// [`VmError`] when the set-up fails (nothing of the VM keeps running then).
pub fn run(config: &VmConfig) -> Result<Outcome, VmError> {
    let kvm_err = |what| move |source| VmError::Kvm { what, source };
    let kvm = Kvm::new().map_err(kvm_err("opening /dev/kvm"))?;
    let vm = Arc::new(kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?);
    let ram = Arc::new(HostRam::new(config.mem_bytes).map_err(VmError::Ram)?);
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: ram.size(),
        userspace_addr: ram.host_address(0).map_err(VmError::Ram)?,
    };
    // SAFETY: the region is the live mapping of `ram`, which the Bus (and so every vCPU
    // thread) keeps alive for as long as the VM can run.
    unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let (entry, entry_arg) = match &config.boot {
        Boot::Guest { payload, .. } => (load_payload(&ram, payload)?, BOOT_INFO_ADDR),
        Boot::Linux(linux) => {
            let entry = crate::linux::load(&ram, linux).map_err(|reason| VmError::Payload {
                path: linux.kernel.clone(),
                reason,
            })?;
            (entry, crate::linux::ZERO_PAGE_ADDR)
        }
    };
    if let Some(xs) = &config.xenstore {
        crate::xenstore::attach(&vm, xs, ram.size())?;
    }
    let devices = connect_devices(&vm, &ram, &config.all_devices())?;
    // With XenStore every slot exists, the unused ones empty for hot-plug.
    let count = match config.xenstore {
        Some(_) => MAX_DEVICES,
        None => devices.len(),
    };
    let slots = Arc::new(Slots::new(devices, count));
    write_boot_data(&ram, config, &slots)?;
    let vcpus = create_vcpus(&kvm, &vm, config.vcpus, entry, entry_arg)?;
    let bus = Arc::new(Bus {
        serial: Mutex::new(Serial::new(
            serial_interrupt(&vm, &config.boot)?,
            std::io::stdout(),
        )),
        slots: Arc::clone(&slots),
        logged: Mutex::new(HashSet::new()),
        xenstore: config.xenstore.clone(),
        ram: Arc::clone(&ram),
    });
    if let Some(xs) = &config.xenstore {
        let boot = config.devices.len();
        let held = (0..slots.len())
            .map(|i| {
                i.checked_sub(boot)
                    .and_then(|j| xs.devices.get(j))
                    .map(|d| d.id)
            })
            .collect();
        let plug = crate::hotplug::Context {
            vm: Arc::clone(&vm),
            ram,
            slots,
        };
        crate::hotplug::start(xs, plug, held).map_err(VmError::Hotplug)?;
    }
    let outcome = run_vcpus(vcpus, &bus)?;
    let _ = std::io::stdout().flush();
    // Keep the VM (and its RAM) alive until the process exits: vCPU threads may still run.
    std::mem::forget(vm);
    std::mem::forget(bus);
    Ok(outcome)
}

/// Creates `count` vCPUs with the host's CPUID; the first enters `entry` in long mode with
/// `arg` as its boot data address, the others wait for INIT/SIPI.
fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    count: u8,
    entry: u64,
    arg: u64,
) -> Result<Vec<VcpuFd>, VmError> {
    let kvm_err = |what| move |source| VmError::Kvm { what, source };
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let mut vcpus = Vec::new();
    for id in 0..count {
        let vcpu = vm
            .create_vcpu(id.into())
            .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
        if id == 0 {
            let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
            x86::long_mode_sregs(&mut sregs);
            vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
            vcpu.set_regs(&x86::entry_regs(entry, arg))
                .map_err(kvm_err("KVM_SET_REGS"))?;
        }
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

/// Runs every vCPU on its own thread and returns the first outcome one of them reports.
fn run_vcpus(vcpus: Vec<VcpuFd>, bus: &Arc<Bus>) -> Result<Outcome, VmError> {
    let (tx, rx) = mpsc::channel();
    for (id, vcpu) in vcpus.into_iter().enumerate() {
        let bus = Arc::clone(bus);
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let outcome = run_vcpu(id, vcpu, &bus);
                let _ = tx.send(outcome);
            })
            .map_err(VmError::Thread)?;
    }
    drop(tx);
    Ok(rx
        .recv()
        .unwrap_or_else(|_| Outcome::Fault("every vCPU thread ended".into())))
}

/// Loads the ELF payload; returns its entry point.
fn load_payload(ram: &HostRam, path: &Path) -> Result<u64, VmError> {
    let io = |source| VmError::PayloadIo {
        path: path.into(),
        source,
    };
    let bad = |reason: String| VmError::Payload {
        path: path.into(),
        reason,
    };
    let mut file = File::open(path).map_err(io)?;
    let end = elf_end(&mut file)
        .map_err(io)?
        .ok_or_else(|| bad("not a 64-bit little-endian x86-64 ELF executable".into()))?;
    if end > ram.size() {
        return Err(bad(format!(
            "needs guest RAM up to {end:#x} ({} MiB), only {} MiB given (--mem)",
            end.div_ceil(1 << 20),
            ram.size() >> 20
        )));
    }
    let loaded = Elf::load(
        ram.memory(),
        None,
        &mut file,
        Some(GuestAddress(PAYLOAD_START)),
    )
    .map_err(|e| bad(format!("ELF load: {e}")))?;
    Ok(loaded.kernel_load.0)
}

/// The end of the highest PT_LOAD segment (guest-physical), or `None` if `file` is not an
/// x86-64 ELF64 executable.
fn elf_end(file: &mut File) -> std::io::Result<Option<u64>> {
    use std::io::{Seek, SeekFrom};
    let mut eh = [0u8; 64];
    if file.read_exact(&mut eh).is_err() {
        return Ok(None);
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    // ELFCLASS64, ELFDATA2LSB, ET_EXEC, EM_X86_64.
    if &eh[..4] != b"\x7fELF"
        || eh[4] != 2
        || eh[5] != 1
        || u16_at(&eh, 16) != 2
        || u16_at(&eh, 18) != 62
    {
        return Ok(None);
    }
    let phoff = u64_at(&eh, 32);
    let phentsize = u64::from(u16_at(&eh, 54));
    let phnum = u16_at(&eh, 56);
    let mut end = 0u64;
    for i in 0..u64::from(phnum) {
        let mut ph = [0u8; 56];
        file.seek(SeekFrom::Start(phoff + i * phentsize))?;
        if file.read_exact(&mut ph).is_err() {
            return Ok(None);
        }
        const PT_LOAD: u32 = 1;
        if u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) == PT_LOAD {
            let seg_end = u64_at(&ph, 24).checked_add(u64_at(&ph, 40));
            end = end.max(seg_end.unwrap_or(u64::MAX));
        }
    }
    file.rewind()?;
    Ok(Some(end))
}

fn connect_devices(
    vm: &VmFd,
    ram: &Arc<HostRam>,
    specs: &[DeviceSpec],
) -> Result<Vec<VhostUserMmio>, VmError> {
    let mut devices = Vec::new();
    let (mut disks, mut nets) = (0, 0);
    for (i, spec) in specs.iter().enumerate().take(MAX_DEVICES) {
        let place = crate::slots::place(i);
        let name = match spec.kind {
            crate::virtio::DeviceKind::Blk { .. } => {
                disks += 1;
                format!("disk{}", disks - 1)
            }
            crate::virtio::DeviceKind::Net { .. } => {
                nets += 1;
                format!("net{}", nets - 1)
            }
        };
        let dev = VhostUserMmio::connect(
            &name,
            &spec.socket,
            spec.kind.clone(),
            Arc::clone(ram),
            vm,
            place,
        )?;
        devices.push(dev);
    }
    Ok(devices)
}

fn write_boot_data(ram: &HostRam, config: &VmConfig, slots: &Slots) -> Result<(), VmError> {
    let tables: [(u64, &[u8]); 2] = [
        (x86::GDT_ADDR, &x86::gdt_bytes()),
        (x86::PML4_ADDR, &x86::page_tables()),
    ];
    for (gpa, bytes) in tables {
        ram.write(gpa, bytes).map_err(|e| VmError::Ram(e.into()))?;
    }
    let Boot::Guest { args, .. } = &config.boot else {
        // A Linux guest learns about the machine from the zero page and the ACPI tables.
        return write_acpi_tables(ram, config.vcpus, slots);
    };
    let mut info = BootInfo {
        mem_size: ram.size(),
        cmdline_addr: CMDLINE_ADDR,
        cmdline_len: args.len() as u32,
        num_vcpus: config.vcpus.into(),
        num_devices: slots.len() as u32,
        devices: [DeviceInfo::default(); MAX_DEVICES],
        xenstore: XenstoreInfo::default(),
        devids: [NO_DEVID; MAX_DEVICES],
    };
    if let Some(xs) = &config.xenstore {
        info.xenstore = crate::xenstore::boot_info(xs);
        let first = config.devices.len();
        for (slot, dev) in info.devids[first..].iter_mut().zip(&xs.devices) {
            *slot = dev.id.devid;
        }
    }
    for (i, entry) in info.devices.iter_mut().enumerate() {
        if let Some((place, device_id)) = slots.describe(i) {
            *entry = DeviceInfo {
                mmio_base: place.mmio_base,
                mmio_size: WINDOW_BYTES,
                gsi: place.gsi,
                device_id,
            };
        }
    }
    let writes: [(u64, &[u8]); 2] = [
        (BOOT_INFO_ADDR, &info.to_bytes()),
        (CMDLINE_ADDR, args.as_bytes()),
    ];
    for (gpa, bytes) in writes {
        ram.write(gpa, bytes).map_err(|e| VmError::Ram(e.into()))?;
    }
    Ok(())
}

/// Writes the ACPI tables describing `vcpus` vCPUs and the devices in `slots` for a Linux
/// guest (empty slots are not described).
fn write_acpi_tables(ram: &HostRam, vcpus: u8, slots: &Slots) -> Result<(), VmError> {
    let described: Vec<_> = (0..slots.len())
        .filter_map(|i| slots.describe(i))
        .filter(|&(_, id)| id != 0)
        .map(|(place, _)| crate::acpi::MmioDevice {
            base: place.mmio_base,
            size: WINDOW_BYTES,
            gsi: place.gsi,
        })
        .collect();
    let com1 = crate::acpi::Com1 {
        port: SERIAL_PORT,
        gsi: SERIAL_GSI,
    };
    for table in crate::acpi::build(&described, com1, vcpus)? {
        ram.write(table.gpa, &table.bytes)
            .map_err(|e| VmError::Ram(e.into()))?;
    }
    Ok(())
}

/// Runs one vCPU until something ends the VM.
fn run_vcpu(id: usize, mut vcpu: VcpuFd, bus: &Bus) -> Outcome {
    loop {
        let exit = match vcpu.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => return fault(id, &mut vcpu, bus, &format!("KVM_RUN failed: {e}")),
        };
        let reason = match exit {
            VcpuExit::IoOut(port, data) => match bus.port_write(port, data) {
                Some(status) => return Outcome::GuestExit(status),
                None => continue,
            },
            VcpuExit::IoIn(port, data) => {
                bus.port_read(port, data);
                continue;
            }
            VcpuExit::MmioRead(addr, data) => {
                bus.mmio_read(addr, data);
                continue;
            }
            VcpuExit::MmioWrite(addr, data) => {
                bus.mmio_write(addr, data);
                continue;
            }
            VcpuExit::Intr => continue,
            VcpuExit::InternalError => internal_error(&mut vcpu),
            VcpuExit::Shutdown => "KVM_EXIT_SHUTDOWN (triple fault)".to_string(),
            VcpuExit::Hlt => "KVM_EXIT_HLT (halted with no way to wake)".to_string(),
            VcpuExit::FailEntry(reason, cpu) => {
                format!("KVM_EXIT_FAIL_ENTRY: hardware reason {reason:#x} on cpu {cpu}")
            }
            VcpuExit::SystemEvent(kind, data) => {
                format!("KVM_EXIT_SYSTEM_EVENT type {kind} data {data:x?}")
            }
            other => format!("unexpected exit {other:?}"),
        };
        return fault(id, &mut vcpu, bus, &reason);
    }
}

/// Describes a KVM_EXIT_INTERNAL_ERROR: suberror and `data[]` (for an emulation failure the
/// instruction length and bytes).
fn internal_error(vcpu: &mut VcpuFd) -> String {
    let run = vcpu.get_kvm_run();
    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the union member
    // KVM filled in; it is plain data.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let n = (internal.ndata as usize).min(internal.data.len());
    let kind = match internal.suberror {
        1 => " (emulation failure)",
        2 => " (simultaneous exceptions)",
        3 => " (delivery event)",
        _ => "",
    };
    format!(
        "KVM_EXIT_INTERNAL_ERROR suberror {}{kind}, data {:x?}",
        internal.suberror,
        &internal.data[..n]
    )
}

/// The fault report: reason, registers and the code bytes at RIP.
fn fault(id: usize, vcpu: &mut VcpuFd, bus: &Bus, reason: &str) -> Outcome {
    let mut report = format!("vCPU {id}: {reason}\n");
    match vcpu.get_regs() {
        Ok(r) => {
            report += &format!(
                "  rip {:#018x} rsp {:#018x} rflags {:#x}\n  rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x}\n  rsi {:#x} rdi {:#x} rbp {:#x}\n  r8 {:#x} r9 {:#x} r10 {:#x} r11 {:#x} r12 {:#x} r13 {:#x} r14 {:#x} r15 {:#x}\n",
                r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8,
                r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15
            );
            let gpa = vcpu
                .translate_gva(r.rip)
                .ok()
                .filter(|t| t.valid != 0)
                .map_or(r.rip, |t| t.physical_address);
            let mut insn = [0u8; INSN_BYTES];
            match bus.ram.read(gpa, &mut insn) {
                Ok(()) => report += &format!("  code at rip (gpa {gpa:#x}): {insn:02x?}\n"),
                Err(e) => report += &format!("  code at rip: {e}\n"),
            }
        }
        Err(e) => report += &format!("  registers: {e}\n"),
    }
    if let Ok(s) = vcpu.get_sregs() {
        report += &format!(
            "  cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} cs {:#x}\n",
            s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector
        );
    }
    Outcome::Fault(report)
}
