//! tracefs (and debugfs): mounting them when missing, and parsing
//! tracepoint `format` files.
//! Field offsets differ between kernels (see `fixtures/tracefs` at the repository root), so
//! they are read at load time, never assumed.
use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

/// Where tracefs lives on every kernel exitprof supports.
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    /// tracefs is not mounted and mounting it failed.
    #[error(
        "tracefs is not mounted at {TRACEFS} and mounting it failed: {0} (mount it with `mount -t tracefs nodev {TRACEFS}`)"
    )]
    Mount(std::io::Error),
    /// The kernel has no such tracepoint.
    #[error(
        "tracepoint {category}:{event} does not exist in this kernel ({path} is missing){hint}"
    )]
    MissingEvent {
        /// Event category (`kvm`).
        category: String,
        /// Event name (`kvm_cpuid`).
        event: String,
        /// The format file looked for.
        path: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// A format file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// A format file does not look like one.
    #[error("{event}: malformed format file: {why}")]
    Malformed {
        /// Event name.
        event: String,
        /// What is wrong.
        why: String,
    },
    /// A field the programs need is not in the record.
    #[error("{event}: the record has no field `{field}` (kernel too old or too new?)")]
    MissingField {
        /// Event name.
        event: String,
        /// Field name.
        field: String,
    },
}

/// One field of a tracepoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// Field name (`function`, `exit_reason`).
    pub name: String,
    /// C type as printed (`unsigned int`, `u64`).
    pub ty: String,
    /// Offset from the start of the record.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
    /// Whether the type is signed.
    pub signed: bool,
}

/// A parsed `format` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Format {
    /// Event name.
    pub name: String,
    /// Event id.
    pub id: u32,
    /// Fields, common ones included.
    pub fields: Vec<Field>,
    /// The `print fmt:` line without its prefix.
    pub print_fmt: String,
}

impl Format {
    /// Parses the text of a `format` file.
    ///
    /// # Errors
    /// When the name, the id or a field line is malformed.
    pub fn parse(text: &str) -> Result<Self, TracefsError> {
        let malformed = |event: &str, why: String| TracefsError::Malformed {
            event: event.to_owned(),
            why,
        };
        let mut name = None;
        let mut id = None;
        let mut fields = Vec::new();
        let mut print_fmt = String::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("name:") {
                name = Some(rest.trim().to_owned());
            } else if let Some(rest) = line.strip_prefix("ID:") {
                let event = name.as_deref().unwrap_or("?");
                id = Some(
                    rest.trim()
                        .parse()
                        .map_err(|e| malformed(event, format!("bad ID {rest:?}: {e}")))?,
                );
            } else if line.starts_with("field:") {
                let event = name.as_deref().unwrap_or("?");
                fields.push(parse_field(line).map_err(|why| malformed(event, why))?);
            } else if let Some(rest) = line.strip_prefix("print fmt:") {
                rest.trim().clone_into(&mut print_fmt);
            }
        }
        let name = name.ok_or_else(|| malformed("?", "no `name:` line".into()))?;
        let id = id.ok_or_else(|| malformed(&name, "no `ID:` line".into()))?;
        if fields.is_empty() {
            return Err(malformed(&name, "no fields".into()));
        }
        Ok(Self {
            name,
            id,
            fields,
            print_fmt,
        })
    }

    /// The field called `name`.
    ///
    /// # Errors
    /// [`TracefsError::MissingField`] when there is none.
    pub fn field(&self, name: &str) -> Result<&Field, TracefsError> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| TracefsError::MissingField {
                event: self.name.clone(),
                field: name.to_owned(),
            })
    }

    /// Offset of the field called `name`.
    ///
    /// # Errors
    /// [`TracefsError::MissingField`] when there is none.
    pub fn offset(&self, name: &str) -> Result<u32, TracefsError> {
        self.field(name).map(|f| f.offset)
    }
}

