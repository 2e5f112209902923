//! The rows of every table view (exits, events, vCPUs, sites), as the
//! state holds them: since the baseline, with the last interval's rates
//! from the history, filtered (reason regex, VM) and sorted by the one
//! sort key.
use std::{cmp::Reverse, collections::BTreeMap};

use super::app::{App, SortBy, site_key, vcpu_key};
use crate::{
    model::{ExitRow, PerSecond, SiteRow},
    present::events::{EventGroup, EventLine, event_groups},
};

impl App {
    /// The exit table's rows since the baseline, filtered and sorted: per
    /// reason, or, with a VM filter, that VM's per-vCPU rows summed by
    /// reason (without min and histogram, which the breakdown lacks).
    #[must_use]
    pub fn exit_rows(&self) -> Vec<ExitRow> {
        let shown = self.shown();
        let mut rows: Vec<ExitRow> = if self.pid_filter.is_empty() {
            shown.reason_rows().cloned().collect()
        } else {
            let mut by_reason: BTreeMap<(exitprof_common::Isa, u32), ExitRow> = BTreeMap::new();
            for r in shown
                .exits
                .iter()
                .filter(|r| r.pid.is_some() && self.vm_matches(r.pid))
            {
                let sum = by_reason
                    .entry((r.isa, r.reason))
                    .or_insert_with(|| ExitRow {
                        pid: None,
                        vcpu: None,
                        count: 0,
                        timed: 0,
                        total_ns: 0,
                        min_ns: 0,
                        max_ns: 0,
                        hist_log2_ns: Vec::new(),
                        ..r.clone()
                    });
                sum.count += r.count;
                sum.timed += r.timed;
                sum.total_ns += r.total_ns;
                sum.max_ns = sum.max_ns.max(r.max_ns);
            }
            by_reason.into_values().collect()
        };
        rows.retain(|r| self.reason_matches(&r.name));
        let key = |r: &ExitRow| match self.sort {
            SortBy::Count => r.count,
            SortBy::Rate => self.rate(&r.name),
            SortBy::Time => r.total_ns,
            SortBy::Avg => r.avg_ns(),
            SortBy::Max => r.max_ns,
            SortBy::Name => 0,
        };
        if self.sort == SortBy::Name {
            rows.sort_by(|a, b| a.name.cmp(&b.name));
        } else {
            rows.sort_by(|a, b| key(b).cmp(&key(a)).then(a.name.cmp(&b.name)));
        }
        rows
    }

    /// The breakdown rows since the baseline, filtered by VM and reason.
    #[must_use]
    pub fn vcpu_rows(&self) -> Vec<&ExitRow> {
        let mut rows: Vec<&ExitRow> = self
            .shown()
            .exits
            .iter()
            .filter(|r| r.pid.is_some() && self.vm_matches(r.pid))
            .filter(|r| self.reason_matches(&r.name))
            .collect();
        let key = |r: &ExitRow| match self.sort {
            SortBy::Count => r.count,
            SortBy::Rate => self.rate(&vcpu_key(r)),
            SortBy::Time => r.total_ns,
            SortBy::Avg => r.avg_ns(),
            SortBy::Max => r.max_ns,
            SortBy::Name => 0,
        };
        if self.sort == SortBy::Name {
            rows.sort_by(|a, b| {
                (&a.vm, a.pid, a.vcpu, &a.name).cmp(&(&b.vm, b.pid, b.vcpu, &b.name))
            });
        } else {
            rows.sort_by(|a, b| {
                key(b)
                    .cmp(&key(a))
                    .then((a.pid, a.vcpu, &a.name).cmp(&(b.pid, b.vcpu, &b.name)))
            });
        }
        rows
    }

    /// The events view: every kind's group that has lines, under its
    /// exit reason where exits are seen, its lines sorted by the sort key;
    /// rates are the last interval's.
    #[must_use]
    pub fn event_groups(&self) -> Vec<EventGroup> {
        let mut groups = event_groups(self.shown());
        groups.retain(|g| !g.lines.is_empty());
        for group in &mut groups {
            for line in &mut group.lines {
                line.rate = self.per_second(&line.key);
            }
            if let Some(parent) = &mut group.parent {
                // The parent's reasons, by the names the history keeps.
                let rate: u64 = self
                    .shown()
                    .reason_rows()
                    .filter(|r| {
                        parent
                            .label
                            .contains(&format!("{} ({:#x})", r.name, r.reason))
                    })
                    .map(|r| self.rate(&r.name))
                    .sum();
                #[expect(clippy::cast_precision_loss, reason = "a rate for people")]
                let rate = PerSecond(rate as f64);
                parent.rate = rate;
            }
            self.sort_lines(&mut group.lines);
        }
        groups
    }

    fn per_second(&self, key: &str) -> PerSecond {
        #[expect(clippy::cast_precision_loss, reason = "a rate for people")]
        let rate = PerSecond(self.rate(key) as f64);
        rate
    }

    fn sort_lines(&self, lines: &mut [EventLine]) {
        let key = |l: &EventLine| match self.sort {
            SortBy::Count => l.count,
            SortBy::Rate => l.rate.rounded(),
            SortBy::Time => l.time_ns(),
            SortBy::Avg => l.avg_ns(),
            SortBy::Max => l.max_ns(),
            SortBy::Name => 0,
        };
        if self.sort == SortBy::Name {
            lines.sort_by(|a, b| a.label.cmp(&b.label));
        } else {
            lines.sort_by(|a, b| key(b).cmp(&key(a)).then(a.label.cmp(&b.label)));
        }
    }

