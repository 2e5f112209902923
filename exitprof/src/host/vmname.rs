//! A VM's name, as its operator knows it: from the VMM's command line
//! (`/proc/<pid>/cmdline`), falling back to the process's `comm`.
//!
//! What each VMM offers (see `fixtures/vmm/README.md` for the command lines
//! the tests use and where they come from):
//!
//! - **QEMU**: `-name guest=web1,debug-threads=on` (what libvirt passes),
//!   or the legacy `-name web1[,process=...]`, whose first value is the
//!   guest name. `,,` is QEMU's escape for a comma inside a value.
//! - **Firecracker**: `--id web1` (the jailer execs it as `--id=<id>`); the
//!   default id, `anonymous-instance`, names nothing.
//! - **cloud-hypervisor** has no name option; its VMs are addressed by
//!   their API socket (`--api-socket path=/run/ch/web1.sock`, `ch-remote
//!   --api-socket ...`), so the socket's file name is the name, without a
//!   `.sock`/`.socket` extension (`fd=N` names nothing).
//! - **crosvm**: `crosvm run --name web1` (which also becomes its `comm`,
//!   cut to 15 bytes).
//!
//! The VMM is recognised by the file name of `argv[0]`, so that options of
//! other programs that happen to be spelled alike never name anything.
use std::fs;

use super::procfs;

/// Longest name kept (longer ones are cut, on a character boundary).
pub const MAX_NAME_BYTES: usize = 64;

/// The VMM families whose command lines name their VMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vmm {
    Qemu,
    Firecracker,
    CloudHypervisor,
    Crosvm,
}

impl Vmm {
    /// The VMM whose binary `argv0` is, by its file name.
    fn of(argv0: &str) -> Option<Self> {
        let file = argv0.rsplit('/').next().unwrap_or(argv0);
        if file.starts_with("qemu-system-") || matches!(file, "qemu-kvm" | "kvm" | "qemu") {
            Some(Self::Qemu)
        } else if file.starts_with("firecracker") {
            // Release binaries are named `firecracker-v1.7.0-x86_64`.
            Some(Self::Firecracker)
        } else if file.starts_with("cloud-hypervisor") {
            Some(Self::CloudHypervisor)
        } else if file == "crosvm" {
            Some(Self::Crosvm)
        } else {
            None
        }
    }
}

/// The VM's name of process `pid`: from its VMM's command line, or its
/// `comm` when the command line names nothing (or is no VMM's); `None`
/// when the process is gone.
#[must_use]
pub fn vm_name(pid: u32) -> Option<String> {
    cmdline_name(pid).or_else(|| procfs::comm(pid).map(|c| clean(&c)))
}

/// The name process `pid`'s command line gives its VM, without the `comm`
/// fallback: `None` also for a process that exited and is not yet reaped
/// (a zombie's command line is empty), so a name read while it ran can be
/// kept.
#[must_use]
pub fn cmdline_name(pid: u32) -> Option<String> {
    let bytes = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let argv: Vec<&str> = text.split('\0').filter(|a| !a.is_empty()).collect();
    name_from_argv(&argv)
}

/// The name a VMM's command line gives its VM, or `None` when `argv` is
/// no known VMM's or names nothing (see the module's documentation).
#[must_use]
pub fn name_from_argv<S: AsRef<str>>(argv: &[S]) -> Option<String> {
    let words: Vec<&str> = argv.iter().map(AsRef::as_ref).collect();
    let (program, options) = words.split_first()?;
    let name = match Vmm::of(program)? {
        Vmm::Qemu => last_value(options, &["-name", "--name"])
            .and_then(qemu_guest_name)
            .map(|n| n.replace(",,", ",")),
        Vmm::Firecracker => last_value(options, &["--id"])
            .filter(|id| *id != "anonymous-instance")
            .map(str::to_owned),
        Vmm::CloudHypervisor => last_value(options, &["--api-socket"])
            .and_then(socket_name)
            .map(str::to_owned),
        Vmm::Crosvm => last_value(options, &["--name"]).map(str::to_owned),
    }?;
    let name = clean(&name);
    (!name.is_empty()).then_some(name)
}

/// The value of the last of `options` in `args`, given as `OPT VALUE` or
/// `OPT=VALUE`.
fn last_value<'a>(args: &[&'a str], options: &[&str]) -> Option<&'a str> {
    let mut found = None;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i];
        if options.contains(&arg) {
            found = args.get(i + 1).copied().or(found);
            i += 2;
            continue;
        }
        if let Some((opt, value)) = arg.split_once('=')
            && options.contains(&opt)
        {
            found = Some(value);
        }
        i += 1;
    }
    found
}

/// The guest name of QEMU's `-name` value: `guest=NAME` wherever it is, or
/// a first element without `=` (the implied `guest`), with `,,` read as a
/// comma.
fn qemu_guest_name(value: &str) -> Option<&str> {
    // The elements, split at single commas (`,,` is an escaped comma).
    let mut elements = Vec::new();
    let (mut start, mut i) = (0, 0);
    let bytes = value.as_bytes();
    while i < bytes.len() {
        if bytes[i] == b',' {
            if bytes.get(i + 1) == Some(&b',') {
                i += 2;
                continue;
            }
            elements.push(&value[start..i]);
            start = i + 1;
        }
        i += 1;
    }
    elements.push(&value[start..]);
    let named = elements.iter().rev().find_map(|e| e.strip_prefix("guest="));
    named.or_else(|| elements.first().copied().filter(|e| !e.contains('=')))
}

