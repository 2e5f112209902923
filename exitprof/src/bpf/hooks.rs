//! Every program and the tracepoint it belongs on: the handler events of
//! the event-kind table (`model::events`), plus the VM-exit, userspace
//! round-trip and process programs; and the record offsets their classic
//! programs read.
use exitprof_common::config::{NO_FIELD, Offsets};

use crate::{
    host::tracefs::{Format, TracefsError},
    model::{
        Backend, Events,
        events::{EventSource, RawArg},
    },
};

/// The two groups of KVM programs that attach raw or classic together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// `kvm_exit` and `kvm_entry`: raw needs vendor structure offsets.
    Vmexit,
    /// The exit-handler events and userspace exits: raw needs only their
    /// prototypes.
    Handlers,
}

/// The raw program of a hook.
#[derive(Clone, Copy, Debug)]
pub struct RawHook {
    /// Program name.
    pub program: &'static str,
    /// Which group it attaches with.
    pub group: Group,
    /// The leading arguments it reads, checked against BTF.
    pub args: &'static [RawArg],
}

/// One program and the tracepoint it belongs on.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    /// The classic program.
    pub program: &'static str,
    /// Tracepoint category.
    pub category: &'static str,
    /// Tracepoint name.
    pub event: &'static str,
    /// Absent from the kernel: an error (true) or a feature left out.
    pub required: bool,
    /// Its raw tracepoint program, if it has one.
    pub raw: Option<RawHook>,
    /// Attached only on backends where `kvm_entry` never fires (PVM): the
    /// end of a userspace round trip, which `kvm_entry` marks elsewhere.
    pub only_without_vmexit: bool,
}

impl Hook {
    /// The hook of a handler-event kind.
    const fn of(source: &EventSource) -> Self {
        Self {
            program: source.program,
            category: "kvm",
            event: source.tracepoint,
            required: true,
            raw: Some(RawHook {
                program: source.raw_program,
                group: Group::Handlers,
                args: source.raw_args,
            }),
            only_without_vmexit: false,
        }
    }
}

/// The hooks that are not handler events.
const OTHER_HOOKS: &[Hook] = &[
    Hook {
        program: "kvm_userspace_exit",
        category: "kvm",
        event: "kvm_userspace_exit",
        required: true,
        raw: Some(RawHook {
            program: "kvm_userspace_exit_raw",
            group: Group::Handlers,
            args: &[RawArg::Int(4), RawArg::Int(4)],
        }),
        only_without_vmexit: false,
    },
    Hook {
        program: "kvm_exit",
        category: "kvm",
        event: "kvm_exit",
        required: true,
        raw: Some(RawHook {
            program: "kvm_exit_raw",
            group: Group::Vmexit,
            args: &[RawArg::Vcpu, RawArg::Int(4)],
        }),
        only_without_vmexit: false,
    },
    Hook {
        program: "kvm_entry",
        category: "kvm",
        event: "kvm_entry",
        required: true,
        raw: Some(RawHook {
            program: "kvm_entry_raw",
            group: Group::Vmexit,
            args: &[RawArg::Vcpu],
        }),
        only_without_vmexit: false,
    },
    Hook {
        program: "sys_enter_ioctl",
        category: "syscalls",
        event: "sys_enter_ioctl",
        required: false,
        raw: None,
        only_without_vmexit: true,
    },
    Hook {
        program: "sched_process_fork",
        category: "sched",
        event: "sched_process_fork",
        required: true,
        raw: None,
        only_without_vmexit: false,
    },
    Hook {
        program: "sched_process_exit",
        category: "sched",
        event: "sched_process_exit",
        required: true,
        raw: None,
        only_without_vmexit: false,
    },
];

/// Every hook: the handler events first, in table order.
#[must_use]
pub fn all() -> Vec<Hook> {
    Events::SOURCES
        .iter()
        .map(Hook::of)
        .chain(OTHER_HOOKS.iter().copied())
        .collect()
}

/// The hooks to attach on `backend`.
#[must_use]
pub fn for_backend(backend: Backend) -> Vec<Hook> {
    all()
        .into_iter()
        .filter(|h| !(h.only_without_vmexit && backend.emits_vmexit()))
        .collect()
}

/// The hash maps whose capacity `Options::map_entries` sets: every
/// handler event's, and the per-vCPU breakdown.
pub fn sized_maps() -> impl Iterator<Item = &'static str> {
    Events::SOURCES
        .iter()
        .map(|s| s.map)
        .chain(["EXIT_BREAKDOWN"])
}

