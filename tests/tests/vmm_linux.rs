//! Part 2 of the VMM (issue 10): `vmm run --kernel` boots Debian's stock kernel with a busybox
//! initramfs and a virtio-mmio disk served by backend-blk (described to the kernel by the
//! VMM's ACPI DSDT as LNRO0005); the guest checks a pattern the host wrote, copies it to
//! another place on the disk with fsync, powers off through ACPI S5, and the host checks the
//! copy in the image file. It needs hardware virtualization: on hosts whose /dev/kvm is the nested software
//! kvm_pvm (pvio's CI) a stock kernel stops in KVM's CPL0 instruction emulator, so the test is
//! `#[ignore]`d and, when run, skips with the reason printed. Run it where VT-x/AMD-V exists:
//! `cargo nextest run -p pvio-tests --test vmm_linux --run-ignored all` (see vmm/README.md).

use pvio_tests::backend::{BlkBackend, BlkBackendConfig, BlkBackendKind};
use pvio_tests::image::{create_sparse, read_at, write_at, MIB};
use pvio_tests::initramfs::{GuestKernel, Initramfs};
use pvio_tests::tmp::TempDir;
use pvio_tests::vmm::VmmRun;
use pvio_tests::OrPanic;
use vmm::pattern;

/// virtio-mmio and virtio-blk, in load order.
const MODULES: &[&str] = &["virtio_ring", "virtio", "virtio_mmio", "virtio_blk"];
const MARKER: &str = "@@pvio vmm-linux verified";
/// Where (in MiB) the guest writes its copy of the first MiB.
const COPY_MIB: u64 = 2;

#[test]
#[ignore = "needs hardware virtualization (VT-x/AMD-V); skips itself elsewhere"]
fn debian_kernel_boots_and_verifies_a_host_pattern_on_the_disk() {
    if let Some(reason) = vmm::linux::hardware_virtualization() {
        eprintln!("skipping: {reason}");
        return;
    }
    let dir = TempDir::new("vmm-linux").or_panic("temp dir");
    let image = dir.join("disk.img");
    create_sparse(&image, 16 * MIB).or_panic("image");
    let mut host = vec![0u8; MIB as usize];
    pattern::fill_disk(&mut host, 5, 0);
    write_at(&image, 0, &host).or_panic("pattern");
    let want = pvio_tests::image::sha256_hex(&host).or_panic("digest");
    let socket = dir.join("blk.sock");
    let backend = BlkBackend::start(
        &BlkBackendKind::pvio(),
        &BlkBackendConfig::new(&image, &socket, 1),
        &dir.join("backend.log"),
    )
    .or_panic("backend-blk");
    let kernel = GuestKernel::find().or_panic("kernel");
    let initrd = dir.join("initrd.cpio");
    Initramfs::new(&kernel, MODULES)
        .or_panic("initramfs")
        .write(
            &initrd,
            &format!(
                "test \"$(head -c 1048576 /dev/vda | sha256sum | cut -d' ' -f1)\" = {want}\n\
                 dd if=/dev/vda of=/dev/vda bs=1048576 count=1 seek={COPY_MIB} conv=fsync\n\
                 echo '{MARKER}'\n"
            ),
        )
        .or_panic("write initramfs");
    let out = VmmRun::default()
        .arg("--kernel")
        .arg(kernel.image.display().to_string())
        .arg("--initrd")
        .arg(initrd.display().to_string())
        .arg("--cmdline")
        .arg("console=ttyS0 panic=-1")
        .arg("--mem")
        .arg("512")
        .disk(&socket, 1)
        .run(dir.path(), "linux");
    assert!(out.console.contains(MARKER), "no marker\n{out}");
    out.assert_success();
    backend.stop().or_panic("backend-blk stop");
    let copy = read_at(&image, COPY_MIB * MIB, MIB as usize).or_panic("read the copy");
    assert!(copy == host, "the guest's write did not reach the image");
}
