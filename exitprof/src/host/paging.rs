//! The paging mode of the KVM vendor module: nested paging (EPT on Intel,
//! NPT on AMD) or shadow paging, and switching it by reloading the module
//! with `ept=`/`npt=`, every other parameter kept as it was.
use std::{fs, path::Path, process::Command};

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
    /// rmmod/modprobe failed.
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

fn parameters_dir(m: &VendorModule) -> String {
    format!("{SYS_MODULE}/{}/parameters", m.name)
}

/// Whether nested paging of `m` is on now.
///
/// # Errors
/// When the parameter cannot be read.
pub fn nested(m: &VendorModule) -> Result<bool, PagingError> {
    let path = format!("{}/{}", parameters_dir(m), m.param);
    let value = fs::read_to_string(&path).map_err(|error| PagingError::Read { path, error })?;
    Ok(matches!(value.trim(), "Y" | "1"))
}

/// `npt=1` or `ept=0`.
#[must_use]
pub fn setting(m: &VendorModule, nested: bool) -> String {
    format!("{}={}", m.param, u8::from(nested))
}

/// Reloads `m` with nested paging `nested`, every other parameter as it
/// is now.
///
/// # Errors
/// When rmmod or modprobe fails.
pub fn reload(m: &VendorModule, nested: bool) -> Result<(), PagingError> {
    let dir = parameters_dir(m);
    let mut args = vec![setting(m, nested)];
    let entries = fs::read_dir(&dir).map_err(|error| PagingError::Read {
        path: dir.clone(),
        error,
    })?;
    let mut others: Vec<(String, String)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let value = fs::read_to_string(e.path()).ok()?;
            Some((name, value.trim().to_owned()))
        })
        .filter(|(name, value)| name != m.param && !value.is_empty() && !value.contains(' '))
        .collect();
    others.sort();
    args.extend(others.into_iter().map(|(n, v)| format!("{n}={v}")));
    run(Command::new("rmmod").arg(m.name))?;
    run(Command::new("modprobe").arg(m.name).args(&args))
}

fn run(cmd: &mut Command) -> Result<(), PagingError> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| PagingError::Reload {
        command: command.clone(),
        why: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(PagingError::Reload {
            command,
            why: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Puts the paging mode back as it was when dropped (after a failure, on
/// Ctrl-C, at the end).
pub struct Restore {
    module: VendorModule,
    nested: bool,
}

impl Restore {
    /// Remembers the current mode of `module`.
    ///
    /// # Errors
    /// When it cannot be read.
    pub fn new(module: VendorModule) -> Result<Self, PagingError> {
        let nested = nested(&module)?;
        Ok(Self { module, nested })
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        if nested(&self.module).ok() != Some(self.nested) {
            let setting = setting(&self.module, self.nested);
            let name = self.module.name;
            match reload(&self.module, self.nested) {
                Ok(()) => eprintln!("exitprof: restored {name} {setting}"),
                Err(e) => eprintln!(
                    "exitprof: could not restore {name} {setting}: {e}; run `rmmod {name} && modprobe {name} {setting}`"
                ),
            }
        }
    }
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
