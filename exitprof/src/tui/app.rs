//! The state of `exitprof top` and the one place it changes (`update`).
//! No terminal, no maps: snapshots come in as `Action::Data`.
use std::collections::{BTreeMap, VecDeque};

use crate::model::{ExitRow, Snapshot};

/// Points of rate history kept per reason (the sparkline's width).
pub const HISTORY: usize = 16;

/// The views, in key order 1..=4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Exit reasons.
    Exits,
    /// Exit-handler events.
    Events,
    /// Per process and vCPU.
    Vcpus,
    /// Latency histogram of the selected reason.
    Histogram,
}

impl View {
    /// All views, in order.
    pub const ALL: [Self; 4] = [Self::Exits, Self::Events, Self::Vcpus, Self::Histogram];

    /// Tab title.
    #[must_use]
    pub const fn title(self) -> &'static str {
        match self {
            Self::Exits => "1 exits",
            Self::Events => "2 events",
            Self::Vcpus => "3 vcpus",
            Self::Histogram => "4 histogram",
        }
    }
}

/// Sort keys of the exit table, cycled with `s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    /// Exits since the baseline.
    Count,
    /// Exits per second in the last interval.
    Rate,
    /// Time in exits.
    Time,
    /// Mean duration.
    Avg,
    /// Longest duration.
    Max,
    /// Name.
    Name,
}

impl SortBy {
    /// The next key.
    #[must_use]
    pub const fn next(self) -> Self {
        match self {
            Self::Count => Self::Rate,
            Self::Rate => Self::Time,
            Self::Time => Self::Avg,
            Self::Avg => Self::Max,
            Self::Max => Self::Name,
            Self::Name => Self::Count,
        }
    }

    /// Column label.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Rate => "rate",
            Self::Time => "time",
            Self::Avg => "avg",
            Self::Max => "max",
            Self::Name => "name",
        }
    }
}

/// What the text being typed is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// Keys are commands.
    None,
    /// Typing the reason filter (substring of the name).
    Reason,
    /// Typing the pid filter.
    Pid,
}

/// Everything that changes the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A new cumulative snapshot.
    Data(Box<Snapshot>),
    /// Names of VMs by their VMM's pid (`host::vmname`).
    ProcessNames(BTreeMap<u32, String>),
    /// Quit.
    Quit,
    /// Show this view.
    Show(View),
    /// Next view.
    NextView,
    /// Next sort key.
    NextSort,
    /// Move the selection.
    Select(i32),
    /// Start typing a filter.
    StartInput(Input),
    /// A character of the filter being typed.
    Type(char),
    /// Delete the last character of the filter.
    Backspace,
    /// Finish typing.
    EndInput,
    /// Clear the filter being typed and finish.
    CancelInput,
    /// Counters start from zero again (a new baseline).
    Reset,
    /// Stop or resume taking in data.
    TogglePause,
    /// Show or hide the help.
    ToggleHelp,
}

/// The whole state of the TUI.
#[derive(Clone, Debug)]
pub struct App {
    /// Latest cumulative snapshot.
    pub latest: Snapshot,
    /// Counters are shown relative to this (reset with `r`).
    pub baseline: Snapshot,
    /// `latest` since `baseline`, computed once per snapshot (drawing
    /// reads it several times per frame).
    shown: Snapshot,
    /// The snapshot before `latest` (rates are the difference).
    pub previous: Option<Snapshot>,
    /// Exits/s per reason name, oldest first.
    pub history: BTreeMap<String, VecDeque<u64>>,
    /// Current view.
    pub view: View,
    /// Sort key of the exit table.
    pub sort: SortBy,
    /// Selected row of the exit table.
    pub selected: usize,
    /// Regular expression a reason name must match (a plain substring
    /// while it does not compile).
    pub reason_filter: String,
    /// The VM to show: a pid, or a substring of the VM's name.
    /// The exit and vCPU views then show only that VM's exits.
    pub pid_filter: String,
    /// Names of the VMs seen, by their VMM's pid (`host::vmname`: from
    /// the VMM's command line, or its comm), kept by the loop (drawing
    /// does no I/O).
    pub names: BTreeMap<u32, String>,
    /// What typing goes to.
    pub input: Input,
    /// Data is ignored while paused.
    pub paused: bool,
    /// The help overlay is shown.
    pub help: bool,
    /// Set by `Quit`.
    pub quit: bool,
    /// Host name for the header.
    pub host: String,
    /// Paging mode for the header ("EPT on", "NPT off", "n/a").
    pub paging: String,
    /// Seconds since start, for the header (set by the loop).
    pub uptime_s: u64,
}

