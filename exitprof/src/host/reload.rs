//! Reloading the KVM vendor module without stranding the host, and
//! putting it back as it was ([`Restore`], [`repair`]). Before
//! anything is unloaded, [`Reload::prove`] shows that the module can be
//! loaded again, from the file that is running now, with the parameters
//! it will be given; a failed load is retried with the original
//! parameters, and only when that fails too is the host left without the
//! module, with the exact commands that bring it back.
//!
//! "The file that is running now" is checked by GNU build id: the kernel
//! publishes the running module's note in
//! `/sys/module/<m>/notes/.note.gnu.build-id`, and the same note is in
//! the `.ko` file. (Debian's in-tree modules have no `srcversion`.)
use std::{
    fmt::Write as _,
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde::{Deserialize, Serialize};

use super::{
    backend::{SYS_MODULE, VendorModule},
    paging::PagingError,
    procfs,
};

/// How the module is loaded again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Loader {
    /// `modprobe NAME` (the file in `/lib/modules` that `modinfo -n`
    /// names).
    Modprobe,
    /// `insmod FILE` (`--module FILE`).
    Insmod,
}

/// The tools a reload runs, behind one seam so that the proof is tested
/// without root.
pub trait Tools {
    /// The file `modprobe NAME` would load (`modinfo -n NAME`).
    ///
    /// # Errors
    /// Why it cannot be found, in words.
    fn resolve(&self, name: &str) -> Result<PathBuf, String>;
    /// Whether a program is on `PATH`.
    fn has(&self, program: &str) -> bool;
    /// The module file's bytes, decompressed.
    ///
    /// # Errors
    /// Why they cannot be read, in words.
    fn module_bytes(&self, file: &Path) -> Result<Vec<u8>, String>;
}

/// The real tools.
pub struct System;

fn output(cmd: &mut Command) -> Result<String, String> {
    let shown = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Tools for System {
    fn resolve(&self, name: &str) -> Result<PathBuf, String> {
        let path = output(Command::new("modinfo").args(["-n", name]))?;
        Ok(PathBuf::from(path.trim()))
    }

    fn has(&self, program: &str) -> bool {
        std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| dir.join(program).is_file())
        })
    }

    fn module_bytes(&self, file: &Path) -> Result<Vec<u8>, String> {
        let name = file.to_string_lossy();
        let decompressor = [(".xz", "xz"), (".zst", "zstd"), (".gz", "gzip")]
            .into_iter()
            .find(|(ext, _)| name.ends_with(ext));
        match decompressor {
            None => fs::read(file).map_err(|e| format!("{}: {e}", file.display())),
            Some((_, tool)) => {
                let mut child = Command::new(tool)
                    .args(["-dc"])
                    .arg(file)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("cannot run {tool} to read {}: {e}", file.display()))?;
                let mut bytes = Vec::new();
                let read = child.stdout.take().map(|mut s| s.read_to_end(&mut bytes));
                let ok = child.wait().is_ok_and(|s| s.success());
                if !ok || !matches!(read, Some(Ok(_))) {
                    return Err(format!("{tool} could not decompress {}", file.display()));
                }
                Ok(bytes)
            }
        }
    }
}

/// A reload shown to be possible, and what undoes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reload {
    /// `kvm_intel` or `kvm_amd`.
    pub module: String,
    /// Its paging parameter (`ept`, `npt`).
    pub param: String,
    /// How it is loaded again.
    pub loader: Loader,
    /// The file that is loaded (the running module's).
    pub file: PathBuf,
    /// Every other parameter as the running module has it, in order.
    pub params: Vec<(String, String)>,
    /// The paging mode it ran with before exitprof touched it.
    pub nested: bool,
}