/// The record offsets every classic program needs, from the formats found
/// (`find` gives the format of a tracepoint, `None` for an optional one
/// that is missing, whose program is not attached).
///
/// # Errors
/// A record lacks a field a program reads.
pub fn offsets<'a>(find: &impl Fn(&str) -> Option<&'a Format>) -> Result<Offsets, TracefsError> {
    let get = |event: &str, field: &str| match find(event) {
        Some(format) => format.offset(field),
        None => Ok(0),
    };
    let mut offsets = Offsets {
        userspace_exit_reason: get("kvm_userspace_exit", "reason")?,
        userspace_exit_errno: get("kvm_userspace_exit", "errno")?,
        exit_reason: get("kvm_exit", "exit_reason")?,
        exit_isa: get("kvm_exit", "isa")?,
        exit_vcpu_id: get("kvm_exit", "vcpu_id")?,
        exit_guest_rip: get("kvm_exit", "guest_rip")?,
        ioctl_cmd: get("sys_enter_ioctl", "cmd")?,
        fork_parent_pid: get("sched_process_fork", "parent_pid")?,
        fork_child_pid: get("sched_process_fork", "child_pid")?,
        exit_group_dead: find("sched_process_exit")
            .and_then(|f| f.offset("group_dead").ok())
            .unwrap_or(NO_FIELD),
        ..Offsets::ZERO
    };
    for source in Events::SOURCES {
        for (field, slot) in source.fields {
            *slot(&mut offsets.events) = get(source.tracepoint, field)?;
        }
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(kernel: &str, event: &str) -> Format {
        let path = format!(
            "{}/../fixtures/tracefs/{kernel}.{event}.format",
            env!("CARGO_MANIFEST_DIR")
        );
        Format::parse(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    /// The offsets of both fixture kernels, as the programs will read them
    /// (the sched/syscalls events are not among the fixtures: missing).
    #[test]
    fn offsets_of_both_fixture_kernels() {
        for kernel in ["linux-6.1-debian-svm", "linux-6.18-pvm"] {
            let formats: Vec<Format> = all()
                .iter()
                .filter(|h| h.category == "kvm")
                .map(|h| fixture(kernel, h.event))
                .collect();
            let find = |event: &str| formats.iter().find(|f| f.name == event);
            let o = offsets(&find).unwrap();
            let e = o.events;
            assert_eq!((e.cpuid_function, e.cpuid_index), (8, 12), "{kernel}");
            assert_eq!((e.pio_rw, e.pio_port, e.pio_size), (8, 12, 16), "{kernel}");
            assert_eq!((e.mmio_type, e.mmio_gpa), (8, 16), "{kernel}");
            assert_eq!((e.msr_write, e.msr_ecx), (8, 12), "{kernel}");
            assert_eq!(e.hypercall_nr, 8, "{kernel}");
            assert_eq!((o.exit_reason, o.exit_isa, o.exit_vcpu_id), (8, 24, 56));
            assert_eq!(o.exit_guest_rip, 16, "{kernel}");
            assert_eq!((o.userspace_exit_reason, o.userspace_exit_errno), (8, 12));
            assert_eq!((o.ioctl_cmd, o.fork_child_pid), (0, 0), "missing: 0");
        }
    }

    /// `sys_enter_ioctl` closes round trips only where `kvm_entry` does
    /// not: a syscall tracepoint slows every syscall on the host.
    #[test]
    fn the_ioctl_hook_is_attached_only_where_kvm_entry_never_fires() {
        let has_ioctl = |b: Backend| {
            for_backend(b)
                .iter()
                .any(|h| h.program == "sys_enter_ioctl")
        };
        assert!(!has_ioctl(Backend::Svm));
        assert!(!has_ioctl(Backend::Vmx));
        assert!(has_ioctl(Backend::Pvm));
        assert!(has_ioctl(Backend::Unknown));
        for b in [Backend::Svm, Backend::Vmx, Backend::Pvm, Backend::Unknown] {
            assert_eq!(
                for_backend(b).len() + usize::from(b.emits_vmexit()),
                all().len(),
                "{b:?}"
            );
        }
    }

    #[test]
    fn every_program_is_named_once() {
        let hooks = all();
        let mut names: Vec<&str> = hooks
            .iter()
            .flat_map(|h| [Some(h.program), h.raw.map(|r| r.program)])
            .flatten()
            .collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
        assert_eq!(hooks.len(), Events::SOURCES.len() + OTHER_HOOKS.len());
        assert!(sized_maps().any(|m| m == "CPUID_EVENTS"));
    }
}
