//! The paging mode of the KVM vendor module: nested paging (EPT on Intel,
//! NPT on AMD) or shadow paging, and switching it by reloading the module
//! with `ept=`/`npt=`, every other parameter kept as it was.
use std::{fs, path::Path, process::Command};

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

/// A loadable vendor module and its paging parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VendorModule {
    /// `kvm_intel` or `kvm_amd`.
    pub name: &'static str,
    /// `ept` or `npt`.
    pub param: &'static str,
}

impl VendorModule {
    /// The host's vendor module, if it can be reloaded.
    ///
    /// # Errors
    /// [`PagingError::NotSwitchable`] with the reason.
    pub fn detect() -> Result<Self, PagingError> {
        Self::detect_in(Path::new("/sys/module"))
    }

    /// As [`Self::detect`], under `sys_module`.
    ///
    /// # Errors
    /// [`PagingError::NotSwitchable`] with the reason.
    pub fn detect_in(sys_module: &Path) -> Result<Self, PagingError> {
        for (name, param) in [("kvm_intel", "ept"), ("kvm_amd", "npt")] {
            let dir = sys_module.join(name);
            if !dir.exists() {
                continue;
            }
            // Loadable modules have `initstate`; built-in ones do not.
            if !dir.join("initstate").exists() {
                return Err(PagingError::NotSwitchable(format!(
                    "{name} is built into the kernel and cannot be reloaded with {param}="
                )));
            }
            return Ok(Self { name, param });
        }
        if sys_module.join("kvm_pvm").exists() {
            return Err(PagingError::NotSwitchable(
                "this host's KVM backend is PVM: it has no nested paging (EPT/NPT) to switch"
                    .into(),
            ));
        }
        Err(PagingError::NotSwitchable(
            "neither kvm_intel nor kvm_amd is loaded".into(),
        ))
    }

    fn parameters_dir(&self) -> String {
        format!("/sys/module/{}/parameters", self.name)
    }

    /// Whether nested paging is on now.
    ///
    /// # Errors
    /// When the parameter cannot be read.
    pub fn nested(&self) -> Result<bool, PagingError> {
        let path = format!("{}/{}", self.parameters_dir(), self.param);
        let value = fs::read_to_string(&path).map_err(|error| PagingError::Read { path, error })?;
        Ok(matches!(value.trim(), "Y" | "1"))
    }

    /// `npt=1` or `ept=0`.
    #[must_use]
    pub fn setting(&self, nested: bool) -> String {
        format!("{}={}", self.param, u8::from(nested))
    }

    /// Reloads the module with nested paging `nested`, every other
    /// parameter as it is now.
    ///
    /// # Errors
    /// When rmmod or modprobe fails.
    pub fn reload(&self, nested: bool) -> Result<(), PagingError> {
        let dir = self.parameters_dir();
        let mut args = vec![self.setting(nested)];
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
            .filter(|(name, value)| name != self.param && !value.is_empty() && !value.contains(' '))
            .collect();
        others.sort();
        args.extend(others.into_iter().map(|(n, v)| format!("{n}={v}")));
        run(Command::new("rmmod").arg(self.name))?;
        run(Command::new("modprobe").arg(self.name).args(&args))
    }
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

/// The first process other than `except` that holds a KVM VM open.
#[must_use]
pub fn other_vm(except: &[u32]) -> Option<u32> {
    let procs = fs::read_dir("/proc").ok()?;
    for entry in procs.filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if except.contains(&pid) {
            continue;
        }
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            if fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == "anon_inode:kvm-vm") {
                return Some(pid);
            }
        }
    }
    None
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
        let nested = module.nested()?;
        Ok(Self { module, nested })
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        if self.module.nested().ok() != Some(self.nested) {
            match self.module.reload(self.nested) {
                Ok(()) => eprintln!(
                    "exitprof: restored {} {}",
                    self.module.name,
                    self.module.setting(self.nested)
                ),
                Err(e) => eprintln!(
                    "exitprof: could not restore {} {}: {e}; run `rmmod {} && modprobe {} {}`",
                    self.module.name,
                    self.module.setting(self.nested),
                    self.module.name,
                    self.module.name,
                    self.module.setting(self.nested)
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
        let err = VendorModule::detect_in(&dir).unwrap_err().to_string();
        assert!(err.contains("PVM"), "{err}");
        fs::create_dir_all(dir.join("kvm_amd/parameters")).unwrap();
        let err = VendorModule::detect_in(&dir).unwrap_err().to_string();
        assert_eq!(
            err,
            "kvm_amd is built into the kernel and cannot be reloaded with npt="
        );
        fs::write(dir.join("kvm_amd/initstate"), "live\n").unwrap();
        let m = VendorModule::detect_in(&dir).unwrap();
        assert_eq!((m.name, m.param), ("kvm_amd", "npt"));
        assert_eq!(m.setting(false), "npt=0");
        fs::remove_dir_all(&dir).unwrap();
    }
}
