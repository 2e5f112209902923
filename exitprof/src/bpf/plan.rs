//! The attach plan: which groups of KVM programs attach as raw
//! tracepoints (offsets from BTF) and which as classic ones (offsets from
//! tracefs), and where vCPU threads keep what they have in flight (task
//! storage or hash maps: [`InFlightStore`]), decided from a description of
//! the host ([`Host`]: where its BTF and its module list are, its kernel
//! release), so that it is tested without root.
use std::path::{Path, PathBuf};

use exitprof_common::config::RawOffsets;

use super::{
    error::LoadError,
    hooks::{self, Group},
};
use crate::{
    host::{
        backend::{self, KVM_AMD, SYS_MODULE},
        btf::{Arg, Btf, BtfError, Vmlinux},
        procfs,
    },
    model::{Attached, events::RawArg},
};

/// How the KVM programs attach (`--attach`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Raw where this kernel's BTF allows it, classic elsewhere.
    #[default]
    Auto,
    /// Raw tracepoints (offsets from BTF), or an error.
    Raw,
    /// Classic tracepoints (offsets from tracefs).
    Classic,
}

/// Where a host keeps the facts the plan reads.
#[derive(Clone, Debug)]
pub struct Host {
    /// `/sys/kernel/btf`.
    pub btf_dir: PathBuf,
    /// `/sys/module`.
    pub sys_module: PathBuf,
    /// The kernel release (`uname -r`).
    pub release: String,
}

impl Host {
    /// This host.
    #[must_use]
    pub fn this() -> Self {
        Self {
            btf_dir: PathBuf::from("/sys/kernel/btf"),
            sys_module: PathBuf::from(SYS_MODULE),
            release: procfs::kernel_release(),
        }
    }

    /// Whether `module` is loaded as a module (not built in).
    fn loadable(&self, module: &str) -> bool {
        self.sys_module.join(module).join("initstate").exists()
    }
}

/// Where vCPU threads' records in flight live (`--in-flight`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum InFlightMode {
    /// Task storage where the kernel has it, hash maps elsewhere.
    #[default]
    Auto,
    /// Task storage, or an error.
    TaskStorage,
    /// Hash maps keyed by thread id (the fallback).
    Hash,
}

/// The store the programs use for what a vCPU thread has in flight (an
/// exit before its entry, a return to user space before the next
/// `KVM_RUN`): one eBPF object each (`exitprof-ebpf/src/in_flight.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InFlightStore {
    /// `BPF_MAP_TYPE_TASK_STORAGE`: cheaper per event (measured in
    /// BENCHMARKS.md), freed with the thread.
    TaskStorage,
    /// LRU hash maps keyed by thread id, emptied at thread exit by
    /// `sched_process_exit`.
    Hash,
}

/// Linux 5.12 let tracing programs (tracepoints, raw tracepoints) use
/// task storage (commit a10787e6d58c, "bpf: Enable task local storage for
/// tracing programs"); 5.11 had it for LSM programs only.
const TASK_STORAGE_SINCE: (u32, u32) = (5, 12);

impl InFlightStore {
    /// Decides from `host`: task storage needs Linux 5.12 and the
    /// kernel's BTF (the helper takes the BTF-typed current task). The
    /// string says why the hash store was chosen ("" for task storage).
    ///
    /// # Errors
    /// [`LoadError::TaskStorageUnavailable`] when `--in-flight
    /// task-storage` cannot be had.
    pub fn decide(mode: InFlightMode, host: &Host) -> Result<(Self, String), LoadError> {
        if mode == InFlightMode::Hash {
            return Ok((Self::Hash, "--in-flight hash".to_owned()));
        }
        let why_not = match release_version(&host.release) {
            None => Some(format!("kernel release {:?} unreadable", host.release)),
            Some(v) if v < TASK_STORAGE_SINCE => Some(format!(
                "Linux {}.{} has no task storage for tracing programs (5.12 and later have)",
                v.0, v.1
            )),
            Some(_) if !host.btf_dir.join("vmlinux").exists() => Some(format!(
                "no kernel BTF ({}/vmlinux), which task storage needs",
                host.btf_dir.display()
            )),
            Some(_) => None,
        };
        match (why_not, mode) {
            (None, _) => Ok((Self::TaskStorage, String::new())),
            (Some(why), InFlightMode::TaskStorage) => Err(LoadError::TaskStorageUnavailable(why)),
            (Some(why), _) => Ok((Self::Hash, why)),
        }
    }
}

