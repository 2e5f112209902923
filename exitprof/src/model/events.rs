//! Exit-handler events: one table entry per kind, in the manner of perf's
//! `kvm_events_ops`. An entry is a row type (the `--json` shape of one
//! key's count) and its [`EventKind`] impl: where the events come from
//! (tracepoint, programs, record fields, maps), how a map key becomes a
//! row, and how a row reads in a table. Everything else (attaching,
//! offsets, readout, deltas, tables, the TUI) walks the table, so a new
//! kind is one entry here, its key in `exitprof-common/src/events.rs` and
//! its programs in `exitprof-ebpf/src/handler_events.rs`.
use exitprof_common::events::{CpuidKey, EventKey, EventOffsets, MmioKey, MsrKey, PioKey};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::per_second::PerSecond;

/// What a raw tracepoint program reads of one argument of the tracepoint's
/// prototype; the loader checks it against the kernel's BTF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawArg {
    /// An integer of this many bytes.
    Int(u32),
    /// `struct kvm_vcpu *`.
    Vcpu,
}

/// A record field a classic program reads, and where its offset goes.
pub type Field = (&'static str, fn(&mut EventOffsets) -> &mut u32);

/// Where the events of one kind come from: plain data the loader and the
/// readout walk.
#[derive(Clone, Copy, Debug)]
pub struct EventSource {
    /// The `kvm:` tracepoint.
    pub tracepoint: &'static str,
    /// The classic tracepoint program.
    pub program: &'static str,
    /// The raw tracepoint program.
    pub raw_program: &'static str,
    /// The leading tracepoint arguments the raw program reads.
    pub raw_args: &'static [RawArg],
    /// The record fields the classic program reads.
    pub fields: &'static [Field],
    /// The per-CPU hash map of counts by key.
    pub map: &'static str,
    /// Its per-CPU front cache (`CachedCount`), if it has one.
    pub cache: Option<&'static str>,
}

/// One kind of exit-handler event: its table entry.
pub trait EventKind: Clone + Default + PartialEq + Serialize + DeserializeOwned {
    /// The map key (`exitprof-common`).
    type Key: EventKey;
    /// The name in `--json` (`events.<NAME>`) and in the TUI.
    const NAME: &'static str;
    /// The header of its table.
    const TITLE: &'static str;
    /// Where its events come from.
    const SOURCE: EventSource;
    /// The row of `count` events of `key`.
    fn from_key(key: &Self::Key, count: u64) -> Self;
    /// The first column of its table: the key, for people.
    fn label(&self) -> String;
    /// The key as metric labels (name, value), in a fixed order: what
    /// `exitprof serve` exports as `exitprof_<NAME>_events_total{...}`.
    fn key_labels(&self) -> Vec<(&'static str, String)>;
    /// Events of this key.
    fn count(&self) -> u64;
    /// Sets the events of this key.
    fn set_count(&mut self, count: u64);
    /// Events per second over the snapshot's interval.
    fn rate(&self) -> PerSecond;
    /// Sets the rate ([`crate::model::Snapshot::fill_rates`]).
    fn set_rate(&mut self, rate: PerSecond);
    /// Whether `other` counts the same key.
    fn same_key(&self, other: &Self) -> bool;
}

/// `read`/`write` for tables and metric labels.
fn direction(write: bool) -> &'static str {
    if write { "write" } else { "read" }
}

/// `out`/`in` for port I/O.
fn pio_direction(write: bool) -> &'static str {
    if write { "out" } else { "in" }
}

/// Implements the count and rate accessors of a row with `count` and
/// `rate_per_s` fields.
macro_rules! count_field {
    () => {
        fn count(&self) -> u64 {
            self.count
        }
        fn set_count(&mut self, count: u64) {
            self.count = count;
        }
        fn rate(&self) -> PerSecond {
            self.rate_per_s
        }
        fn set_rate(&mut self, rate: PerSecond) {
            self.rate_per_s = rate;
        }
    };
}

/// CPUID events of one leaf/subleaf.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuidRow {
    /// eax.
    pub leaf: u32,
    /// ecx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subleaf: Option<u32>,
    /// Events.
    pub count: u64,
    /// Events per second over the snapshot's interval.
    #[serde(default)]
    pub rate_per_s: PerSecond,
}