impl App {
    /// A new state starting from `first`.
    #[must_use]
    pub fn new(first: Snapshot, host: String, paging: String) -> Self {
        let view = if first.vmexit_available {
            View::Exits
        } else {
            // Nothing can show up in the exit view on this backend.
            View::Events
        };
        Self {
            baseline: first.clone(),
            shown: first.since(&first),
            latest: first,
            previous: None,
            history: BTreeMap::new(),
            view,
            sort: SortBy::Count,
            selected: 0,
            reason_filter: String::new(),
            pid_filter: String::new(),
            names: BTreeMap::new(),
            input: Input::None,
            paused: false,
            help: false,
            quit: false,
            host,
            paging,
            uptime_s: 0,
        }
    }

    /// Applies one action.
    pub fn update(&mut self, action: Action) {
        match action {
            Action::Data(snapshot) => {
                if self.paused {
                    return;
                }
                let snapshot = *snapshot;
                let interval = snapshot.since(&self.latest);
                for row in interval.reason_rows() {
                    let _ = self.history.entry(row.name.clone()).or_default();
                }
                for (name, points) in &mut self.history {
                    let count = interval
                        .reason_rows()
                        .filter(|r| &r.name == name)
                        .map(|r| r.count)
                        .sum();
                    points.push_back(per_second(count, interval.interval_ns));
                    while points.len() > HISTORY {
                        points.pop_front();
                    }
                }
                self.previous = Some(std::mem::replace(&mut self.latest, snapshot));
                self.shown = self.latest.since(&self.baseline);
            }
            Action::ProcessNames(names) => self.names.extend(names),
            Action::Quit => self.quit = true,
            Action::Show(view) => self.view = view,
            Action::NextView => {
                let i = View::ALL.iter().position(|v| *v == self.view).unwrap_or(0);
                self.view = View::ALL[(i + 1) % View::ALL.len()];
            }
            Action::NextSort => self.sort = self.sort.next(),
            Action::Select(delta) => {
                let rows = self.exit_rows().len();
                let max = rows.saturating_sub(1);
                let next = i64::try_from(self.selected).unwrap_or(0) + i64::from(delta);
                self.selected = usize::try_from(next.max(0)).unwrap_or(0).min(max);
            }
            Action::StartInput(input) => {
                match input {
                    Input::Reason => self.reason_filter.clear(),
                    Input::Pid => self.pid_filter.clear(),
                    Input::None => {}
                }
                self.input = input;
            }
            Action::Type(c) => match self.input {
                Input::Reason => self.reason_filter.push(c),
                Input::Pid => self.pid_filter.push(c),
                Input::None => {}
            },
            Action::Backspace => {
                let _ = match self.input {
                    Input::Reason => self.reason_filter.pop(),
                    Input::Pid => self.pid_filter.pop(),
                    Input::None => None,
                };
            }
            Action::EndInput => self.input = Input::None,
            Action::CancelInput => {
                match self.input {
                    Input::Reason => self.reason_filter.clear(),
                    Input::Pid => self.pid_filter.clear(),
                    Input::None => {}
                }
                self.input = Input::None;
            }
            Action::Reset => {
                self.baseline = self.latest.clone();
                self.shown = self.latest.since(&self.baseline);
                self.previous = None;
                self.history.clear();
                self.selected = 0;
            }
            Action::TogglePause => self.paused = !self.paused,
            Action::ToggleHelp => self.help = !self.help,
        }
    }

    /// What happened since the baseline.
    #[must_use]
    pub fn shown(&self) -> &Snapshot {
        &self.shown
    }

    /// What happened in the last interval.
    #[must_use]
    pub fn last_interval(&self) -> Option<Snapshot> {
        self.previous.as_ref().map(|p| self.latest.since(p))
    }

    /// Exits per second of `name` in the last interval.
    #[must_use]
    pub fn rate(&self, name: &str) -> u64 {
        self.history
            .get(name)
            .and_then(|h| h.back().copied())
            .unwrap_or(0)
    }

    /// Total exits per second in the last interval.
    #[must_use]
    pub fn total_rate(&self) -> u64 {
        self.last_interval()
            .map_or(0, |i| per_second(i.total_exits(), i.interval_ns))
    }

