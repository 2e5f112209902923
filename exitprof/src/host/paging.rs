//! The paging mode of the KVM vendor module: nested paging (EPT on Intel,
//! NPT on AMD) or shadow paging; switching it reloads the module
//! (`reload.rs`), and [`Restore`] puts the original mode back, also
//! after exitprof was killed (`record --restore`).
use std::{
    fs,
    path::{Path, PathBuf},
};

use super::{
    backend::{SYS_MODULE, VendorModule, detect_in, vendor_module, vendor_module_in},
    reload::Reload,
};
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

/// Where a record that switched the paging mode keeps what undoes it
/// until it is undone (tmpfs: a reboot restores the module anyway).
pub const STATE_FILE: &str = "/run/exitprof/paging-restore.json";

/// Puts the paging mode back as it was when dropped (after a failure, on
/// Ctrl-C, at the end). While it lives, what undoes the switch is also in
/// [`STATE_FILE`], so that a killed exitprof can be repaired later
/// ([`repair`]).
pub struct Restore {
    reload: Reload,
    state: PathBuf,
}

impl Restore {
    /// Remembers `reload`'s original mode, in memory and in the state
    /// file.
    ///
    /// # Errors
    /// When the state file cannot be written.
    pub fn new(reload: Reload) -> Result<Self, PagingError> {
        let state = PathBuf::from(STATE_FILE);
        let fail = |why: String| PagingError::State {
            path: STATE_FILE.to_owned(),
            why,
        };
        if let Some(dir) = state.parent() {
            fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        }
        let json = serde_json::to_string(&reload).map_err(|e| fail(e.to_string()))?;
        fs::write(&state, json).map_err(|e| fail(e.to_string()))?;
        Ok(Self { reload, state })
    }

    /// The reload it undoes.
    #[must_use]
    pub const fn reload(&self) -> &Reload {
        &self.reload
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        match restore(&self.reload) {
            Ok(Some(setting)) => eprintln!("exitprof: restored {} {setting}", self.reload.module),
            Ok(None) => {}
            Err(e) => {
                // The state file stays: `record --restore` can retry.
                eprintln!("exitprof: {e}");
                return;
            }
        }
        let _ = fs::remove_file(&self.state);
    }
}

/// Puts `reload`'s module back in its original mode: nothing when it is
/// in it; a reload when it runs in the other; a load when it is gone.
/// Returns the setting restored, if anything was done.
///
/// # Errors
/// When the module could not be brought back (the error names the
/// commands that do it).
pub fn restore(reload: &Reload) -> Result<Option<String>, PagingError> {
    let dir = Path::new(SYS_MODULE).join(&reload.module);
    let setting = format!("{}={}", reload.param, u8::from(reload.nested));
    if dir.exists() {
        let path = dir.join("parameters").join(&reload.param);
        let now = fs::read_to_string(&path).map(|v| matches!(v.trim(), "Y" | "1"));
        if now.is_ok_and(|n| n == reload.nested) {
            return Ok(None);
        }
        reload.switch(reload.nested)?;
    } else {
        reload.load_original()?;
    }
    Ok(Some(setting))
}

/// What a killed record left to undo: restores it and removes the state
/// file. Returns what was done, for people (`None`: nothing was left).
///
/// # Errors
/// When the state file is unreadable or the module cannot be restored.
pub fn repair() -> Result<Option<String>, PagingError> {
    let text = match fs::read_to_string(STATE_FILE) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(PagingError::State {
                path: STATE_FILE.to_owned(),
                why: e.to_string(),
            });
        }
    };
    let reload: Reload = serde_json::from_str(&text).map_err(|e| PagingError::State {
        path: STATE_FILE.to_owned(),
        why: format!("not a restore state ({e}); delete it after checking the module by hand"),
    })?;
    let done = restore(&reload)?;
    let _ = fs::remove_file(STATE_FILE);
    Ok(Some(match done {
        Some(setting) => format!("restored {} {setting}", reload.module),
        None => format!(
            "{} was already back in its original mode ({}={})",
            reload.module,
            reload.param,
            u8::from(reload.nested)
        ),
    }))
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
