//! What one boot of a sandbox is asked to do, and what both backends
//! share: the place of their files and the error of a boot that stalled.
use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::util::workspace_root;

/// Which hardware virtualization the nested sandbox emulates (and so
/// which KVM vendor module runs in it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Vendor {
    /// AMD SVM: `kvm-amd` under QEMU TCG (`-cpu qemu64,+svm,+npt`).
    Svm,
    /// Intel VMX: `kvm-intel` under Bochs (`corei7_haswell_4770`: VMX with
    /// EPT, VPID and unrestricted guest).
    Vmx,
}

impl Vendor {
    /// Both, in the order `cargo xtask test` runs them.
    pub const ALL: [Self; 2] = [Self::Svm, Self::Vmx];

    /// `svm`/`vmx`, as exitprof's JSON names the ISA.
    #[must_use]
    pub const fn isa(self) -> &'static str {
        match self {
            Self::Svm => "svm",
            Self::Vmx => "vmx",
        }
    }

    /// The vendor module's name in `/sys/module`.
    #[must_use]
    pub const fn module(self) -> &'static str {
        match self {
            Self::Svm => "kvm_amd",
            Self::Vmx => "kvm_intel",
        }
    }

    /// The vendor module's nested-paging parameter (NPT, EPT).
    #[must_use]
    pub const fn paging_param(self) -> &'static str {
        match self {
            Self::Svm => "npt",
            Self::Vmx => "ept",
        }
    }

    /// The vendor module and the modules it needs (their `depends=`),
    /// loading order, as paths under `lib/modules/<release>/kernel`.
    #[must_use]
    pub const fn module_files(self) -> &'static [&'static str] {
        match self {
            Self::Svm => &[
                "virt/lib/irqbypass.ko",
                "arch/x86/kvm/kvm.ko",
                "drivers/crypto/ccp/ccp.ko",
                "arch/x86/kvm/kvm-amd.ko",
            ],
            Self::Vmx => &[
                "virt/lib/irqbypass.ko",
                "arch/x86/kvm/kvm.ko",
                "arch/x86/kvm/kvm-intel.ko",
            ],
        }
    }

    /// The emulator, for messages.
    #[must_use]
    pub const fn emulator(self) -> &'static str {
        match self {
            Self::Svm => "QEMU TCG",
            Self::Vmx => "Bochs",
        }
    }
}

impl std::fmt::Display for Vendor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.isa())
    }
}

/// One boot of a sandbox.
pub struct Scenario<'a> {
    /// Name (serial log `target/sandbox/<name>.log`).
    pub name: &'a str,
    /// The sandbox it boots.
    pub vendor: Vendor,
    /// Shell script run after boot; `exitprof` is on PATH. Several
    /// scenarios share one boot through [`super::sections`].
    pub script: &'a str,
    /// The vendor module's nested paging (`npt=`/`ept=`) at boot.
    pub nested_paging: bool,
    /// Stop the emulator after this long.
    pub timeout: Duration,
    /// A directory holding patched `arch/x86/kvm/kvm.ko` and the vendor
    /// module (`cargo xtask kernel`) to boot with instead of the image's.
    pub modules: Option<&'a Path>,
    /// More host programs to carry (with their libraries): (host path,
    /// path in the sandbox).
    pub extra: &'a [(&'a str, &'a str)],
    /// Virtual CPUs of the sandbox (QEMU; Bochs always emulates one).
    pub cpus: u8,
}

/// How long a boot took, for the log line.
pub struct BootTimes {
    /// Host seconds from starting the emulator until `/init` reported the
    /// vendor module loaded (`@@EXITPROF booted`), when known.
    pub booted_s: Option<f64>,
    /// CPU seconds the emulator used, when known (wall time on these
    /// shared machines says little).
    pub cpu_s: Option<f64>,
}

/// `target/sandbox`.
pub fn sandbox_dir() -> PathBuf {
    workspace_root().join("target/sandbox")
}

/// The whole sandbox stopped making progress (the emulator was killed).
#[derive(Debug)]
pub struct Stalled(pub String);

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stalled {}

impl Stalled {
    /// `scenario` ran past its timeout; `log` is its serial console.
    pub fn timed_out(scenario: &Scenario, log: &Path) -> anyhow::Error {
        Self(format!(
            "{}: the sandbox did not finish within {:?}; serial log {}:\n{}",
            scenario.name,
            scenario.timeout,
            log.display(),
            tail(log)
        ))
        .into()
    }
}

/// The last lines of a log, for error messages.
pub fn tail(log: &Path) -> String {
    let text = fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
