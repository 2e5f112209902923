//! Just enough of the kernel's BTF (`/sys/kernel/btf/*`) for the raw
//! attach mode: structure member offsets (`struct kvm_vcpu.vcpu_id`,
//! `struct vcpu_svm.vmcb`, ...) and the argument lists of raw tracepoints
//! (`btf_trace_<event>`), from `vmlinux` and the split BTF of modules
//! (`kvm`, `kvm_amd`, `kvm_intel`), which continue vmlinux's type ids and
//! string offsets.
use std::{fs, path::Path};

const MAGIC: u16 = 0xeb9f;

pub(crate) const KIND_INT: u32 = 1;
pub(crate) const KIND_PTR: u32 = 2;
pub(crate) const KIND_ARRAY: u32 = 3;
pub(crate) const KIND_STRUCT: u32 = 4;
pub(crate) const KIND_UNION: u32 = 5;
pub(crate) const KIND_ENUM: u32 = 6;
pub(crate) const KIND_TYPEDEF: u32 = 8;
pub(crate) const KIND_VOLATILE: u32 = 9;
pub(crate) const KIND_CONST: u32 = 10;
pub(crate) const KIND_RESTRICT: u32 = 11;
pub(crate) const KIND_FUNC_PROTO: u32 = 13;
pub(crate) const KIND_VAR: u32 = 14;
pub(crate) const KIND_DATASEC: u32 = 15;
pub(crate) const KIND_DECL_TAG: u32 = 17;
pub(crate) const KIND_TYPE_TAG: u32 = 18;
pub(crate) const KIND_ENUM64: u32 = 19;

/// Errors reading BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not BTF, or truncated.
    #[error("{0}: not valid BTF")]
    Invalid(String),
}

/// One type: its kind, name, size-or-type, and where its trailing records
/// start in `data`.
#[derive(Clone, Copy, Debug)]
#[expect(
    clippy::struct_field_names,
    reason = "`kind_flag` is the BTF specification's name"
)]
struct Type {
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    name_off: u32,
    size_or_type: u32,
    extra: usize,
}

/// One BTF blob (vmlinux, or a module's split BTF on top of it).
#[derive(Debug)]
struct Blob {
    /// Type id of `types[0]`.
    first_id: u32,
    /// String offset of `strings[0]`.
    first_str: u32,
    types: Vec<Type>,
    data: Vec<u8>,
    strings: std::ops::Range<usize>,
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

impl Blob {
    fn parse(data: Vec<u8>, first_id: u32, first_str: u32, name: &str) -> Result<Self, BtfError> {
        let bad = || BtfError::Invalid(name.to_owned());
        if data.get(..2) != Some(&MAGIC.to_le_bytes()[..]) {
            return Err(bad());
        }
        let field = |i: usize| u32_at(&data, 4 + 4 * i).ok_or_else(bad);
        let hdr_len = field(0)? as usize;
        let (type_off, type_len) = (field(1)? as usize, field(2)? as usize);
        let (str_off, str_len) = (field(3)? as usize, field(4)? as usize);
        let types_at = hdr_len + type_off;
        let strings = hdr_len + str_off..hdr_len + str_off + str_len;
        if data.len() < strings.end || data.len() < types_at + type_len {
            return Err(bad());
        }
        let mut types = Vec::new();
        let mut at = types_at;
        while at < types_at + type_len {
            let name_off = u32_at(&data, at).ok_or_else(bad)?;
            let info = u32_at(&data, at + 4).ok_or_else(bad)?;
            let size_or_type = u32_at(&data, at + 8).ok_or_else(bad)?;
            let (kind, vlen) = ((info >> 24) & 0x1f, info & 0xffff);
            let extra = at + 12;
            let trailing = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen as usize,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen as usize,
                _ => 0,
            };
            types.push(Type {
                kind,
                vlen,
                kind_flag: info >> 31 != 0,
                name_off,
                size_or_type,
                extra,
            });
            at = extra + trailing;
        }
        Ok(Self {
            first_id,
            first_str,
            types,
            data,
            strings,
        })
    }

    fn next_id(&self) -> u32 {
        self.first_id + u32::try_from(self.types.len()).unwrap_or(u32::MAX)
    }

    fn next_str(&self) -> u32 {
        self.first_str + u32::try_from(self.strings.len()).unwrap_or(u32::MAX)
    }
}

/// vmlinux's BTF, parsed once and shared by every module's view.
pub struct Vmlinux(Blob);

/// vmlinux's BTF and one module's (or none), searched together.
pub struct Btf<'a> {
    base: &'a Blob,
    module: Option<Blob>,
}