    /// The sites view: the sites of the reason selected in the exit table
    /// (of the VM filter's VM), sorted by the sort key; `None` when no
    /// reason is selected.
    #[must_use]
    pub fn site_rows(&self) -> Option<Vec<SiteRow>> {
        let reason = self.selected_row()?;
        let mut sites: Vec<SiteRow> = self
            .shown()
            .sites
            .iter()
            .filter(|s| (s.isa, s.reason) == (reason.isa, reason.reason))
            .filter(|s| self.vm_matches(Some(s.pid)))
            .cloned()
            .collect();
        for site in &mut sites {
            site.rate_per_s = self.per_second(&site_key(site));
        }
        let key = |s: &SiteRow| match self.sort {
            SortBy::Count => s.count,
            SortBy::Rate => s.rate_per_s.rounded(),
            SortBy::Time => s.total_ns,
            SortBy::Avg => s.avg_ns(),
            SortBy::Max => s.max_ns,
            SortBy::Name => 0,
        };
        if self.sort == SortBy::Name {
            sites.sort_by(|a, b| {
                (a.symbol.as_deref(), a.rip, a.pid).cmp(&(b.symbol.as_deref(), b.rip, b.pid))
            });
        } else {
            sites.sort_by_key(|s| (Reverse(key(s)), s.rip, s.pid));
        }
        Some(sites)
    }
}

#[cfg(test)]
mod tests {
    use exitprof_common::Isa;

    use super::*;
    use crate::{
        model::{Backend, CpuidRow, Snapshot},
        tui::app::{
            Action, Input, View,
            tests::{snap, with_breakdown},
        },
    };

    fn cpuid(leaf: u32, count: u64) -> CpuidRow {
        CpuidRow {
            leaf,
            subleaf: Some(0),
            count,
            ..CpuidRow::default()
        }
    }

    fn site(pid: u32, rip: u64, count: u64) -> SiteRow {
        SiteRow {
            isa: Isa::Svm,
            reason: 0x72,
            name: "cpuid".into(),
            pid,
            vm: Some(if pid == 10 { "qemu-web" } else { "qemu-db" }.into()),
            rip,
            symbol: None,
            count,
            timed: count,
            total_ns: count * 1_000,
            max_ns: 2_000,
            rate_per_s: PerSecond::default(),
        }
    }

    /// On PVM (no exits), two intervals of CPUID events.
    fn pvm_app() -> App {
        let at = |t_s, a, b| {
            let mut s = Snapshot::empty(Backend::Pvm);
            s.interval_ns = t_s * 1_000_000_000_u64;
            s.events.cpuid = vec![cpuid(0x4242, a), cpuid(0x1, b)];
            s
        };
        let mut app = App::new(at(0, 0, 0), "h".into(), "n/a".into());
        app.update(Action::Data(Box::new(at(1, 100, 50))));
        app.update(Action::Data(Box::new(at(2, 150, 250))));
        app
    }

    #[test]
    fn event_lines_have_rates_and_sort_like_exits() {
        let mut app = pvm_app();
        assert_eq!(app.events_rate(), 250);
        let groups = app.event_groups();
        assert_eq!(groups.len(), 1, "empty kinds are left out");
        assert_eq!(groups[0].parent, None, "PVM: no exit reason above them");
        let lines = &groups[0].lines;
        let by = |lines: &[EventLine]| -> Vec<(String, u64, u64)> {
            lines
                .iter()
                .map(|l| (l.label.clone(), l.count, l.rate.rounded()))
                .collect()
        };
        assert_eq!(
            by(lines),
            [
                ("0x00000001/0x0".into(), 250, 200),
                ("0x00004242/0x0".into(), 150, 50)
            ]
        );
        assert_eq!(app.history["cpuid 0x00004242/0x0"], [100, 50]);
        app.update(Action::NextSort); // rate: the same order here
        app.update(Action::NextSort); // time: untimed, by name
        assert_eq!(app.event_groups()[0].lines[0].label, "0x00000001/0x0");
        for _ in 0..3 {
            app.update(Action::NextSort);
        }
        assert_eq!(app.sort, SortBy::Name);
        assert_eq!(app.event_groups()[0].lines[0].label, "0x00000001/0x0");
    }

    #[test]
    fn sites_of_the_selected_reason_and_vm() {
        let mut app = App::new(snap(0, &[]), "h".into(), "NPT on".into());
        app.sites_counted = true;
        let mut s = with_breakdown(
            snap(1, &[("cpuid", 0x72, 30), ("hlt", 0x78, 4)]),
            &[
                (10, 0, "cpuid", 0x72, 10),
                (20, 0, "cpuid", 0x72, 20),
                (20, 0, "hlt", 0x78, 4),
            ],
        );
        s.sites = vec![
            site(10, 0x1000, 10),
            site(20, 0x2000, 5),
            site(20, 0x3000, 15),
        ];
        let mut hlt = site(20, 0x4000, 4);
        (hlt.reason, hlt.name) = (0x78, "hlt".into());
        s.sites.push(hlt);
        app.update(Action::Data(Box::new(s)));
        app.update(Action::Show(View::Sites));
        let rips =
            |app: &App| -> Vec<u64> { app.site_rows().unwrap().iter().map(|s| s.rip).collect() };
        assert_eq!(rips(&app), [0x3000, 0x1000, 0x2000], "cpuid, most first");
        assert_eq!(app.site_rows().unwrap()[0].rate_per_s, PerSecond(15.0));
        app.update(Action::StartInput(Input::Pid));
        for c in "db".chars() {
            app.update(Action::Type(c));
        }
        app.update(Action::EndInput);
        assert_eq!(rips(&app), [0x3000, 0x2000], "the v filter takes names");
        app.update(Action::Select(1));
        assert_eq!(rips(&app), [0x4000], "hlt selected");
    }
}
