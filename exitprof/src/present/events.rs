//! The exit-handler events as groups of lines, for the `stat` tables and
//! the TUI's events view: one group per kind of the event-kind table, then
//! the userspace exits. Where VM exits are seen (SVM, VMX), a kind's group
//! is the drill-down under its exit reason (CPUID leaves under `cpuid`,
//! ports under `io`), as `perf kvm stat --event=ioport` shows it; on PVM
//! it stands alone, under its own title.
use exitprof_common::reasons::handler_exits;

use crate::model::{
    PerSecond, Snapshot,
    events::{EventKind, EventVisitor},
};

/// One key of one kind: a line of a group.
#[derive(Clone, Debug, PartialEq)]
pub struct EventLine {
    /// `<kind> <label>`: the line's identity from one snapshot to the
    /// next (the TUI's history key).
    pub key: String,
    /// The key, for people (`0x00000007/0x1`, `0x00e9 out 1B`).
    pub label: String,
    /// Events.
    pub count: u64,
    /// Events per second (the snapshot's; the TUI puts its own in).
    pub rate: PerSecond,
    /// For userspace exits: round trips, their sum and the longest.
    pub roundtrips: Option<(u64, u64, u64)>,
}

impl EventLine {
    /// Time of the line (the sum of round trips; 0 for handler events,
    /// which are not timed).
    #[must_use]
    pub fn time_ns(&self) -> u64 {
        self.roundtrips.map_or(0, |r| r.1)
    }

    /// Mean round trip.
    #[must_use]
    pub fn avg_ns(&self) -> u64 {
        self.roundtrips
            .map_or(0, |(n, total, _)| total.checked_div(n).unwrap_or(0))
    }

    /// Longest round trip.
    #[must_use]
    pub fn max_ns(&self) -> u64 {
        self.roundtrips.map_or(0, |r| r.2)
    }
}

/// The exit reasons a group drills into, and their exits.
#[derive(Clone, Debug, PartialEq)]
pub struct Parent {
    /// `cpuid (0x72)`, or `MSR_READ (0x1f) + MSR_WRITE (0x20)`.
    pub label: String,
    /// Their exits.
    pub count: u64,
    /// Their exits per second.
    pub rate: PerSecond,
}

/// One kind's lines.
#[derive(Clone, Debug, PartialEq)]
pub struct EventGroup {
    /// The kind's `--json` name (`cpuid`, ..., `userspace_exit`).
    pub kind: &'static str,
    /// The kind's table title (`CPUID LEAF/SUBLEAF`).
    pub title: &'static str,
    /// The exit reasons it drills into, where exits are seen.
    pub parent: Option<Parent>,
    /// Its keys, in the snapshot's order.
    pub lines: Vec<EventLine>,
}

impl EventGroup {
    /// Events of the group.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.lines.iter().map(|l| l.count).sum()
    }
}

/// The title of the userspace-exit group.
pub const USERSPACE_TITLE: &str = "USERSPACE EXIT";

/// Every kind's group, in table order, then the userspace exits.
#[must_use]
pub fn event_groups(snapshot: &Snapshot) -> Vec<EventGroup> {
    struct Groups<'a>(&'a Snapshot, Vec<EventGroup>);
    impl EventVisitor for Groups<'_> {
        fn rows<K: EventKind>(&mut self, rows: &[K]) {
            let lines = rows
                .iter()
                .map(|r| EventLine {
                    key: format!("{} {}", K::NAME, r.label()),
                    label: r.label(),
                    count: r.count(),
                    rate: r.rate(),
                    roundtrips: None,
                })
                .collect();
            self.1.push(EventGroup {
                kind: K::NAME,
                title: K::TITLE,
                parent: parent(self.0, K::SOURCE.tracepoint),
                lines,
            });
        }
    }
    let mut groups = Groups(snapshot, Vec::new());
    snapshot.events.each(&mut groups);
    let mut groups = groups.1;
    groups.push(EventGroup {
        kind: "userspace_exit",
        title: USERSPACE_TITLE,
        parent: None,
        lines: snapshot
            .events
            .userspace_exit
            .iter()
            .map(|r| EventLine {
                key: format!("userspace_exit {}", r.name),
                label: r.name.clone(),
                count: r.count,
                rate: r.rate_per_s,
                roundtrips: Some((r.roundtrips, r.roundtrip_total_ns, r.roundtrip_max_ns)),
            })
            .collect(),
    });
    groups
}

/// The reason rows of `snapshot` whose handlers emit `tracepoint`, as
/// one parent; `None` where no exit is seen.
fn parent(snapshot: &Snapshot, tracepoint: &str) -> Option<Parent> {
    if !snapshot.vmexit_available {
        return None;
    }
    let rows: Vec<_> = snapshot
        .reason_rows()
        .filter(|r| handler_exits(tracepoint).any(|(isa, code)| (isa, code) == (r.isa, r.reason)))
        .collect();
    if rows.is_empty() {
        return None;
    }
    let count = rows.iter().map(|r| r.count).sum();
    Some(Parent {
        label: rows
            .iter()
            .map(|r| format!("{} ({:#x})", r.name, r.reason))
            .collect::<Vec<_>>()
            .join(" + "),
        count,
        rate: PerSecond::of(count, snapshot.interval_ns),
    })
}

#[cfg(test)]
mod tests {
    use exitprof_common::Isa;

    use super::*;
    use crate::model::{Backend, CpuidRow, ExitRow, PioRow};

    #[test]
    fn groups_drill_down_under_their_exit_reason_where_exits_are_seen() {
        let mut s = Snapshot::empty(Backend::Svm);
        s.interval_ns = 2_000_000_000;
        s.exits = vec![ExitRow {
            isa: Isa::Svm,
            reason: 0x72,
            name: "cpuid".into(),
            count: 10,
            ..ExitRow::default()
        }];
        s.events.cpuid = vec![CpuidRow {
            leaf: 7,
            subleaf: Some(0),
            count: 10,
            ..CpuidRow::default()
        }];
        s.events.pio = vec![PioRow {
            port: 0xe9,
            write: true,
            size: 1,
            count: 4,
            ..PioRow::default()
        }];
        s.fill_rates();
        let groups = event_groups(&s);
        assert_eq!(
            groups.iter().map(|g| g.kind).collect::<Vec<_>>(),
            ["cpuid", "pio", "mmio", "msr", "hypercall", "userspace_exit"]
        );
        let cpuid = &groups[0];
        let parent = cpuid.parent.as_ref().unwrap();
        assert_eq!((parent.label.as_str(), parent.count), ("cpuid (0x72)", 10));
        assert_eq!(parent.rate, PerSecond(5.0));
        assert_eq!(cpuid.lines[0].key, "cpuid 0x00000007/0x0");
        assert_eq!(cpuid.lines[0].rate, PerSecond(5.0));
        assert_eq!(groups[1].parent, None, "no io exits in this snapshot");
        assert_eq!(groups[1].count(), 4);
        s.backend = Backend::Pvm;
        s.vmexit_available = false;
        assert_eq!(
            event_groups(&s)[0].parent,
            None,
            "PVM: no exits to drill into"
        );
    }
}