    /// Whether `name` passes the reason filter.
    fn reason_matches(&self, name: &str) -> bool {
        if self.reason_filter.is_empty() {
            return true;
        }
        match regex_lite::Regex::new(&self.reason_filter) {
            Ok(re) => re.is_match(name),
            Err(_) => name.contains(self.reason_filter.as_str()),
        }
    }

    /// Whether the reason filter is an invalid regular expression (it is
    /// then used as a substring).
    #[must_use]
    pub fn reason_filter_invalid(&self) -> bool {
        regex_lite::Regex::new(&self.reason_filter).is_err()
    }

    /// Whether the VM of `pid` passes the VM filter.
    fn vm_matches(&self, pid: Option<u32>) -> bool {
        if self.pid_filter.is_empty() {
            return true;
        }
        let Some(pid) = pid else { return false };
        match self.pid_filter.parse::<u32>() {
            Ok(wanted) => pid == wanted,
            Err(_) => self
                .names
                .get(&pid)
                .is_some_and(|c| c.contains(self.pid_filter.as_str())),
        }
    }

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
            .shown
            .exits
            .iter()
            .filter(|r| r.pid.is_some() && self.vm_matches(r.pid))
            .filter(|r| self.reason_matches(&r.name))
            .collect();
        rows.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then((a.pid, a.vcpu).cmp(&(b.pid, b.vcpu)))
        });
        rows
    }

    /// The selected exit row.
    #[must_use]
    pub fn selected_row(&self) -> Option<ExitRow> {
        self.exit_rows().into_iter().nth(self.selected)
    }
}