/// An argument type of a function prototype, as much as the raw programs
/// care about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arg {
    /// An integer (or enum, or bool) of this many bytes.
    Int(u32),
    /// A pointer to the struct of this name.
    StructPtr(String),
    /// Any other pointer.
    Ptr,
    /// Anything else.
    Other,
}

fn read(path: &Path) -> Result<Vec<u8>, BtfError> {
    fs::read(path).map_err(|source| BtfError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl Vmlinux {
    /// vmlinux's BTF from `dir` (`/sys/kernel/btf`).
    ///
    /// # Errors
    /// When the file is missing or not BTF.
    pub fn load(dir: &Path) -> Result<Self, BtfError> {
        Self::from_bytes(read(&dir.join("vmlinux"))?)
    }

    /// vmlinux's BTF from its bytes.
    ///
    /// # Errors
    /// When they are not BTF.
    pub fn from_bytes(data: Vec<u8>) -> Result<Self, BtfError> {
        Ok(Self(Blob::parse(data, 1, 0, "vmlinux")?))
    }

    /// vmlinux with `module`'s split BTF from `dir` on top, when given.
    ///
    /// # Errors
    /// When the module's file is missing or not BTF.
    pub fn with_module(&self, dir: &Path, module: Option<&str>) -> Result<Btf<'_>, BtfError> {
        match module {
            Some(name) => self.with_module_bytes(read(&dir.join(name))?, name),
            None => Ok(Btf {
                base: &self.0,
                module: None,
            }),
        }
    }

    /// vmlinux with the split BTF `data` of module `name` on top.
    ///
    /// # Errors
    /// When `data` is not BTF.
    pub fn with_module_bytes(&self, data: Vec<u8>, name: &str) -> Result<Btf<'_>, BtfError> {
        let base = &self.0;
        let module = Blob::parse(data, base.next_id(), base.next_str(), name)?;
        Ok(Btf {
            base,
            module: Some(module),
        })
    }
}