/// `field:unsigned int function;\toffset:8;\tsize:4;\tsigned:0;`
fn parse_field(line: &str) -> Result<Field, String> {
    let mut decl = None;
    let mut offset = None;
    let mut size = None;
    let mut signed = None;
    for part in line.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once(':')
            .ok_or_else(|| format!("bad field part {part:?}"))?;
        let number = || {
            value
                .trim()
                .parse::<u32>()
                .map_err(|e| format!("bad {key} {value:?}: {e}"))
        };
        match key.trim() {
            "field" => decl = Some(value.trim()),
            "offset" => offset = Some(number()?),
            "size" => size = Some(number()?),
            "signed" => signed = Some(number()? != 0),
            _ => {}
        }
    }
    let decl = decl.ok_or("no field declaration")?;
    // The name is the last identifier, before any array suffix:
    // `__data_loc char[] parent_comm`, `char comm[16]`.
    let without_array = decl.split('[').next().unwrap_or(decl).trim_end();
    let (ty, name) = match decl.rsplit_once(' ') {
        Some((ty, name)) if !name.starts_with('[') && !name.contains('[') => (ty, name),
        _ => without_array
            .rsplit_once(' ')
            .ok_or_else(|| format!("bad declaration {decl:?}"))?,
    };
    Ok(Field {
        name: name.to_owned(),
        ty: ty.trim().to_owned(),
        offset: offset.ok_or("no offset")?,
        size: size.ok_or("no size")?,
        signed: signed.unwrap_or(false),
    })
}

/// The tracefs root, mounted if it was not.
///
/// # Errors
/// [`TracefsError::Mount`] when it is missing and cannot be mounted.
pub fn ensure_mounted() -> Result<PathBuf, TracefsError> {
    let root = PathBuf::from(TRACEFS);
    if root.join("events").is_dir() {
        return Ok(root);
    }
    mount_pseudo("tracefs", TRACEFS).map_err(TracefsError::Mount)?;
    Ok(root)
}

