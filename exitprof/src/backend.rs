//! Which KVM backend this host runs: it decides whether `kvm_exit` fires.
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The KVM backend of a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Intel VMX (`kvm_intel`).
    Vmx,
    /// AMD SVM (`kvm_amd`).
    Svm,
    /// PVM (`kvm_pvm`): `kvm_exit`/`kvm_entry` exist but never fire.
    Pvm,
    /// No known vendor module is loaded.
    Unknown,
}

impl Backend {
    /// Detects the backend from the loaded modules under `sys_module`
    /// (normally `/sys/module`).
    #[must_use]
    pub fn detect_in(sys_module: &Path) -> Self {
        if sys_module.join("kvm_intel").exists() {
            Self::Vmx
        } else if sys_module.join("kvm_amd").exists() {
            Self::Svm
        } else if sys_module.join("kvm_pvm").exists() {
            Self::Pvm
        } else {
            Self::Unknown
        }
    }

    /// Detects this host's backend.
    #[must_use]
    pub fn detect() -> Self {
        Self::detect_in(Path::new("/sys/module"))
    }

    /// The name used in tables and JSON.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Vmx => "vmx",
            Self::Svm => "svm",
            Self::Pvm => "pvm",
            Self::Unknown => "unknown",
        }
    }

    /// Whether `kvm_exit`/`kvm_entry` fire on this backend.
    #[must_use]
    pub const fn emits_vmexit(self) -> bool {
        matches!(self, Self::Vmx | Self::Svm)
    }

    /// What a user should know about this backend's VM-exit rows, if
    /// anything.
    #[must_use]
    pub const fn vmexit_note(self) -> Option<&'static str> {
        match self {
            Self::Pvm => Some(
                "this host's KVM backend is PVM: kvm_exit/kvm_entry are not emitted there, so \
                 there are no VM-exit rows; the exit-handler events below (cpuid, pio, mmio, msr, \
                 hypercall, userspace exits) are what KVM reports on this backend",
            ),
            Self::Unknown => Some(
                "no KVM vendor module (kvm_intel, kvm_amd, kvm_pvm) is loaded: no VM can run, \
                 so there is nothing to count",
            ),
            Self::Vmx | Self::Svm => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_from_module_directories() {
        let dir = std::env::temp_dir().join(format!("exitprof-backend-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(Backend::detect_in(&dir), Backend::Unknown);
        std::fs::create_dir(dir.join("kvm_pvm")).unwrap();
        assert_eq!(Backend::detect_in(&dir), Backend::Pvm);
        std::fs::create_dir(dir.join("kvm_amd")).unwrap();
        assert_eq!(Backend::detect_in(&dir), Backend::Svm);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!Backend::Pvm.emits_vmexit());
        assert!(Backend::Svm.emits_vmexit());
    }
}