/// `count` per second over `interval_ns`.
#[must_use]
pub fn per_second(count: u64, interval_ns: u64) -> u64 {
    if interval_ns == 0 {
        return 0;
    }
    u64::try_from(u128::from(count) * 1_000_000_000 / u128::from(interval_ns)).unwrap_or(u64::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use exitprof_common::Isa;

    use crate::model::Backend;

    /// A cumulative snapshot at `t_s` seconds with `(name, code, count)`.
    pub fn snap(t_s: u64, rows: &[(&str, u32, u64)]) -> Snapshot {
        let mut s = Snapshot::empty(Backend::Svm);
        s.interval_ns = t_s * 1_000_000_000;
        s.exits = rows
            .iter()
            .map(|&(name, reason, count)| ExitRow {
                isa: Isa::Svm,
                reason,
                name: name.into(),
                count,
                timed: count,
                total_ns: count * 1_000,
                min_ns: 500,
                max_ns: 1_000 + u64::from(reason),
                hist_log2_ns: vec![0; 31],
                ..ExitRow::default()
            })
            .collect();
        s
    }

    fn app() -> App {
        let mut app = App::new(snap(0, &[]), "host".into(), "NPT on".into());
        app.update(Action::Data(Box::new(snap(
            1,
            &[("cpuid", 0x72, 100), ("hlt", 0x78, 10), ("io", 0x7b, 50)],
        ))));
        app.update(Action::Data(Box::new(snap(
            2,
            &[("cpuid", 0x72, 300), ("hlt", 0x78, 20), ("io", 0x7b, 60)],
        ))));
        app
    }

    fn names(rows: &[ExitRow]) -> Vec<&str> {
        rows.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn rates_and_sorting() {
        let mut app = app();
        assert_eq!(app.rate("cpuid"), 200);
        assert_eq!(app.rate("io"), 10);
        assert_eq!(app.total_rate(), 220);
        assert_eq!(names(&app.exit_rows()), ["cpuid", "io", "hlt"]);
        app.update(Action::NextSort); // rate
        assert_eq!(app.sort, SortBy::Rate);
        assert_eq!(names(&app.exit_rows()), ["cpuid", "hlt", "io"]);
        for _ in 0..4 {
            app.update(Action::NextSort);
        }
        assert_eq!(app.sort, SortBy::Name);
        assert_eq!(names(&app.exit_rows()), ["cpuid", "hlt", "io"]);
        assert_eq!(app.history["cpuid"], [100, 200]);
    }

    #[test]
    fn filter_by_reason_and_pid_input() {
        let mut app = app();
        app.update(Action::StartInput(Input::Reason));
        for c in "hl".chars() {
            app.update(Action::Type(c));
        }
        app.update(Action::EndInput);
        assert_eq!(names(&app.exit_rows()), ["hlt"]);
        // A regular expression.
        app.update(Action::StartInput(Input::Reason));
        for c in "^(cpu|io)".chars() {
            app.update(Action::Type(c));
        }
        app.update(Action::EndInput);
        assert_eq!(names(&app.exit_rows()), ["cpuid", "io"]);
        // An invalid one is a substring.
        app.update(Action::StartInput(Input::Reason));
        for c in "hl(".chars() {
            app.update(Action::Type(c));
        }
        app.update(Action::Backspace);
        assert!(!app.reason_filter_invalid());
        app.update(Action::Type('('));
        assert!(app.reason_filter_invalid());
        assert!(app.exit_rows().is_empty(), "no name contains \"hl(\"");
        app.update(Action::Backspace);
        app.update(Action::EndInput);
        app.update(Action::StartInput(Input::Pid));
        for c in "4x2".chars() {
            app.update(Action::Type(c));
        }
        app.update(Action::Backspace);
        assert_eq!(app.pid_filter, "4x");
        app.update(Action::CancelInput);
        assert_eq!((app.pid_filter.as_str(), app.input), ("", Input::None));
        assert_eq!(names(&app.exit_rows()), ["hlt"], "the reason filter stays");
    }

    /// `(pid, vcpu, name, code, count)` breakdown rows added to `s`.
    fn with_breakdown(mut s: Snapshot, rows: &[(u32, u32, &str, u32, u64)]) -> Snapshot {
        for &(pid, vcpu, name, reason, count) in rows {
            s.exits.push(ExitRow {
                isa: Isa::Svm,
                reason,
                name: name.into(),
                pid: Some(pid),
                vcpu: Some(vcpu),
                count,
                timed: count,
                total_ns: count * 1_000,
                max_ns: 2_000,
                ..ExitRow::default()
            });
        }
        s
    }

    #[test]
    fn vm_filter_by_pid_or_name() {
        let mut app = App::new(snap(0, &[]), "h".into(), "NPT on".into());
        let s = with_breakdown(
            snap(1, &[("cpuid", 0x72, 30), ("hlt", 0x78, 4)]),
            &[
                (10, 0, "cpuid", 0x72, 10),
                (10, 1, "cpuid", 0x72, 5),
                (20, 0, "cpuid", 0x72, 15),
                (20, 0, "hlt", 0x78, 4),
            ],
        );
        app.update(Action::Data(Box::new(s)));
        app.update(Action::ProcessNames(BTreeMap::from([
            (10, "qemu-web".into()),
            (20, "qemu-db".into()),
        ])));
        let typed = |app: &mut App, text: &str| {
            app.update(Action::StartInput(Input::Pid));
            for c in text.chars() {
                app.update(Action::Type(c));
            }
            app.update(Action::EndInput);
        };
        typed(&mut app, "10");
        let rows = app.exit_rows();
        assert_eq!(names(&rows), ["cpuid"]);
        assert_eq!(
            (rows[0].count, rows[0].pid),
            (15, None),
            "vCPUs 0 and 1 of pid 10"
        );
        assert_eq!(app.vcpu_rows().len(), 2);
        typed(&mut app, "db");
        assert_eq!(names(&app.exit_rows()), ["cpuid", "hlt"]);
        assert_eq!(app.exit_rows()[0].count, 15);
        typed(&mut app, "nope");
        assert!(app.exit_rows().is_empty());
        assert!(app.vcpu_rows().is_empty());
    }

    #[test]
    fn reset_and_pause() {
        let mut app = app();
        app.update(Action::Reset);
        assert!(app.exit_rows().is_empty(), "nothing since the new baseline");
        app.update(Action::TogglePause);
        app.update(Action::Data(Box::new(snap(3, &[("cpuid", 0x72, 400)]))));
        assert!(app.exit_rows().is_empty(), "paused: data ignored");
        app.update(Action::TogglePause);
        app.update(Action::Data(Box::new(snap(3, &[("cpuid", 0x72, 400)]))));
        assert_eq!(app.exit_rows()[0].count, 100);
    }

    #[test]
    fn selection_stays_in_range_and_views_cycle() {
        let mut app = app();
        app.update(Action::Select(10));
        assert_eq!(app.selected, 2);
        assert_eq!(app.selected_row().unwrap().name, "hlt");
        app.update(Action::Select(-5));
        assert_eq!(app.selected, 0);
        assert_eq!(app.view, View::Exits);
        app.update(Action::NextView);
        assert_eq!(app.view, View::Events);
        app.update(Action::Show(View::Histogram));
        app.update(Action::NextView);
        assert_eq!(app.view, View::Exits);
        app.update(Action::Quit);
        assert!(app.quit);
    }
}