/// `(major, minor)` of a release like `6.1.0-28-amd64` or `5.12.0`.
fn release_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Which groups attach raw, with the offsets they need, or why not.
#[derive(Debug)]
pub struct RawPlan {
    vmexit: Result<(), String>,
    handlers: Result<(), String>,
    /// The structure offsets of the raw `kvm_exit` program.
    pub offsets: RawOffsets,
}

impl RawPlan {
    /// Decides per group from `host`'s BTF; with exit `sites`, the raw
    /// `kvm_exit` must also find the guest's RIP (SVM only: see
    /// `RawOffsets::vmcb_save_rip`).
    ///
    /// # Errors
    /// [`LoadError::RawUnavailable`] when `--attach raw` cannot be had.
    pub fn decide(mode: AttachMode, host: &Host, sites: bool) -> Result<Self, LoadError> {
        let classic = || Err("--attach classic".to_owned());
        let mut plan = Self {
            vmexit: classic(),
            handlers: classic(),
            offsets: RawOffsets::default(),
        };
        if mode == AttachMode::Classic {
            return Ok(plan);
        }
        match resolve(host, &mut plan.offsets, sites) {
            Ok((vmexit, handlers)) => {
                plan.vmexit = vmexit;
                plan.handlers = handlers;
            }
            Err(why) => {
                plan.vmexit = Err(why.clone());
                plan.handlers = Err(why);
            }
        }
        if mode == AttachMode::Raw {
            // kvm_exit/kvm_entry never fire on a backend without VMX/SVM
            // exits (PVM): classic ones there cost nothing.
            let vmexit_needed = backend::detect_in(&host.sys_module).emits_vmexit();
            for (group, needed) in [(&plan.vmexit, vmexit_needed), (&plan.handlers, true)] {
                if let (Err(why), true) = (group, needed) {
                    return Err(LoadError::RawUnavailable(why.clone()));
                }
            }
        }
        Ok(plan)
    }

    /// Whether `group` attaches raw.
    #[must_use]
    pub fn is_raw(&self, group: Group) -> bool {
        match group {
            Group::Vmexit => self.vmexit.is_ok(),
            Group::Handlers => self.handlers.is_ok(),
        }
    }

    /// Raw, classic or mixed.
    #[must_use]
    pub fn attached(&self) -> Attached {
        match (self.vmexit.is_ok(), self.handlers.is_ok()) {
            (true, true) => Attached::Raw,
            (false, false) => Attached::Classic,
            _ => Attached::Mixed,
        }
    }