impl EventKind for CpuidRow {
    type Key = CpuidKey;
    const NAME: &'static str = "cpuid";
    const TITLE: &'static str = "CPUID LEAF/SUBLEAF";
    const SOURCE: EventSource = EventSource {
        tracepoint: "kvm_cpuid",
        program: "kvm_cpuid",
        raw_program: "kvm_cpuid_raw",
        raw_args: &[RawArg::Int(4), RawArg::Int(4)],
        fields: &[
            ("function", |o| &mut o.cpuid_function),
            ("index", |o| &mut o.cpuid_index),
        ],
        map: "CPUID_EVENTS",
        cache: Some("CPUID_CACHE"),
    };
    fn from_key(k: &CpuidKey, count: u64) -> Self {
        Self {
            leaf: k.leaf,
            subleaf: Some(k.subleaf),
            count,
            ..Self::default()
        }
    }
    fn label(&self) -> String {
        format!("{:#010x}/{:#x}", self.leaf, self.subleaf.unwrap_or(0))
    }
    fn key_labels(&self) -> Vec<(&'static str, String)> {
        vec![
            ("leaf", format!("{:#010x}", self.leaf)),
            ("subleaf", format!("{:#x}", self.subleaf.unwrap_or(0))),
        ]
    }
    count_field!();
    fn same_key(&self, o: &Self) -> bool {
        (self.leaf, self.subleaf) == (o.leaf, o.subleaf)
    }
}

/// Port I/O events of one port, direction and size.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PioRow {
    /// Port.
    pub port: u16,
    /// `out` (true) or `in`.
    pub write: bool,
    /// Bytes.
    pub size: u8,
    /// Events.
    pub count: u64,
    /// Events per second over the snapshot's interval.
    #[serde(default)]
    pub rate_per_s: PerSecond,
}

impl EventKind for PioRow {
    type Key = PioKey;
    const NAME: &'static str = "pio";
    const TITLE: &'static str = "I/O PORT";
    const SOURCE: EventSource = EventSource {
        tracepoint: "kvm_pio",
        program: "kvm_pio",
        raw_program: "kvm_pio_raw",
        raw_args: &[RawArg::Int(4), RawArg::Int(4), RawArg::Int(4)],
        fields: &[
            ("rw", |o| &mut o.pio_rw),
            ("port", |o| &mut o.pio_port),
            ("size", |o| &mut o.pio_size),
        ],
        map: "PIO_EVENTS",
        cache: Some("PIO_CACHE"),
    };
    fn from_key(k: &PioKey, count: u64) -> Self {
        Self {
            port: k.port,
            write: k.write != 0,
            size: k.size,
            count,
            ..Self::default()
        }
    }
    fn label(&self) -> String {
        format!(
            "{:#06x} {} {}B",
            self.port,
            pio_direction(self.write),
            self.size
        )
    }
    fn key_labels(&self) -> Vec<(&'static str, String)> {
        vec![
            ("port", format!("{:#06x}", self.port)),
            ("direction", pio_direction(self.write).to_owned()),
            ("size", self.size.to_string()),
        ]
    }
    count_field!();
    fn same_key(&self, o: &Self) -> bool {
        (self.port, self.write, self.size) == (o.port, o.write, o.size)
    }
}

/// MMIO events of one address and direction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioRow {
    /// Guest physical address.
    pub gpa: u64,
    /// Write (true) or read.
    pub write: bool,
    /// Events.
    pub count: u64,
    /// Events per second over the snapshot's interval.
    #[serde(default)]
    pub rate_per_s: PerSecond,
}

impl EventKind for MmioRow {
    type Key = MmioKey;
    const NAME: &'static str = "mmio";
    const TITLE: &'static str = "MMIO GPA";
    const SOURCE: EventSource = EventSource {
        tracepoint: "kvm_mmio",
        program: "kvm_mmio",
        raw_program: "kvm_mmio_raw",
        raw_args: &[RawArg::Int(4), RawArg::Int(4), RawArg::Int(8)],
        fields: &[("type", |o| &mut o.mmio_type), ("gpa", |o| &mut o.mmio_gpa)],
        map: "MMIO_EVENTS",
        cache: Some("MMIO_CACHE"),
    };
    fn from_key(k: &MmioKey, count: u64) -> Self {
        Self {
            gpa: k.gpa,
            write: k.write != 0,
            count,
            ..Self::default()
        }
    }
    fn label(&self) -> String {
        format!("{:#014x} {}", self.gpa, direction(self.write))
    }
    fn key_labels(&self) -> Vec<(&'static str, String)> {
        vec![
            ("gpa", format!("{:#014x}", self.gpa)),
            ("direction", direction(self.write).to_owned()),
        ]
    }
    count_field!();
    fn same_key(&self, o: &Self) -> bool {
        (self.gpa, self.write) == (o.gpa, o.write)
    }
}