impl Reload {
    /// Proves that `module` (running now with its parameters under
    /// `sys_module`) can be loaded again: from `given` with insmod, or
    /// from the file modprobe resolves; that file must be the running
    /// module (same build id), the loader and rmmod must exist, and the
    /// file must accept every parameter that will be passed.
    ///
    /// # Errors
    /// [`PagingError::Unprovable`] saying why and what to do; nothing has
    /// been touched then.
    pub fn prove(
        sys_module: &Path,
        module: &VendorModule,
        given: Option<&Path>,
        tools: &impl Tools,
    ) -> Result<Self, PagingError> {
        let refuse = |why: String| PagingError::Unprovable {
            module: module.name.to_owned(),
            why,
        };
        let dir = sys_module.join(module.name);
        let (loader, file) = if let Some(file) = given {
            (Loader::Insmod, file.to_path_buf())
        } else {
            let file = tools.resolve(module.name).map_err(|e| {
                refuse(format!(
                    "modprobe cannot find it ({e}); if it was loaded with insmod, pass --module PATH of that .ko"
                ))
            })?;
            (Loader::Modprobe, file)
        };
        let needs: &[&str] = match loader {
            Loader::Modprobe => &["modprobe", "modinfo", "rmmod"],
            Loader::Insmod => &["insmod", "rmmod"],
        };
        for needed in needs {
            if !tools.has(needed) {
                return Err(refuse(format!("{needed} is not on PATH (install kmod)")));
            }
        }
        let note = fs::read(dir.join("notes/.note.gnu.build-id")).map_err(|e| {
            refuse(format!(
                "the running module's build id is unreadable ({}: {e})",
                dir.join("notes/.note.gnu.build-id").display()
            ))
        })?;
        let bytes = tools
            .module_bytes(&file)
            .map_err(|e| refuse(format!("cannot read {}: {e}", file.display())))?;
        if note.len() < 16 || !bytes.windows(note.len()).any(|w| w == note) {
            return Err(refuse(format!(
                "{} is not the running module (its build id differs): {}",
                file.display(),
                match loader {
                    Loader::Modprobe => "pass --module PATH of the .ko that is loaded",
                    Loader::Insmod => "pass the .ko file that is loaded",
                }
            )));
        }
        let accepted = accepted_parameters(&bytes);
        let params = current_parameters(&dir, module)
            .map_err(|e| refuse(format!("cannot read its parameters: {e}")))?;
        for name in std::iter::once(module.param).chain(params.iter().map(|(n, _)| n.as_str())) {
            if !accepted.iter().any(|a| a == name) {
                return Err(refuse(format!(
                    "{} does not accept the parameter {name}= that reloading passes",
                    file.display()
                )));
            }
        }
        let nested = super::paging::nested_in(sys_module, module)?;
        Ok(Self {
            module: module.name.to_owned(),
            param: module.param.to_owned(),
            loader,
            file,
            params,
            nested,
        })
    }

    /// The load command with nested paging `nested`, as argv.
    #[must_use]
    pub fn load_argv(&self, nested: bool) -> Vec<String> {
        let mut argv = match self.loader {
            Loader::Modprobe => vec!["modprobe".to_owned(), self.module.clone()],
            Loader::Insmod => vec!["insmod".to_owned(), self.file.display().to_string()],
        };
        argv.push(format!("{}={}", self.param, u8::from(nested)));
        argv.extend(self.params.iter().map(|(n, v)| format!("{n}={v}")));
        argv
    }

    /// The shell commands that put the module back as it was.
    #[must_use]
    pub fn restore_commands(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "rmmod {} 2>/dev/null; {}",
            self.module,
            self.load_argv(self.nested).join(" ")
        );
        out
    }

    /// Loads the module as it was (after it is gone).
    ///
    /// # Errors
    /// When the load fails: the error names the restoring commands.
    pub fn load_original(&self) -> Result<(), PagingError> {
        run(&self.load_argv(self.nested)).map_err(|e| PagingError::Stranded {
            module: self.module.clone(),
            why: e.to_string(),
            commands: self.restore_commands(),
        })
    }

    /// Unloads the module and loads it with nested paging `nested`. When
    /// that load fails, loads it as it was; when that fails too, the
    /// error names the commands that restore the host.
    ///
    /// # Errors
    /// rmmod fails (nothing changed), or a load fails (see above).
    pub fn switch(&self, nested: bool) -> Result<(), PagingError> {
        run(&["rmmod".to_owned(), self.module.clone()])?;
        match run(&self.load_argv(nested)) {
            Ok(()) => Ok(()),
            Err(first) => match run(&self.load_argv(self.nested)) {
                Ok(()) => Err(first),
                Err(second) => Err(PagingError::Stranded {
                    module: self.module.clone(),
                    why: format!("{first}; then {second}"),
                    commands: self.restore_commands(),
                }),
            },
        }
    }
}

/// The parameters a module file accepts: its `.modinfo` section holds a
/// `parmtype=NAME:TYPE` string for each (read from the bytes, so that
/// neither `/lib/modules` nor a particular `modinfo` is needed).
fn accepted_parameters(bytes: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"parmtype=";
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some(at) = rest.windows(KEY.len()).position(|w| w == KEY) {
        let value = &rest[at + KEY.len()..];
        let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
        if let Some(name) = value[..end].split(|&b| b == b':').next() {
            out.push(String::from_utf8_lossy(name).into_owned());
        }
        rest = &value[end..];
    }
    out
}

/// Every parameter of the running module but the paging one, as sysfs
/// shows it (values a load cannot take, empty or with spaces, left out).
fn current_parameters(dir: &Path, module: &VendorModule) -> std::io::Result<Vec<(String, String)>> {
    let mut params: Vec<(String, String)> = fs::read_dir(dir.join("parameters"))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let value = fs::read_to_string(e.path()).ok()?;
            Some((name, value.trim().to_owned()))
        })
        .filter(|(name, value)| name != module.param && !value.is_empty() && !value.contains(' '))
        .collect();
    params.sort();
    Ok(params)
}