    /// Why any group is classic ("" when all are raw).
    #[must_use]
    pub fn note(&self) -> String {
        match (&self.vmexit, &self.handlers) {
            (Err(a), Err(b)) if a == b => format!("all classic: {a}"),
            (vmexit, handlers) => [
                vmexit
                    .as_ref()
                    .err()
                    .map(|why| format!("kvm_exit/kvm_entry classic: {why}")),
                handlers
                    .as_ref()
                    .err()
                    .map(|why| format!("handler events classic: {why}")),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; "),
        }
    }
}

/// Whether each group can go raw: (`vmexit`, `handlers`), or why not.
type GroupsRaw = (Result<(), String>, Result<(), String>);

/// Reads the host's BTF once (vmlinux, then kvm's and the vendor's split
/// BTF on top of it) and decides per group, filling the offsets the raw
/// `kvm_exit` needs; `Err` when no group can go raw.
fn resolve(host: &Host, offsets: &mut RawOffsets, sites: bool) -> Result<GroupsRaw, String> {
    let dir = &host.btf_dir;
    let module = dir.join("kvm").exists().then_some("kvm");
    if module.is_none() && host.loadable("kvm") {
        return Err(format!(
            "the kvm module has no BTF ({}/kvm is missing: it was built without it)",
            dir.display()
        ));
    }
    let no_btf = |e: BtfError| format!("no kernel BTF ({e})");
    let vmlinux = Vmlinux::load(dir).map_err(no_btf)?;
    let kvm = vmlinux.with_module(dir, module).map_err(no_btf)?;
    let vmexit = check_args(&kvm, Group::Vmexit)
        .and_then(|()| vmexit_offsets(host, &vmlinux, &kvm, offsets, sites));
    Ok((vmexit, check_args(&kvm, Group::Handlers)))
}

/// Checks the raw programs of `group` against their BTF prototypes.
fn check_args(btf: &Btf, group: Group) -> Result<(), String> {
    for hook in hooks::all() {
        let Some(raw) = hook.raw.filter(|r| r.group == group) else {
            continue;
        };
        let args = btf.tracepoint_args(hook.event).ok_or_else(|| {
            format!(
                "no BTF prototype for {} (btf_trace_{})",
                hook.event, hook.event
            )
        })?;
        for (i, want) in raw.args.iter().enumerate() {
            let ok = match (want, args.get(i)) {
                (RawArg::Int(size), Some(Arg::Int(got))) => got == size,
                (RawArg::Vcpu, Some(Arg::StructPtr(name))) => name == "kvm_vcpu",
                _ => false,
            };
            if !ok {
                return Err(format!(
                    "{} argument {i} is {:?} in BTF, not {want:?}",
                    hook.event,
                    args.get(i)
                ));
            }
        }
    }
    Ok(())
}

/// The vendor offsets of the raw `kvm_exit` program.
fn vmexit_offsets(
    host: &Host,
    vmlinux: &Vmlinux,
    kvm: &Btf,
    offsets: &mut RawOffsets,
    sites: bool,
) -> Result<(), String> {
    let field = |btf: &Btf, name: &str, path: &[&str], sizes: &[u32]| match btf.offset(name, path) {
        Some((off, size)) if sizes.contains(&size) => Ok(off),
        Some((_, size)) => Err(format!(
            "struct {name}.{} is {size} bytes in BTF",
            path.join(".")
        )),
        None => Err(format!("no struct {name}.{} in BTF", path.join("."))),
    };
    offsets.kvm_vcpu_id = field(kvm, "kvm_vcpu", &["vcpu_id"], &[4])?;
    let vendor = backend::vendor_module_in(&host.sys_module)
        .ok_or_else(|| "no VMX/SVM vendor module (kvm_amd, kvm_intel) is loaded".to_owned())?;
    let dir: &Path = &host.btf_dir;
    let module_btf;
    let btf = if dir.join(vendor.name).exists() {
        module_btf = vmlinux
            .with_module(dir, Some(vendor.name))
            .map_err(|e| e.to_string())?;
        &module_btf
    } else if host.loadable(vendor.name) {
        return Err(format!(
            "{} has no BTF ({}/{} is missing: the module was built without it)",
            vendor.name,
            dir.display(),
            vendor.name
        ));
    } else {
        // Built into the kernel (and so is kvm): its types are in vmlinux.
        kvm
    };
    if vendor == KVM_AMD {
        offsets.svm_vmcb = field(btf, "vcpu_svm", &["vmcb"], &[8])?;
        offsets.vmcb_exit_code = field(btf, "vmcb", &["control", "exit_code"], &[4, 8])?;
        if sites {
            offsets.vmcb_save_rip = field(btf, "vmcb", &["save", "rip"], &[8])
                .map_err(|why| format!("exit sites need the guest RIP: {why}"))?;
        }
    } else {
        if sites {
            // At kvm_exit KVM has not read GUEST_RIP from the VMCS yet:
            // vcpu->arch.regs[VCPU_REGS_RIP] is the previous exit's. The
            // classic record reads it (kvm_rip_read).
            return Err(
                "exit sites on VMX need the classic record's guest_rip (the cached RIP is stale at kvm_exit)"
                    .to_owned(),
            );
        }
        offsets.vmx_exit_reason = field(btf, "vcpu_vmx", &["exit_reason"], &[4])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::host::btf::testing::{
        Builder, KIND_FUNC_PROTO, KIND_INT, KIND_PTR, KIND_STRUCT, KIND_TYPEDEF,
    };

    /// vmlinux BTF with `struct kvm_vcpu` (`vcpu_id` at 4) and a
    /// `btf_trace_*` prototype for every raw program of the hook table,
    /// and the split BTF of `kvm_amd` (`vcpu_svm.vmcb` at 8,
    /// `vmcb.control.exit_code` at 4, `vmcb.save.rip` at 16).
    fn kvm_btf() -> (Vec<u8>, Vec<u8>) {
        let mut b = Builder::new();
        let id = |i: u32| i + 1;
        let int = id(b.ty(KIND_INT, "int", 0, 4, &[32]));
        let u64_ = id(b.ty(KIND_INT, "long long unsigned int", 0, 8, &[64]));
        let (pad, vcpu_id) = (b.s("pad"), b.s("vcpu_id"));
        let vcpu = id(b.ty(
            KIND_STRUCT,
            "kvm_vcpu",
            2,
            8,
            &[pad, int, 0, vcpu_id, int, 32],
        ));
        let vcpu_ptr = id(b.ty(KIND_PTR, "", 0, vcpu, &[]));
        let void_ptr = id(b.ty(KIND_PTR, "", 0, 0, &[]));
        for hook in hooks::all() {
            let Some(raw) = hook.raw else { continue };
            let mut params = vec![0, void_ptr];
            for arg in raw.args {
                let ty = match arg {
                    RawArg::Int(8) => u64_,
                    RawArg::Int(_) => int,
                    RawArg::Vcpu => vcpu_ptr,
                };
                params.extend([0, ty]);
            }
            let vlen = u32::try_from(params.len() / 2).unwrap();
            let proto = id(b.ty(KIND_FUNC_PROTO, "", vlen, 0, &params));
            let ptr = id(b.ty(KIND_PTR, "", 0, proto, &[]));
            b.ty(
                KIND_TYPEDEF,
                &format!("btf_trace_{}", hook.event),
                0,
                ptr,
                &[],
            );
        }
        let mut m = Builder::split(&b);
        let id = |i: u32| b.len() + i + 1;
        let (x, exit_code, control, vcpu_m, vmcb_m) = (
            m.s("x"),
            m.s("exit_code"),
            m.s("control"),
            m.s("vcpu"),
            m.s("vmcb"),
        );
        let (save, rip) = (m.s("save"), m.s("rip"));
        let area = id(m.ty(
            KIND_STRUCT,
            "vmcb_control_area",
            2,
            8,
            &[x, int, 0, exit_code, int, 32],
        ));
        let save_area = id(m.ty(
            KIND_STRUCT,
            "vmcb_save_area",
            2,
            16,
            &[x, int, 0, rip, u64_, 64],
        ));
        let vmcb = id(m.ty(
            KIND_STRUCT,
            "vmcb",
            2,
            24,
            &[control, area, 0, save, save_area, 64],
        ));
        let vmcb_ptr = id(m.ty(KIND_PTR, "", 0, vmcb, &[]));
        m.ty(
            KIND_STRUCT,
            "vcpu_svm",
            2,
            16,
            &[vcpu_m, vcpu, 0, vmcb_m, vmcb_ptr, 64],
        );
        (b.bytes(), m.bytes())
    }

    /// A host under a temporary directory: `btf/` and `module/`.
    struct Fake(PathBuf);

    impl Fake {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("exitprof-plan-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("btf")).unwrap();
            fs::create_dir_all(dir.join("module")).unwrap();
            Self(dir)
        }
        fn host(&self) -> Host {
            Host {
                btf_dir: self.0.join("btf"),
                sys_module: self.0.join("module"),
                release: "6.1.0-28-amd64".to_owned(),
            }
        }
        /// Loads `module` (as a loadable module).
        fn module(&self, module: &str) -> &Self {
            let dir = self.0.join("module").join(module);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("initstate"), "live\n").unwrap();
            self
        }
        fn btf(&self, file: &str, bytes: &[u8]) -> &Self {
            fs::write(self.0.join("btf").join(file), bytes).unwrap();
            self
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn classic_asks_for_nothing() {
        let host = Fake::new("classic");
        let plan = RawPlan::decide(AttachMode::Classic, &host.host(), false).unwrap();
        assert_eq!(plan.attached(), Attached::Classic);
        assert_eq!(plan.note(), "all classic: --attach classic");
    }

    #[test]
    fn no_btf_at_all_is_classic_in_auto_and_an_error_in_raw() {
        let host = Fake::new("nobtf");
        host.module("kvm_amd");
        let plan = RawPlan::decide(AttachMode::Auto, &host.host(), false).unwrap();
        assert_eq!(plan.attached(), Attached::Classic);
        assert!(
            plan.note().starts_with("all classic: no kernel BTF ("),
            "{}",
            plan.note()
        );
        let err = RawPlan::decide(AttachMode::Raw, &host.host(), false).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("raw tracepoints are not possible here: no kernel BTF"),
            "{err}"
        );
    }

    #[test]
    fn a_kvm_module_without_btf_says_so() {
        let (vmlinux, _) = kvm_btf();
        let host = Fake::new("kvm-nobtf");
        host.module("kvm")
            .module("kvm_amd")
            .btf("vmlinux", &vmlinux);
        let plan = RawPlan::decide(AttachMode::Auto, &host.host(), false).unwrap();
        assert_eq!(plan.attached(), Attached::Classic);
        assert!(
            plan.note()
                .starts_with("all classic: the kvm module has no BTF ("),
            "{}",
            plan.note()
        );
    }

    #[test]
    fn pvm_runs_mixed_and_raw_is_allowed_there() {
        // Prototypes of every raw program, kvm built in: the handlers go
        // raw; with no VMX/SVM module the vm-exit group stays classic.
        let (vmlinux, _) = kvm_btf();
        let host = Fake::new("pvm");
        host.module("kvm_pvm").btf("vmlinux", &vmlinux);
        let plan = RawPlan::decide(AttachMode::Auto, &host.host(), false).unwrap();
        assert_eq!(plan.attached(), Attached::Mixed);
        assert!(plan.is_raw(Group::Handlers) && !plan.is_raw(Group::Vmexit));
        assert_eq!(
            plan.note(),
            "kvm_exit/kvm_entry classic: no VMX/SVM vendor module (kvm_amd, kvm_intel) is loaded"
        );
        assert!(RawPlan::decide(AttachMode::Raw, &host.host(), false).is_ok());
    }

    #[test]
    fn svm_with_module_btf_is_all_raw_with_offsets() {
        let (vmlinux, kvm_amd) = kvm_btf();
        let host = Fake::new("svm");
        host.module("kvm_amd")
            .btf("vmlinux", &vmlinux)
            .btf("kvm_amd", &kvm_amd);
        let plan = RawPlan::decide(AttachMode::Raw, &host.host(), false).unwrap();
        assert_eq!(plan.attached(), Attached::Raw);
        assert_eq!(plan.note(), "");
        assert_eq!(
            (
                plan.offsets.kvm_vcpu_id,
                plan.offsets.svm_vmcb,
                plan.offsets.vmcb_exit_code
            ),
            (4, 8, 4)
        );
    }

    /// Exit sites read `vmcb->save.rip` raw on SVM; on VMX the cached RIP
    /// is stale at `kvm_exit`, so the vm-exit group goes classic there.
    #[test]
    fn exit_sites_find_the_guest_rip_on_svm_and_go_classic_on_vmx() {
        let (vmlinux, kvm_amd) = kvm_btf();
        let svm = Fake::new("svm-sites");
        svm.module("kvm_amd")
            .btf("vmlinux", &vmlinux)
            .btf("kvm_amd", &kvm_amd);
        let plan = RawPlan::decide(AttachMode::Raw, &svm.host(), true).unwrap();
        assert_eq!(plan.attached(), Attached::Raw);
        assert_eq!(plan.offsets.vmcb_save_rip, 16);
        let vmx = Fake::new("vmx-sites");
        // kvm_intel built in: its types would be vmlinux's.
        fs::create_dir_all(vmx.0.join("module/kvm_intel")).unwrap();
        vmx.btf("vmlinux", &vmlinux);
        let plan = RawPlan::decide(AttachMode::Auto, &vmx.host(), true).unwrap();
        assert!(!plan.is_raw(Group::Vmexit) && plan.is_raw(Group::Handlers));
        assert!(
            plan.note()
                .contains("exit sites on VMX need the classic record's guest_rip"),
            "{}",
            plan.note()
        );
    }

    #[test]
    fn a_vendor_module_without_btf_keeps_vmexit_classic() {
        let (vmlinux, _) = kvm_btf();
        let host = Fake::new("svm-nobtf");
        host.module("kvm_amd").btf("vmlinux", &vmlinux);
        let plan = RawPlan::decide(AttachMode::Auto, &host.host(), false).unwrap();
        assert_eq!(plan.attached(), Attached::Mixed);
        assert!(
            plan.note()
                .starts_with("kvm_exit/kvm_entry classic: kvm_amd has no BTF (")
        );
        assert!(matches!(
            RawPlan::decide(AttachMode::Raw, &host.host(), false),
            Err(LoadError::RawUnavailable(_))
        ));
    }

    #[test]
    fn in_flight_store_follows_release_and_btf() {
        let (vmlinux, _) = kvm_btf();
        let host = Fake::new("store");
        host.btf("vmlinux", &vmlinux);
        let decide = |mode, release: &str| {
            let mut h = host.host();
            release.clone_into(&mut h.release);
            InFlightStore::decide(mode, &h)
        };
        for release in ["6.1.0-28-amd64", "5.12.0", "6.18.3+pvm"] {
            let (store, why) = decide(InFlightMode::Auto, release).unwrap();
            assert_eq!((store, why.as_str()), (InFlightStore::TaskStorage, ""));
        }
        let (store, why) = decide(InFlightMode::Auto, "5.11.22").unwrap();
        assert_eq!(store, InFlightStore::Hash);
        assert_eq!(
            why,
            "Linux 5.11 has no task storage for tracing programs (5.12 and later have)"
        );
        assert_eq!(
            decide(InFlightMode::Hash, "6.1.0").unwrap(),
            (InFlightStore::Hash, "--in-flight hash".to_owned())
        );
        let err = decide(InFlightMode::TaskStorage, "4.19.0").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("task storage is not possible here: Linux 4.19"),
            "{err}"
        );
        assert!(
            decide(InFlightMode::Auto, "garbage")
                .unwrap()
                .1
                .contains("unreadable")
        );
        // No vmlinux BTF: the hash store, whatever the release.
        let bare = Fake::new("store-nobtf");
        let (store, why) = InFlightStore::decide(InFlightMode::Auto, &bare.host()).unwrap();
        assert_eq!(store, InFlightStore::Hash);
        assert!(why.starts_with("no kernel BTF ("), "{why}");
    }
}
