//! What a snapshot says about the host and about exitprof itself: the
//! KVM backend, how the programs are attached, the guest mirror's state;
//! and how an isa reads in JSON.
use serde::{Deserialize, Serialize};

/// The KVM backend of a host: it decides whether `kvm_exit` fires.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Intel VMX (`kvm_intel`).
    Vmx,
    /// AMD SVM (`kvm_amd`).
    Svm,
    /// PVM (`kvm_pvm`): `kvm_exit`/`kvm_entry` exist but never fire.
    Pvm,
    /// No known vendor module is loaded.
    #[default]
    Unknown,
}

impl Backend {
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

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How the KVM programs are attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attached {
    /// Raw tracepoints (offsets from BTF).
    Raw,
    /// Classic tracepoints (offsets from tracefs).
    #[default]
    Classic,
    /// Some groups raw, some classic (see the note).
    Mixed,
}

impl Attached {
    /// "raw", "classic" or "mixed".
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Classic => "classic",
            Self::Mixed => "mixed",
        }
    }
}

impl std::fmt::Display for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The registration with a patched KVM's guest CPUID mirror.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MirrorState {
    /// Registered: guests read these counts.
    Registered,
    /// This KVM has no exitprof patch.
    Unpatched,
    /// Another exitprof holds the registration.
    Busy,
    /// Registration failed for another reason (said when it happened).
    Failed,
    /// Not asked for (`--guest-mirror off`).
    Off,
}

/// Whose exits the guests of a patched KVM read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MirrorScope {
    /// Each guest its own VM's exits.
    Vm,
    /// Every guest the whole host's exits.
    Host,
}

impl MirrorState {
    /// One line for people about this state (and the scope, when
    /// registered).
    #[must_use]
    pub fn describe(self, scope: Option<MirrorScope>) -> String {
        let file = format!(
            "/sys/kernel/debug/kvm/{}",
            exitprof_common::guest_abi::DEBUGFS_FILE
        );
        match self {
            Self::Registered => format!(
                "registered with KVM ({file}): {} with CPUID 0x4FFFFFFB..0x4FFFFFFF",
                match scope {
                    Some(MirrorScope::Host) => {
                        "every guest reads the whole host's counts (host-wide scope)"
                    }
                    _ => "each guest reads its own VM's counts",
                }
            ),
            Self::Unpatched => {
                format!("off: this KVM has no exitprof patch (no {file}; see kernel-patch/)")
            }
            Self::Busy => {
                "off: another exitprof holds KVM's CPUID mirror; stop it to mirror this one"
                    .to_owned()
            }
            Self::Failed => "off: registering with KVM failed (see the note above)".to_owned(),
            Self::Off => "off (--guest-mirror off)".to_owned(),
        }
    }
}

/// Serde for [`exitprof_common::Isa`] as its JSON name ("vmx", "svm").
pub(crate) mod isa_name {
    use exitprof_common::Isa;
    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    #[expect(
        clippy::trivially_copy_pass_by_ref,
        reason = "the signature serde's `with` calls"
    )]
    pub fn serialize<S: Serializer>(isa: &Isa, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(isa.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Isa, D::Error> {
        let name = String::deserialize(d)?;
        match name.as_str() {
            "vmx" => Ok(Isa::Vmx),
            "svm" => Ok(Isa::Svm),
            other => Err(D::Error::custom(format!(
                "unknown isa {other:?} (expected \"vmx\" or \"svm\")"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_keep_their_json_names() {
        for (b, name) in [
            (Backend::Vmx, "vmx"),
            (Backend::Svm, "svm"),
            (Backend::Pvm, "pvm"),
            (Backend::Unknown, "unknown"),
        ] {
            assert_eq!(serde_json::to_string(&b).unwrap(), format!("\"{name}\""));
            assert_eq!(b.name(), name);
        }
        for (a, name) in [
            (Attached::Raw, "raw"),
            (Attached::Classic, "classic"),
            (Attached::Mixed, "mixed"),
        ] {
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{name}\""));
            assert_eq!(a.name(), name);
        }
        assert_eq!(
            serde_json::to_string(&MirrorState::Unpatched).unwrap(),
            "\"unpatched\""
        );
        assert!(!Backend::Pvm.emits_vmexit());
        assert!(Backend::Svm.emits_vmexit());
    }

    #[test]
    fn mirror_states_read_as_one_line_each() {
        assert_eq!(
            MirrorState::Unpatched.describe(None),
            "off: this KVM has no exitprof patch (no /sys/kernel/debug/kvm/exitprof; see kernel-patch/)"
        );
        assert_eq!(
            MirrorState::Registered.describe(Some(MirrorScope::Vm)),
            "registered with KVM (/sys/kernel/debug/kvm/exitprof): each guest reads its own VM's counts with CPUID 0x4FFFFFFB..0x4FFFFFFF"
        );
        assert_eq!(
            MirrorState::Busy.describe(None),
            "off: another exitprof holds KVM's CPUID mirror; stop it to mirror this one"
        );
    }
}