/// MSR events of one index and direction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsrRow {
    /// MSR index.
    pub index: u32,
    /// `wrmsr` (true) or `rdmsr`.
    pub write: bool,
    /// Events.
    pub count: u64,
    /// Events per second over the snapshot's interval.
    #[serde(default)]
    pub rate_per_s: PerSecond,
}

impl EventKind for MsrRow {
    type Key = MsrKey;
    const NAME: &'static str = "msr";
    const TITLE: &'static str = "MSR";
    const SOURCE: EventSource = EventSource {
        tracepoint: "kvm_msr",
        program: "kvm_msr",
        raw_program: "kvm_msr_raw",
        raw_args: &[RawArg::Int(4), RawArg::Int(4)],
        fields: &[("write", |o| &mut o.msr_write), ("ecx", |o| &mut o.msr_ecx)],
        map: "MSR_EVENTS",
        cache: Some("MSR_CACHE"),
    };
    fn from_key(k: &MsrKey, count: u64) -> Self {
        Self {
            index: k.index,
            write: k.write != 0,
            count,
            ..Self::default()
        }
    }
    fn label(&self) -> String {
        format!("{:#010x} {}", self.index, direction(self.write))
    }
    fn key_labels(&self) -> Vec<(&'static str, String)> {
        vec![
            ("msr", format!("{:#010x}", self.index)),
            ("direction", direction(self.write).to_owned()),
        ]
    }
    count_field!();
    fn same_key(&self, o: &Self) -> bool {
        (self.index, self.write) == (o.index, o.write)
    }
}

/// Hypercalls of one number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HypercallRow {
    /// Hypercall number (rax).
    pub nr: u64,
    /// Events.
    pub count: u64,
    /// Events per second over the snapshot's interval.
    #[serde(default)]
    pub rate_per_s: PerSecond,
}

impl EventKind for HypercallRow {
    type Key = u64;
    const NAME: &'static str = "hypercall";
    const TITLE: &'static str = "HYPERCALL";
    const SOURCE: EventSource = EventSource {
        tracepoint: "kvm_hypercall",
        program: "kvm_hypercall",
        raw_program: "kvm_hypercall_raw",
        raw_args: &[RawArg::Int(8)],
        fields: &[("nr", |o| &mut o.hypercall_nr)],
        map: "HYPERCALL_EVENTS",
        cache: None,
    };
    fn from_key(nr: &u64, count: u64) -> Self {
        Self {
            nr: *nr,
            count,
            ..Self::default()
        }
    }
    fn label(&self) -> String {
        format!("{:#x}", self.nr)
    }
    fn key_labels(&self) -> Vec<(&'static str, String)> {
        vec![("nr", format!("{:#x}", self.nr))]
    }
    count_field!();
    fn same_key(&self, o: &Self) -> bool {
        self.nr == o.nr
    }
}

/// Userspace exits of one reason: returns of `KVM_RUN` to the VMM, with
/// the round trip until the thread is back (its next `kvm_entry`; on PVM,
/// its next `KVM_RUN`) (not a handler event: its own
/// source, with its own programs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserspaceExitRow {
    /// `KVM_EXIT_*`, or `0x10000 + errno` for an error return.
    pub reason: u32,
    /// `IO`, `MMIO`, `HLT`, ..., `restart (EINTR)`.
    pub name: String,
    /// Returns to user space.
    pub count: u64,
    /// Round trips closed when the thread was back (`kvm_entry`, or on
    /// PVM the next `KVM_RUN`).
    #[serde(default)]
    pub roundtrips: u64,
    /// Sum of round trips.
    pub roundtrip_total_ns: u64,
    /// Longest round trip.
    pub roundtrip_max_ns: u64,
    /// Returns to user space per second over the snapshot's interval.
    #[serde(default)]
    pub rate_per_s: PerSecond,
}

/// Something done with each kind's rows, in table order.
pub trait EventVisitor {
    /// Called once per kind.
    fn rows<K: EventKind>(&mut self, rows: &[K]);
}