/// cloud-hypervisor's `--api-socket` value: `path=P` or a bare `P` (not
/// `fd=N`), as the socket's file name without its extension.
fn socket_name(value: &str) -> Option<&str> {
    let path = value
        .split(',')
        .find_map(|e| e.strip_prefix("path="))
        .or_else(|| (!value.contains('=')).then_some(value))?;
    let file = path.rsplit('/').next()?;
    Some(
        file.strip_suffix(".sock")
            .or_else(|| file.strip_suffix(".socket"))
            .unwrap_or(file),
    )
}

/// `name` as shown: control characters (which would steer a terminal) as
/// `?`, at most [`MAX_NAME_BYTES`].
fn clean(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = if c.is_control() { '?' } else { c };
        if out.len() + c.len_utf8() > MAX_NAME_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A documented command line as the VMM's process sees it: the shell
    /// words of `text` (quotes and backslash-newlines as a shell reads
    /// them), without the leading `VAR=value` assignments and the
    /// wrappers that exec the VMM (`sudo`, `taskset -c LIST`).
    fn argv_of(text: &str) -> Vec<String> {
        let mut words = Vec::new();
        let mut word: Option<String> = None;
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek() == Some(&'\n') => {
                    chars.next();
                }
                '\\' => word.get_or_insert_default().extend(chars.next()),
                '\'' => {
                    let w = word.get_or_insert_default();
                    for q in chars.by_ref() {
                        if q == '\'' {
                            break;
                        }
                        w.push(q);
                    }
                }
                '"' => {
                    let w = word.get_or_insert_default();
                    while let Some(q) = chars.next() {
                        match q {
                            '"' => break,
                            '\\' => w.extend(chars.next()),
                            _ => w.push(q),
                        }
                    }
                }
                c if c.is_whitespace() => words.extend(word.take()),
                c => word.get_or_insert_default().push(c),
            }
        }
        words.extend(word);
        let mut start = 0;
        loop {
            match words.get(start).map(String::as_str) {
                Some(w) if w.contains('=') && w.chars().next().is_some_and(char::is_uppercase) => {
                    start += 1;
                }
                Some("sudo") => start += 1,
                Some("taskset") => start += 3,
                _ => break,
            }
        }
        words.split_off(start)
    }

    fn fixture(file: &str) -> String {
        let path = format!("{}/../fixtures/vmm/{file}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Real command lines of each VMM, from its documentation (see
    /// `fixtures/vmm/README.md`), and the name each gives.
    #[test]
    fn names_from_documented_command_lines() {
        let cases = [
            ("qemu-libvirt-boot-cdrom.args", Some("QEMUGuest1")),
            ("qemu-dts-vhost-event-idx.sh", Some("us-vhost-vm1")),
            (
                "firecracker-jailer-exec.sh",
                Some("551e7604-e35c-42b3-b825-416853441234"),
            ),
            ("firecracker-getting-started.sh", None),
            ("cloud-hypervisor-hotplug.sh", Some("ch-socket")),
            ("cloud-hypervisor-api.sh", Some("cloud-hypervisor")),
            ("crosvm-control-socket.sh", None),
            ("crosvm-run-name.sh", Some("web1")),
        ];
        for (file, want) in cases {
            let argv = argv_of(&fixture(file));
            assert_eq!(name_from_argv(&argv).as_deref(), want, "{file}: {argv:?}");
        }
    }

    #[test]
    fn qemu_name_forms() {
        let qemu = |name: &str| name_from_argv(&["/usr/bin/qemu-system-x86_64", "-name", name]);
        assert_eq!(qemu("web1").as_deref(), Some("web1"));
        assert_eq!(qemu("web1,process=qemu-web1").as_deref(), Some("web1"));
        assert_eq!(qemu("guest=web1,debug-threads=on").as_deref(), Some("web1"));
        assert_eq!(qemu("debug-threads=on,guest=db").as_deref(), Some("db"));
        assert_eq!(qemu("guest=a,,b,debug-threads=on").as_deref(), Some("a,b"));
        assert_eq!(qemu("process=x").as_deref(), None);
        assert_eq!(
            name_from_argv(&["qemu-kvm", "--name", "n1"]).as_deref(),
            Some("n1")
        );
        assert_eq!(name_from_argv(&["qemu-system-x86_64", "-m", "1G"]), None);
        assert_eq!(name_from_argv(&["qemu-system-x86_64", "-name"]), None);
    }

    #[test]
    fn other_programs_and_odd_values_name_nothing() {
        assert_eq!(name_from_argv(&["myapp", "--id", "x", "-name", "y"]), None);
        assert_eq!(name_from_argv::<&str>(&[]), None);
        assert_eq!(
            name_from_argv(&["firecracker", "--id", "anonymous-instance"]),
            None
        );
        assert_eq!(
            name_from_argv(&["cloud-hypervisor", "--api-socket", "fd=3"]),
            None
        );
        assert_eq!(
            name_from_argv(&["crosvm", "run", "--name=vm\x1b[2J", "bzImage"]).as_deref(),
            Some("vm?[2J"),
            "control characters never reach the terminal"
        );
        let long = "x".repeat(100);
        assert_eq!(
            name_from_argv(&["crosvm", "run", "--name", &long]).map(|n| n.len()),
            Some(MAX_NAME_BYTES)
        );
    }

    /// This test process is no VMM: its name is its `comm`.
    #[test]
    fn a_process_that_is_no_vmm_is_named_by_its_comm() {
        let me = std::process::id();
        assert_eq!(vm_name(me), procfs::comm(me));
        assert_eq!(vm_name(u32::MAX), None);
    }
}