impl Btf<'_> {
    fn blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(self.base).chain(self.module.as_ref())
    }

    fn get(&self, id: u32) -> Option<(&Blob, &Type)> {
        self.blobs().find_map(|b| {
            let i = id.checked_sub(b.first_id)? as usize;
            b.types.get(i).map(|t| (b, t))
        })
    }

    fn name(&self, off: u32) -> &str {
        for b in self.blobs() {
            if let Some(rel) = off.checked_sub(b.first_str)
                && (rel as usize) < b.strings.len()
            {
                let bytes = &b.data[b.strings.start + rel as usize..b.strings.end];
                let end = bytes.iter().position(|&c| c == 0).unwrap_or(bytes.len());
                return std::str::from_utf8(&bytes[..end]).unwrap_or("");
            }
        }
        ""
    }

    /// Ids of types of `kind` named `name`, module types first.
    fn find(&self, kind: u32, name: &str) -> Vec<u32> {
        let mut blobs: Vec<&Blob> = self.blobs().collect();
        blobs.reverse();
        blobs
            .into_iter()
            .flat_map(|b| {
                b.types
                    .iter()
                    .enumerate()
                    .filter(move |(_, t)| t.kind == kind)
                    .map(move |(i, t)| (b.first_id + u32::try_from(i).unwrap_or(u32::MAX), t))
            })
            .filter(|(_, t)| self.name(t.name_off) == name)
            .map(|(id, _)| id)
            .collect()
    }

    /// Skips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<(&Blob, &Type)> {
        for _ in 0..32 {
            let (b, t) = self.get(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Some((b, t)),
            }
        }
        None
    }

    /// Byte offset and byte size of member `name` of struct `ty` (looking
    /// into anonymous struct/union members).
    fn member_in(&self, ty: u32, name: &str, depth: u32) -> Option<(u32, u32)> {
        let (b, t) = self.resolve(ty)?;
        if !matches!(t.kind, KIND_STRUCT | KIND_UNION) || depth > 8 {
            return None;
        }
        for i in 0..t.vlen as usize {
            let at = t.extra + 12 * i;
            let (m_name, m_type, m_off) = (
                u32_at(&b.data, at)?,
                u32_at(&b.data, at + 4)?,
                u32_at(&b.data, at + 8)?,
            );
            let bits = if t.kind_flag {
                m_off & 0x00ff_ffff
            } else {
                m_off
            };
            let m_name = self.name(m_name);
            if m_name == name {
                return Some((bits / 8, self.size_of(m_type)?));
            }
            if m_name.is_empty()
                && let Some((off, size)) = self.member_in(m_type, name, depth + 1)
            {
                return Some((bits / 8 + off, size));
            }
        }
        None
    }

    fn size_of(&self, id: u32) -> Option<u32> {
        let (_, t) = self.resolve(id)?;
        match t.kind {
            KIND_PTR => Some(8),
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 => Some(t.size_or_type),
            _ => None,
        }
    }

    /// Byte offset and size of `path` (e.g. `["control", "exit_code"]`)
    /// inside struct `name`: each step but the last must be an embedded
    /// struct.
    #[must_use]
    pub fn offset(&self, name: &str, path: &[&str]) -> Option<(u32, u32)> {
        let candidates = self.find(KIND_STRUCT, name);
        candidates.into_iter().find_map(|mut ty| {
            let mut total = 0;
            let mut size = 0;
            for (i, step) in path.iter().enumerate() {
                let (off, sz) = self.member_in(ty, step, 0)?;
                total += off;
                size = sz;
                if i + 1 < path.len() {
                    ty = self.member_type(ty, step)?;
                }
            }
            Some((total, size))
        })
    }

    fn member_type(&self, ty: u32, name: &str) -> Option<u32> {
        let (b, t) = self.resolve(ty)?;
        (0..t.vlen as usize).find_map(|i| {
            let at = t.extra + 12 * i;
            (self.name(u32_at(&b.data, at)?) == name).then(|| u32_at(&b.data, at + 4))?
        })
    }

    /// The arguments of raw tracepoint `event` (its `TP_PROTO`), from the
    /// `btf_trace_<event>` typedef; `None` when there is none.
    #[must_use]
    pub fn tracepoint_args(&self, event: &str) -> Option<Vec<Arg>> {
        let id = *self
            .find(KIND_TYPEDEF, &format!("btf_trace_{event}"))
            .first()?;
        let (_, ptr) = self.resolve(self.get(id)?.1.size_or_type)?;
        if ptr.kind != KIND_PTR {
            return None;
        }
        let (b, proto) = self.resolve(ptr.size_or_type)?;
        if proto.kind != KIND_FUNC_PROTO {
            return None;
        }
        // The first parameter is the `void *` context of the probe.
        (1..proto.vlen as usize)
            .map(|i| {
                let ty = u32_at(&b.data, proto.extra + 8 * i + 4)?;
                Some(self.arg(ty))
            })
            .collect()
    }

    fn arg(&self, ty: u32) -> Arg {
        let Some((_, t)) = self.resolve(ty) else {
            return Arg::Other;
        };
        match t.kind {
            KIND_INT | KIND_ENUM | KIND_ENUM64 => Arg::Int(t.size_or_type),
            KIND_PTR => match self.resolve(t.size_or_type) {
                Some((_, to)) if to.kind == KIND_STRUCT => {
                    Arg::StructPtr(self.name(to.name_off).to_owned())
                }
                _ => Arg::Ptr,
            },
            _ => Arg::Other,
        }
    }
}

/// Synthetic BTF for tests (here and in the attach plan's).
#[cfg(test)]
pub(crate) mod testing {
    use super::MAGIC;
    pub(crate) use super::{KIND_FUNC_PROTO, KIND_INT, KIND_PTR, KIND_STRUCT, KIND_TYPEDEF};

    /// Builds a BTF blob type by type; a split blob continues a base's
    /// string offsets (`first_str`).
    pub(crate) struct Builder {
        pub(crate) types: Vec<u8>,
        pub(crate) strings: Vec<u8>,
        first_str: u32,
        count: u32,
    }