/// Something done to each kind's rows, in table order.
pub trait EventVisitorMut {
    /// Called once per kind.
    fn rows<K: EventKind>(&mut self, rows: &mut [K]);
}

/// Where a snapshot's rows of each kind come from (the readout).
pub trait EventReader {
    /// Why a kind could not be read.
    type Error;
    /// Every key's count of kind `K`, sorted by key.
    ///
    /// # Errors
    /// When the kind's maps cannot be read.
    fn read<K: EventKind>(&mut self) -> Result<Vec<K>, Self::Error>;
}

/// The table: each kind once, by its `--json` name. The macro makes the
/// `Events` struct (the JSON contract's field order) and the walks over
/// it, so no code elsewhere lists the kinds.
macro_rules! event_kinds {
    ($($field:ident: $row:ty),+ $(,)?) => {
        /// Exit-handler events, as KVM's handlers traced them.
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct Events {
            $(
                #[doc = concat!("`", stringify!($field), "` events (see [`", stringify!($row), "`]).")]
                pub $field: Vec<$row>,
            )+
            /// Returns of `KVM_RUN` to the VMM by reason, with the round trip.
            pub userspace_exit: Vec<UserspaceExitRow>,
        }

        impl Events {
            /// Every kind's source, in table order.
            pub const SOURCES: &'static [EventSource] = &[$(<$row as EventKind>::SOURCE),+];

            /// Every kind's `--json` name, in table order.
            pub const NAMES: &'static [&'static str] = &[$(<$row as EventKind>::NAME),+];

            /// Calls `visitor` with each kind's rows.
            pub fn each(&self, visitor: &mut impl EventVisitor) {
                $(visitor.rows(&self.$field);)+
            }

            /// Calls `visitor` with each kind's rows, to change them.
            pub fn each_mut(&mut self, visitor: &mut impl EventVisitorMut) {
                $(visitor.rows(&mut self.$field);)+
            }

            /// Reads every kind from `reader`.
            ///
            /// # Errors
            /// The first kind that cannot be read.
            pub fn read<R: EventReader>(
                reader: &mut R,
                userspace_exit: Vec<UserspaceExitRow>,
            ) -> Result<Self, R::Error> {
                Ok(Self {
                    $($field: reader.read::<$row>()?,)+
                    userspace_exit,
                })
            }

            /// What happened between `earlier` and `self`: counts subtract,
            /// rows that did not change are left out.
            #[must_use]
            pub fn since(&self, earlier: &Self) -> Self {
                Self {
                    $($field: delta(&self.$field, &earlier.$field),)+
                    userspace_exit: userspace_delta(&self.userspace_exit, &earlier.userspace_exit),
                }
            }

            #[cfg(test)]
            fn field_names() -> &'static [&'static str] {
                &[$(stringify!($field)),+]
            }
        }
    };
}

event_kinds! {
    cpuid: CpuidRow,
    pio: PioRow,
    mmio: MmioRow,
    msr: MsrRow,
    hypercall: HypercallRow,
}

/// `now - before` per key, without the rows that did not change.
fn delta<K: EventKind>(now: &[K], before: &[K]) -> Vec<K> {
    now.iter()
        .filter_map(|row| {
            let old = before
                .iter()
                .find(|b| b.same_key(row))
                .map_or(0, EventKind::count);
            let mut row = row.clone();
            row.set_count(row.count().saturating_sub(old));
            (row.count() > 0).then_some(row)
        })
        .collect()
}

