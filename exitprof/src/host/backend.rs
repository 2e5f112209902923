//! Which KVM backend and vendor module this host runs: the one place that
//! reads `/sys/module` for it (the backend decides whether `kvm_exit`
//! fires; the vendor module holds the paging mode and the BTF raw mode
//! needs).
use std::path::Path;

use crate::model::Backend;

/// Where the kernel lists loaded modules.
pub const SYS_MODULE: &str = "/sys/module";

/// A VMX or SVM vendor module of KVM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VendorModule {
    /// `kvm_intel` or `kvm_amd`.
    pub name: &'static str,
    /// Its nested-paging parameter: `ept` or `npt`.
    pub param: &'static str,
    /// `EPT` or `NPT`, for people.
    pub paging: &'static str,
    /// The backend it provides.
    pub backend: Backend,
}

/// Intel VMX.
pub const KVM_INTEL: VendorModule = VendorModule {
    name: "kvm_intel",
    param: "ept",
    paging: "EPT",
    backend: Backend::Vmx,
};

/// AMD SVM.
pub const KVM_AMD: VendorModule = VendorModule {
    name: "kvm_amd",
    param: "npt",
    paging: "NPT",
    backend: Backend::Svm,
};

/// The PVM backend's module (no nested paging, no `kvm_exit`).
pub const KVM_PVM: &str = "kvm_pvm";

/// The loaded VMX/SVM vendor module under `sys_module`, Intel first.
#[must_use]
pub fn vendor_module_in(sys_module: &Path) -> Option<VendorModule> {
    [KVM_INTEL, KVM_AMD]
        .into_iter()
        .find(|m| sys_module.join(m.name).exists())
}

/// This host's loaded VMX/SVM vendor module.
#[must_use]
pub fn vendor_module() -> Option<VendorModule> {
    vendor_module_in(Path::new(SYS_MODULE))
}

/// The backend from the loaded modules under `sys_module`.
#[must_use]
pub fn detect_in(sys_module: &Path) -> Backend {
    match vendor_module_in(sys_module) {
        Some(m) => m.backend,
        None if sys_module.join(KVM_PVM).exists() => Backend::Pvm,
        None => Backend::Unknown,
    }
}

/// This host's backend.
#[must_use]
pub fn detect() -> Backend {
    detect_in(Path::new(SYS_MODULE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_from_module_directories() {
        let dir = std::env::temp_dir().join(format!("exitprof-backend-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(detect_in(&dir), Backend::Unknown);
        assert_eq!(vendor_module_in(&dir), None);
        std::fs::create_dir(dir.join("kvm_pvm")).unwrap();
        assert_eq!(detect_in(&dir), Backend::Pvm);
        std::fs::create_dir(dir.join("kvm_amd")).unwrap();
        assert_eq!(detect_in(&dir), Backend::Svm);
        assert_eq!(vendor_module_in(&dir), Some(KVM_AMD));
        std::fs::create_dir(dir.join("kvm_intel")).unwrap();
        assert_eq!(detect_in(&dir), Backend::Vmx);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
