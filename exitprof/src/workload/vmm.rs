//! The VMM side of the workload: one VM, one or more vCPUs all running the
//! same guest program, guest RAM at 0, the program at `CODE_GPA`, and a
//! run loop per vCPU that answers every exit that reaches user space and
//! counts them by `KVM_EXIT_*` reason.
use std::{collections::BTreeMap, ptr::NonNull};

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

use crate::session::signals;

use super::{
    error::WorkloadError,
    guest::{
        CODE_GPA, DONE_PORT, Hypercall, PAGE_DIRECTORY_GPA, PARAMS_GPA, Params, QUERIES_GPA, Query,
        REPORT_PORT, page_tables, program,
    },
};

/// Guest RAM: 1 MiB at GPA 0 (MMIO addresses must lie above it).
pub const RAM_BYTES: usize = 1 << 20;
/// [`RAM_BYTES`] as the guest's 32-bit addresses see it.
const RAM_BYTES_U32: u32 = 1 << 20;

/// Anonymous mapping backing guest RAM.
struct Ram {
    ptr: NonNull<u8>,
}

impl Ram {
    fn new() -> Result<Self, WorkloadError> {
        // SAFETY: anonymous private mapping, checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RAM_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(WorkloadError::Memory(std::io::Error::last_os_error()));
        }
        Ok(Self {
            ptr: NonNull::new(ptr.cast()).expect("mmap succeeded"),
        })
    }

    fn write(&mut self, gpa: u64, bytes: &[u8]) {
        let at = usize::try_from(gpa).expect("small gpa");
        assert!(at + bytes.len() <= RAM_BYTES, "inside guest RAM");
        // SAFETY: in bounds of the mapping we own.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().add(at), bytes.len());
        }
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), RAM_BYTES) };
    }
}

/// A VM ready to run the program on each of its vCPUs.
pub struct Machine {
    _kvm: Kvm,
    /// The vCPUs (dropped before the VM, in field order).
    pub vcpus: Vec<Vcpu>,
    _vm: VmFd,
    // Dropped after the VM that maps it.
    _ram: Ram,
}

/// One vCPU; each runs on its own thread.
pub struct Vcpu {
    fd: VcpuFd,
    /// 32-bit paging on (page tables at `PAGE_DIRECTORY_GPA`).
    paging: bool,
    /// The 32-bit values the guest wrote to `REPORT_PORT`, in order.
    pub reported: Vec<u32>,
}

fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> WorkloadError {
    move |source| WorkloadError::Kvm { what, source }
}

impl Machine {
    /// Opens `/dev/kvm`, creates the VM with `vcpus` vCPUs and loads
    /// `params` and the program.
    pub fn new(
        params: Params,
        queries: &[Query],
        hypercall: Hypercall,
        mmio_gpa: u32,
        vcpus: u32,
    ) -> Result<Self, WorkloadError> {
        let kvm = Kvm::new()
            .map_err(|e| WorkloadError::OpenKvm(std::io::Error::from_raw_os_error(e.errno())))?;
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let mut ram = Ram::new()?;
        ram.write(u64::from(PARAMS_GPA), &params.to_bytes());
        ram.write(CODE_GPA, &program(hypercall));
        let list: Vec<u8> = queries.iter().flat_map(|q| q.to_bytes()).collect();
        ram.write(u64::from(QUERIES_GPA), &list);
        let paging = params.paging > 0;
        if paging {
            for (gpa, bytes) in page_tables(RAM_BYTES_U32, mmio_gpa) {
                ram.write(u64::from(gpa), &bytes);
            }
        }
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: RAM_BYTES as u64,
            userspace_addr: ram.ptr.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is our mapping, alive as long as the VM.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        // CPUID must be set for KVM to know the guest's features.
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let mut all = Vec::new();
        for id in 0..u64::from(vcpus) {
            let fd = vm.create_vcpu(id).map_err(kvm_err("KVM_CREATE_VCPU"))?;
            fd.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
            let mut vcpu = Vcpu {
                fd,
                paging,
                reported: Vec::new(),
            };
            vcpu.reset()?;
            all.push(vcpu);
        }
        Ok(Self {
            _kvm: kvm,
            vcpus: all,
            _vm: vm,
            _ram: ram,
        })
    }
}

impl Vcpu {
    /// Flat 32-bit protected mode, paging off, at the program's start.
    fn reset(&mut self) -> Result<(), WorkloadError> {
        let mut sregs = self.fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        let flat = |selector: u16, type_: u8| kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector,
            type_,
            present: 1,
            dpl: 0,
            db: 1,
            s: 1,
            l: 0,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        sregs.cs = flat(0x08, 0xb);
        for seg in [
            &mut sregs.ds,
            &mut sregs.es,
            &mut sregs.fs,
            &mut sregs.gs,
            &mut sregs.ss,
        ] {
            *seg = flat(0x10, 0x3);
        }
        sregs.cr0 = 0x11; // PE | ET
        if self.paging {
            sregs.cr3 = u64::from(PAGE_DIRECTORY_GPA);
            sregs.cr0 |= 0x8000_0000; // PG
        }
        sregs.cr4 = 0;
        sregs.efer = 0;
        self.fd
            .set_sregs(&sregs)
            .map_err(kvm_err("KVM_SET_SREGS"))?;
        let regs = kvm_bindings::kvm_regs {
            rip: CODE_GPA,
            rflags: 0x2,
            ..Default::default()
        };
        self.fd.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))
    }

    /// Runs the program once, to the done port; counts the exits that
    /// reached user space by `KVM_EXIT_*` name into `exits`.
    /// Returns false when a signal asked to stop.
    pub fn run_once(
        &mut self,
        exits: &mut BTreeMap<&'static str, u64>,
    ) -> Result<bool, WorkloadError> {
        self.reset()?;
        loop {
            let exit = match self.fd.run() {
                Ok(exit) => exit,
                Err(e) if e.errno() == libc::EINTR => {
                    if signals::received().is_some() {
                        return Ok(false);
                    }
                    continue;
                }
                Err(e) => return Err(kvm_err("KVM_RUN")(e)),
            };
            let name = match exit {
                VcpuExit::IoOut(port, _) if port == DONE_PORT => {
                    *exits.entry("IO").or_default() += 1;
                    return Ok(true);
                }
                VcpuExit::IoOut(port, data) if port == REPORT_PORT && data.len() == 4 => {
                    self.reported
                        .push(u32::from_le_bytes(data.try_into().expect("4 bytes")));
                    "IO"
                }
                VcpuExit::IoOut(..) => "IO",
                VcpuExit::IoIn(_, data) => {
                    data.fill(0);
                    "IO"
                }
                VcpuExit::MmioRead(_, data) => {
                    data.fill(0);
                    "MMIO"
                }
                VcpuExit::MmioWrite(..) => "MMIO",
                VcpuExit::Hlt => "HLT",
                VcpuExit::Intr => {
                    if signals::received().is_some() {
                        return Ok(false);
                    }
                    "INTR"
                }
                other => {
                    let exit = format!("{other:?}");
                    let rip = self.fd.get_regs().map_or(0, |r| r.rip);
                    return Err(WorkloadError::UnexpectedExit { exit, rip });
                }
            };
            *exits.entry(name).or_default() += 1;
        }
    }
}