/// [`delta`] for userspace exits, whose round trips subtract too.
fn userspace_delta(now: &[UserspaceExitRow], before: &[UserspaceExitRow]) -> Vec<UserspaceExitRow> {
    now.iter()
        .filter_map(|row| {
            let mut row = row.clone();
            if let Some(b) = before.iter().find(|b| b.reason == row.reason) {
                row.count = row.count.saturating_sub(b.count);
                row.roundtrips = row.roundtrips.saturating_sub(b.roundtrips);
                row.roundtrip_total_ns =
                    row.roundtrip_total_ns.saturating_sub(b.roundtrip_total_ns);
            }
            (row.count > 0 || row.roundtrips > 0).then_some(row)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table, enumerated: every kind's JSON name is its field, its
    /// programs and maps are named consistently, every record field it
    /// reads has an offset of its own, and it appears in the JSON.
    #[test]
    fn the_event_kind_table() {
        assert_eq!(Events::NAMES, Events::field_names());
        assert_eq!(
            Events::NAMES,
            ["cpuid", "pio", "mmio", "msr", "hypercall"],
            "a new kind? add it to README's JSON section too"
        );
        let mut offsets = EventOffsets::default();
        let mut next = 1;
        for (source, name) in Events::SOURCES.iter().zip(Events::NAMES) {
            assert_eq!(source.tracepoint, format!("kvm_{name}"));
            assert_eq!(source.program, source.tracepoint);
            assert_eq!(source.raw_program, format!("{}_raw", source.program));
            assert_eq!(source.map, format!("{}_EVENTS", name.to_uppercase()));
            if let Some(cache) = source.cache {
                assert_eq!(cache, format!("{}_CACHE", name.to_uppercase()));
            }
            assert!(!source.raw_args.is_empty() && !source.fields.is_empty());
            for (field, slot) in source.fields {
                assert_eq!(*slot(&mut offsets), 0, "{name}.{field} shares an offset");
                *slot(&mut offsets) = next;
                next += 1;
            }
        }
        let json = serde_json::to_value(Events::default()).unwrap();
        for name in Events::NAMES.iter().chain(&["userspace_exit"]) {
            assert!(json.get(name).is_some(), "{name}");
        }
    }

    #[test]
    fn labels_read_as_the_tables_print_them() {
        let cpuid = CpuidRow::from_key(
            &CpuidKey {
                leaf: 7,
                subleaf: 1,
            },
            3,
        );
        assert_eq!((cpuid.label(), cpuid.count), ("0x00000007/0x1".into(), 3));
        let pio = PioRow::from_key(
            &PioKey {
                port: 0xe9,
                write: 1,
                size: 1,
                _pad: 0,
            },
            7,
        );
        assert_eq!(pio.label(), "0x00e9 out 1B");
        let mmio = MmioRow::from_key(
            &MmioKey {
                gpa: 0xd000_0000,
                write: 0,
                _pad: 0,
            },
            1,
        );
        assert_eq!(mmio.label(), "0x0000d0000000 read");
        let msr = MsrRow::from_key(
            &MsrKey {
                index: 0x8b,
                write: 1,
            },
            1,
        );
        assert_eq!(msr.label(), "0x0000008b write");
        assert_eq!(HypercallRow::from_key(&0x283, 1).label(), "0x283");
    }

    #[test]
    fn key_labels_name_every_part_of_the_key() {
        let cpuid = CpuidRow {
            leaf: 7,
            subleaf: Some(1),
            count: 3,
            ..CpuidRow::default()
        };
        assert_eq!(
            cpuid.key_labels(),
            [("leaf", "0x00000007".into()), ("subleaf", "0x1".into())]
        );
        let pio = PioRow {
            port: 0xe9,
            write: false,
            size: 1,
            count: 1,
            ..PioRow::default()
        };
        assert_eq!(
            pio.key_labels(),
            [
                ("port", "0x00e9".into()),
                ("direction", "in".into()),
                ("size", "1".into())
            ]
        );
        let mmio = MmioRow {
            gpa: 0xd000_0000,
            write: true,
            count: 1,
            ..MmioRow::default()
        };
        assert_eq!(
            mmio.key_labels(),
            [
                ("gpa", "0x0000d0000000".into()),
                ("direction", "write".into())
            ]
        );
        let msr = MsrRow {
            index: 0x8b,
            write: false,
            count: 1,
            ..MsrRow::default()
        };
        assert_eq!(
            msr.key_labels(),
            [("msr", "0x0000008b".into()), ("direction", "read".into())]
        );
        assert_eq!(
            HypercallRow::from_key(&0x283, 1).key_labels(),
            [("nr", "0x283".into())]
        );
    }

    #[test]
    fn since_subtracts_per_key() {
        let row = |port, count| PioRow {
            port,
            write: true,
            size: 1,
            count,
            ..Default::default()
        };
        let a = Events {
            pio: vec![row(0xe9, 5), row(0xf4, 1)],
            ..Events::default()
        };
        let b = Events {
            pio: vec![row(0xe9, 12), row(0xf4, 1), row(0x80, 2)],
            ..Events::default()
        };
        assert_eq!(b.since(&a).pio, vec![row(0xe9, 7), row(0x80, 2)]);
    }
}