fn run(argv: &[String]) -> Result<(), PagingError> {
    let command = argv.join(" ");
    let (program, rest) = argv.split_first().expect("a command");
    let out = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| PagingError::Reload {
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
        if let Some(pid) = procfs::other_vm(&[std::process::id()]) {
            return Err(PagingError::InUse {
                module: reload.module.clone(),
                pid,
                comm: procfs::comm(pid).unwrap_or_else(|| "?".to_owned()),
            });
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
    use crate::host::backend::KVM_AMD;

    /// A build-id note as the kernel publishes it: namesz 4, descsz 20,
    /// type 3 (`NT_GNU_BUILD_ID`), "GNU\0", 20 bytes of id.
    fn note(id: u8) -> Vec<u8> {
        let mut n = Vec::new();
        for v in [4u32, 20, 3] {
            n.extend(v.to_le_bytes());
        }
        n.extend(b"GNU\0");
        n.extend([id; 20]);
        n
    }

    struct Fake {
        resolved: Result<PathBuf, String>,
        missing: &'static str,
        ko: Vec<u8>,
    }

    impl Tools for Fake {
        fn resolve(&self, _: &str) -> Result<PathBuf, String> {
            self.resolved.clone()
        }
        fn has(&self, program: &str) -> bool {
            program != self.missing
        }
        fn module_bytes(&self, _: &Path) -> Result<Vec<u8>, String> {
            Ok(self.ko.clone())
        }
    }

    /// `/sys/module/kvm_amd` with build id 7, npt=Y, avic=N, vls=Y.
    fn sysfs(name: &str) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("exitprof-reload-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dir = root.join("kvm_amd");
        fs::create_dir_all(dir.join("notes")).unwrap();
        fs::create_dir_all(dir.join("parameters")).unwrap();
        fs::write(dir.join("notes/.note.gnu.build-id"), note(7)).unwrap();
        for (p, v) in [("npt", "Y\n"), ("avic", "N\n"), ("vls", "Y\n")] {
            fs::write(dir.join("parameters").join(p), v).unwrap();
        }
        root
    }

    /// A module file with build id 7 accepting `params`.
    fn ko(params: &[&str]) -> Vec<u8> {
        let mut ko = b"\x7fELF....".to_vec();
        ko.extend(note(7));
        for p in params {
            ko.extend(format!("parmtype={p}:bool\0").bytes());
        }
        ko.extend(b"...");
        ko
    }

    fn fake() -> Fake {
        Fake {
            resolved: Ok(PathBuf::from("/lib/modules/x/kvm-amd.ko")),
            missing: "",
            ko: ko(&["npt", "avic", "vls", "nested"]),
        }
    }

    #[test]
    fn the_running_file_reloads_with_every_parameter() {
        let root = sysfs("ok");
        let r = Reload::prove(&root, &KVM_AMD, None, &fake()).unwrap();
        assert_eq!(r.loader, Loader::Modprobe);
        assert!(r.nested);
        assert_eq!(
            r.load_argv(false).join(" "),
            "modprobe kvm_amd npt=0 avic=N vls=Y"
        );
        assert_eq!(
            r.restore_commands(),
            "rmmod kvm_amd 2>/dev/null; modprobe kvm_amd npt=1 avic=N vls=Y"
        );
        let given =
            Reload::prove(&root, &KVM_AMD, Some(Path::new("/opt/kvm-amd.ko")), &fake()).unwrap();
        assert_eq!(
            given.load_argv(true).join(" "),
            "insmod /opt/kvm-amd.ko npt=1 avic=N vls=Y"
        );
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn unprovable_reloads_are_refused_saying_why() {
        let root = sysfs("refuse");
        let refuse = |tools: Fake, given: Option<&Path>| {
            Reload::prove(&root, &KVM_AMD, given, &tools)
                .unwrap_err()
                .to_string()
        };
        let no_modules = Fake {
            resolved: Err("modinfo: can't change directory to '/lib/modules': No such file".into()),
            ..fake()
        };
        assert_eq!(
            refuse(no_modules, None),
            "cannot reload kvm_amd safely: modprobe cannot find it (modinfo: can't change directory to '/lib/modules': No such file); if it was loaded with insmod, pass --module PATH of that .ko"
        );
        let other_build = Fake {
            ko: note(8),
            ..fake()
        };
        assert_eq!(
            refuse(other_build, None),
            "cannot reload kvm_amd safely: /lib/modules/x/kvm-amd.ko is not the running module (its build id differs): pass --module PATH of the .ko that is loaded"
        );
        let no_insmod = Fake {
            missing: "insmod",
            ..fake()
        };
        assert_eq!(
            refuse(no_insmod, Some(Path::new("/opt/kvm-amd.ko"))),
            "cannot reload kvm_amd safely: insmod is not on PATH (install kmod)"
        );
        let old_module = Fake {
            ko: ko(&["npt", "avic"]),
            ..fake()
        };
        assert_eq!(
            refuse(old_module, None),
            "cannot reload kvm_amd safely: /lib/modules/x/kvm-amd.ko does not accept the parameter vls= that reloading passes"
        );
        fs::remove_dir_all(root).unwrap();
    }
}
