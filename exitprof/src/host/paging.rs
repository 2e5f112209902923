//! The paging mode of the KVM vendor module: nested paging (EPT on Intel,
//! NPT on AMD) or shadow paging. Switching it reloads the module, and
//! putting it back (also after exitprof was killed) is `reload.rs`.
use std::{fs, path::Path};

use super::backend::{SYS_MODULE, VendorModule, detect_in, vendor_module, vendor_module_in};
use crate::model::Backend;

/// Why the paging mode cannot be switched here.
#[derive(Debug, thiserror::Error)]
pub enum PagingError {
    /// No reloadable vendor module.
    #[error("{0}")]
    NotSwitchable(String),
    /// A VM other than ours runs: reloading would kill it.
    #[error(
        "another VM is running (pid {0}): reloading the KVM module would end it; stop it or pass --force"
    )]
    VmRunning(u32),
    /// Reloading cannot be shown to bring the same module back.
    #[error("cannot reload {module} safely: {why}")]
    Unprovable {
        /// The module.
        module: String,
        /// Why, and what to do.
        why: String,
    },
    /// A reload failed and loading the original failed too.
    #[error(
        "{module} could not be loaded again ({why}); the host has no {module} now: restore it with `{commands}`"
    )]
    Stranded {
        /// The module.
        module: String,
        /// What failed.
        why: String,
        /// The shell commands that restore the host.
        commands: String,
    },
    /// A VM holds the module: it cannot be unloaded to restore it.
    #[error(
        "{module} is in use by pid {pid} ({comm}), a VM: stop it, then run `exitprof record --restore`"
    )]
    InUse {
        /// The module.
        module: String,
        /// The VM's process.
        pid: u32,
        /// Its command name.
        comm: String,
    },
    /// A restore state file is unreadable.
    #[error("{path}: {why}")]
    State {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// rmmod/modprobe/insmod failed.
    #[error("{command} failed: {why}")]
    Reload {
        /// The command.
        command: String,
        /// Its stderr or error.
        why: String,
    },
    /// Reading sysfs failed.
    #[error("{path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
}

/// "EPT on", "NPT off", or "n/a", from the vendor module's parameter.
#[must_use]
pub fn paging_label() -> String {
    vendor_module().map_or_else(
        || "n/a".to_owned(),
        |m| match nested(&m) {
            Ok(true) => format!("{} on", m.paging),
            Ok(false) => format!("{} off", m.paging),
            Err(_) => "n/a".to_owned(),
        },
    )
}

/// The loaded vendor module whose paging mode can be switched.
///
/// # Errors
/// [`PagingError::NotSwitchable`] with the reason.
pub fn switchable() -> Result<VendorModule, PagingError> {
    switchable_in(Path::new(SYS_MODULE))
}

/// As [`switchable`], under `sys_module`.
///
/// # Errors
/// [`PagingError::NotSwitchable`] with the reason.
pub fn switchable_in(sys_module: &Path) -> Result<VendorModule, PagingError> {
    if let Some(m) = vendor_module_in(sys_module) {
        // Loadable modules have `initstate`; built-in ones do not.
        if !sys_module.join(m.name).join("initstate").exists() {
            return Err(PagingError::NotSwitchable(format!(
                "{} is built into the kernel and cannot be reloaded with {}=",
                m.name, m.param
            )));
        }
        return Ok(m);
    }
    Err(PagingError::NotSwitchable(
        if detect_in(sys_module) == Backend::Pvm {
            "this host's KVM backend is PVM: it has no nested paging (EPT/NPT) to switch"
        } else {
            "neither kvm_intel nor kvm_amd is loaded"
        }
        .into(),
    ))
}

/// Whether nested paging of `m` is on now.
///
/// # Errors
/// When the parameter cannot be read.
pub fn nested(m: &VendorModule) -> Result<bool, PagingError> {
    nested_in(Path::new(SYS_MODULE), m)
}

/// As [`nested`], under `sys_module`.
///
/// # Errors
/// When the parameter cannot be read.
pub fn nested_in(sys_module: &Path, m: &VendorModule) -> Result<bool, PagingError> {
    let path = sys_module.join(m.name).join("parameters").join(m.param);
    let value = fs::read_to_string(&path).map_err(|error| PagingError::Read {
        path: path.display().to_string(),
        error,
    })?;
    Ok(matches!(value.trim(), "Y" | "1"))
}

/// `npt=1` or `ept=0`.
#[must_use]
pub fn setting(m: &VendorModule, nested: bool) -> String {
    format!("{}={}", m.param, u8::from(nested))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switchability_from_sysfs() {
        let dir = std::env::temp_dir().join(format!("exitprof-paging-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("kvm_pvm")).unwrap();
        let err = switchable_in(&dir).unwrap_err().to_string();
        assert!(err.contains("PVM"), "{err}");
        fs::create_dir_all(dir.join("kvm_amd/parameters")).unwrap();
        let err = switchable_in(&dir).unwrap_err().to_string();
        assert_eq!(
            err,
            "kvm_amd is built into the kernel and cannot be reloaded with npt="
        );
        fs::write(dir.join("kvm_amd/initstate"), "live\n").unwrap();
        let m = switchable_in(&dir).unwrap();
        assert_eq!((m.name, m.param), ("kvm_amd", "npt"));
        assert_eq!(setting(&m, false), "npt=0");
        fs::remove_dir_all(&dir).unwrap();
    }
}