    impl Builder {
        /// A base blob (vmlinux): type ids from 1.
        pub(crate) fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
                first_str: 0,
                count: 0,
            }
        }

        /// A split blob on top of `base`.
        pub(crate) fn split(base: &Self) -> Self {
            Self {
                types: Vec::new(),
                strings: Vec::new(),
                first_str: u32::try_from(base.strings.len()).unwrap(),
                count: 0,
            }
        }

        /// The string offset of `name` (0 for none).
        pub(crate) fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.first_str + u32::try_from(self.strings.len()).unwrap();
            self.strings.extend(name.as_bytes());
            self.strings.push(0);
            off
        }

        /// Adds a type; returns its index in this blob (0-based).
        pub(crate) fn ty(
            &mut self,
            kind: u32,
            name: &str,
            vlen: u32,
            size_or_type: u32,
            extra: &[u32],
        ) -> u32 {
            let n = self.s(name);
            for v in [n, kind << 24 | vlen, size_or_type].iter().chain(extra) {
                self.types.extend(v.to_le_bytes());
            }
            self.count += 1;
            self.count - 1
        }

        /// Types so far.
        pub(crate) fn len(&self) -> u32 {
            self.count
        }

        pub(crate) fn bytes(&self) -> Vec<u8> {
            let mut b = Vec::new();
            b.extend(MAGIC.to_le_bytes());
            b.extend([1, 0]);
            let (types, strings) = (
                u32::try_from(self.types.len()).unwrap(),
                u32::try_from(self.strings.len()).unwrap(),
            );
            for v in [24u32, 0, types, types, strings] {
                b.extend(v.to_le_bytes());
            }
            b.extend(&self.types);
            b.extend(&self.strings);
            b
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testing::Builder;

    /// 1 int, 2 struct `kvm_vcpu` {int pad; int `vcpu_id`}, 3 ptr->2,
    /// 4 proto(void*, `kvm_vcpu`*, u32), 5 ptr->4, 6 typedef `btf_trace_kvm_exit`,
    /// 7 u32 typedef -> 1, 8 void ptr
    fn sample() -> Vec<u8> {
        sample_builder().bytes()
    }

    fn sample_builder() -> Builder {
        let mut b = Builder::new();
        b.ty(KIND_INT, "int", 0, 4, &[32]);
        let pad = b.s("pad");
        let id = b.s("vcpu_id");
        b.ty(KIND_STRUCT, "kvm_vcpu", 2, 8, &[pad, 1, 0, id, 1, 32]);
        b.ty(KIND_PTR, "", 0, 2, &[]);
        b.ty(KIND_FUNC_PROTO, "", 3, 0, &[0, 8, 0, 3, 0, 7]);
        b.ty(KIND_PTR, "", 0, 4, &[]);
        b.ty(KIND_TYPEDEF, "btf_trace_kvm_exit", 0, 5, &[]);
        b.ty(KIND_TYPEDEF, "u32", 0, 1, &[]);
        b.ty(KIND_PTR, "", 0, 0, &[]);
        b
    }

    #[test]
    fn member_offsets_and_tracepoint_args() {
        let base = Blob::parse(sample(), 1, 0, "test").unwrap();
        let btf = Btf {
            base: &base,
            module: None,
        };
        assert_eq!(btf.offset("kvm_vcpu", &["vcpu_id"]), Some((4, 4)));
        assert_eq!(btf.offset("kvm_vcpu", &["nope"]), None);
        assert_eq!(
            btf.tracepoint_args("kvm_exit"),
            Some(vec![Arg::StructPtr("kvm_vcpu".into()), Arg::Int(4)])
        );
        assert_eq!(btf.tracepoint_args("kvm_entry"), None);
    }

    #[test]
    fn anonymous_members_and_split_ids() {
        // Module: 9 union {int exit_code}, 10 struct vmcb_control_area
        // {int x; union {...}} — ids and strings continue the base.
        let base = Blob::parse(sample(), 1, 0, "base").unwrap();
        let mut m = Builder::split(&sample_builder());
        let first_str = base.next_str();
        let exit_code = m.s("exit_code");
        let x = m.s("x");
        m.ty(KIND_UNION, "u", 1, 4, &[exit_code, 1, 0]);
        m.ty(KIND_STRUCT, "vmcb_control_area", 2, 8, &[x, 1, 0, 0, 9, 32]);
        let module = Blob::parse(m.bytes(), base.next_id(), first_str, "kvm_amd").unwrap();
        assert_eq!(module.first_id, 9);
        let btf = Btf {
            base: &base,
            module: Some(module),
        };
        assert_eq!(
            btf.offset("vmcb_control_area", &["exit_code"]),
            Some((4, 4))
        );
    }

    #[test]
    fn garbage_is_invalid() {
        assert!(matches!(
            Blob::parse(vec![1, 2, 3], 1, 0, "x"),
            Err(BtfError::Invalid(_))
        ));
    }

    /// The running kernel's own BTF, when it has one (every CI machine
    /// does: the eBPF loader needs it too).
    #[test]
    fn this_kernel_names_kvm_vcpu_and_kvm_exit() {
        let dir = Path::new("/sys/kernel/btf");
        let module = dir.join("kvm").exists().then_some("kvm");
        let vmlinux = Vmlinux::load(dir).unwrap();
        let btf = vmlinux.with_module(dir, module).unwrap();
        let (off, size) = btf.offset("kvm_vcpu", &["vcpu_id"]).unwrap();
        assert!(off > 0 && size == 4, "vcpu_id at {off}, {size} bytes");
        assert_eq!(
            btf.tracepoint_args("kvm_exit").unwrap()[..2],
            [Arg::StructPtr("kvm_vcpu".into()), Arg::Int(4)]
        );
    }
}