/// Mounts the pseudo file system `fstype` (tracefs, debugfs) at `target`.
///
/// # Errors
/// The failed `mount(2)`.
pub fn mount_pseudo(fstype: &str, target: &str) -> std::io::Result<()> {
    let invalid = |_| std::io::Error::from(std::io::ErrorKind::InvalidInput);
    let source = CString::new("nodev").map_err(invalid)?;
    let target = CString::new(target).map_err(invalid)?;
    let fstype = CString::new(fstype).map_err(invalid)?;
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Mounts debugfs at `dir` when nothing is mounted there (a fresh machine
/// may not have it); a failure surfaces later, when a file is missing.
pub fn ensure_debugfs(dir: &str) {
    let path = Path::new(dir);
    if path.join("kvm").exists() || path.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        return;
    }
    let _ = mount_pseudo("debugfs", dir);
}

/// Reads and parses `events/<category>/<event>/format` under `root`.
///
/// # Errors
/// [`TracefsError::MissingEvent`] when the kernel has no such event.
pub fn read_format(root: &Path, category: &str, event: &str) -> Result<Format, TracefsError> {
    let path = root
        .join("events")
        .join(category)
        .join(event)
        .join("format");
    let text = fs::read_to_string(&path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            TracefsError::MissingEvent {
                category: category.to_owned(),
                event: event.to_owned(),
                path: path.display().to_string(),
                hint: if category == "kvm" {
                    ": is the kvm module loaded? (`modprobe kvm`)"
                } else {
                    ""
                },
            }
        } else {
            TracefsError::Read {
                path: path.display().to_string(),
                error: source,
            }
        }
    })?;
    Format::parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(kernel: &str, event: &str) -> Format {
        let path = format!(
            "{}/../fixtures/tracefs/{kernel}.{event}.format",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        Format::parse(&text).unwrap()
    }

    const PVM: &str = "linux-6.18-pvm";
    const SVM: &str = "linux-6.1-debian-svm";

    #[test]
    fn kvm_exit_offsets_of_both_kernels() {
        let new = fixture(PVM, "kvm_exit");
        assert_eq!(new.name, "kvm_exit");
        assert_eq!(new.id, 103);
        assert_eq!(new.offset("exit_reason").unwrap(), 8);
        assert_eq!(new.offset("isa").unwrap(), 24);
        assert_eq!(new.offset("vcpu_id").unwrap(), 56);
        assert_eq!(new.offset("requests").unwrap(), 64);
        let old = fixture(SVM, "kvm_exit");
        assert_eq!(old.offset("exit_reason").unwrap(), 8);
        assert_eq!(old.offset("isa").unwrap(), 24);
        assert_eq!(old.offset("vcpu_id").unwrap(), 56);
        assert!(matches!(
            old.offset("requests"),
            Err(TracefsError::MissingField { .. })
        ));
    }

    #[test]
    fn kvm_entry_grew_fields_in_6_18() {
        let new = fixture(PVM, "kvm_entry");
        assert_eq!(new.offset("vcpu_id").unwrap(), 8);
        assert_eq!(new.offset("intr_info").unwrap(), 28);
        let old = fixture(SVM, "kvm_entry");
        assert_eq!(old.offset("vcpu_id").unwrap(), 8);
        assert!(old.offset("intr_info").is_err());
    }

    #[test]
    fn handler_event_fields() {
        for kernel in [PVM, SVM] {
            let cpuid = fixture(kernel, "kvm_cpuid");
            assert_eq!(cpuid.offset("function").unwrap(), 8, "{kernel}");
            assert_eq!(cpuid.offset("index").unwrap(), 12, "{kernel}");
            let pio = fixture(kernel, "kvm_pio");
            assert_eq!(
                (
                    pio.offset("rw").unwrap(),
                    pio.offset("port").unwrap(),
                    pio.offset("size").unwrap()
                ),
                (8, 12, 16),
                "{kernel}"
            );
            let mmio = fixture(kernel, "kvm_mmio");
            assert_eq!(mmio.offset("type").unwrap(), 8, "{kernel}");
            assert_eq!(mmio.offset("gpa").unwrap(), 16, "{kernel}");
            let msr = fixture(kernel, "kvm_msr");
            assert_eq!(msr.offset("write").unwrap(), 8, "{kernel}");
            assert_eq!(msr.offset("ecx").unwrap(), 12, "{kernel}");
            let hc = fixture(kernel, "kvm_hypercall");
            assert_eq!(hc.offset("nr").unwrap(), 8, "{kernel}");
            let us = fixture(kernel, "kvm_userspace_exit");
            let errno = us.field("errno").unwrap();
            assert_eq!((errno.offset, errno.size, errno.signed), (12, 4, true));
        }
    }

    #[test]
    fn field_declarations_with_arrays_and_data_loc() {
        let f = parse_field("field:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;")
            .unwrap();
        assert_eq!((f.name.as_str(), f.offset, f.size), ("parent_comm", 8, 4));
        let f = parse_field("field:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;").unwrap();
        assert_eq!((f.name.as_str(), f.ty.as_str()), ("parent_comm", "char"));
        let f = parse_field("field:unsigned write;\toffset:8;\tsize:4;\tsigned:0;").unwrap();
        assert_eq!((f.name.as_str(), f.ty.as_str()), ("write", "unsigned"));
    }

    #[test]
    fn malformed_files_are_errors_not_panics() {
        assert!(matches!(
            Format::parse(""),
            Err(TracefsError::Malformed { .. })
        ));
        assert!(matches!(
            Format::parse("name: x\nID: y\n"),
            Err(TracefsError::Malformed { .. })
        ));
        assert!(matches!(
            Format::parse("name: x\nID: 1\nformat:\n\tfield:int a;\toffset:zz;\tsize:4;\n"),
            Err(TracefsError::Malformed { .. })
        ));
    }
}
