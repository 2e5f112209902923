//! The state of `exitprof top` and the one place it changes (`update`).
//! No terminal, no maps: snapshots come in as `Action::Data`. The rows of
//! the events and sites views are in `lines.rs`.
use std::collections::{BTreeMap, VecDeque};

use crate::{
    model::{ExitRow, SiteRow, Snapshot},
    present::events::event_groups,
};

/// Points of rate history kept per key (the sparkline's width).
pub const HISTORY: usize = 16;

/// The views, in key order 1..=5.
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
    /// Exit sites (guest RIPs) of the selected reason.
    Sites,
}

impl View {
    /// All views, in order.
    pub const ALL: [Self; 5] = [
        Self::Exits,
        Self::Events,
        Self::Vcpus,
        Self::Histogram,
        Self::Sites,
    ];

    /// Tab title.
    #[must_use]
    pub const fn title(self) -> &'static str {
        match self {
            Self::Exits => "1 exits",
            Self::Events => "2 events",
            Self::Vcpus => "3 vcpus",
            Self::Histogram => "4 histogram",
            Self::Sites => "5 sites",
        }
    }
}

/// Sort keys of every table (exits, events, sites), cycled with `s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    /// Count since the baseline.
    Count,
    /// Per second in the last interval.
    Rate,
    /// Time (in exits; for userspace exits, in the VMM).
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
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent switches of the view (pause, help, quit, sites)"
)]
pub struct App {
    /// Latest cumulative snapshot.
    pub latest: Snapshot,
    /// Counters are shown relative to this (reset with `r`).
    pub baseline: Snapshot,
    /// `latest` since `baseline`, computed once per snapshot (drawing
    /// reads it several times per frame).
    shown: Snapshot,
    /// What happened between the snapshot before `latest` and `latest`
    /// (rates are taken from it), computed once per snapshot.
    interval: Option<Snapshot>,
    /// Per second, oldest first: of exits by reason name, of handler
    /// events by `EventLine::key`, of per-vCPU rows by [`vcpu_key`], of
    /// sites by [`site_key`].
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
    /// the VMM's command line, or its comm), as the snapshots' rows carry
    /// them (drawing does no I/O).
    pub names: BTreeMap<u32, String>,
    /// Whether exit sites are counted (`top --sites`).
    pub sites_counted: bool,
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
            interval: None,
            history: BTreeMap::new(),
            view,
            sort: SortBy::Count,
            selected: 0,
            reason_filter: String::new(),
            pid_filter: String::new(),
            names: BTreeMap::new(),
            sites_counted: false,
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
                self.record_history(&interval);
                for (pid, vm) in snapshot
                    .exits
                    .iter()
                    .filter_map(|r| r.pid.zip(r.vm.clone()))
                    .chain(
                        snapshot
                            .sites
                            .iter()
                            .filter_map(|s| Some((s.pid, s.vm.clone()?))),
                    )
                {
                    self.names.insert(pid, vm);
                }
                self.latest = snapshot;
                self.interval = Some(interval);
                self.shown = self.latest.since(&self.baseline);
            }
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
                self.interval = None;
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
    pub fn last_interval(&self) -> Option<&Snapshot> {
        self.interval.as_ref()
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

    /// Handler events per second in the last interval.
    #[must_use]
    pub fn events_rate(&self) -> u64 {
        self.last_interval().map_or(0, |i| i.events_per_s.rounded())
    }

    /// Adds the last interval's rates to the history: exits by reason
    /// name, handler events by line key, sites by [`site_key`]. Keys idle
    /// for the whole history are forgotten (a big host's MMIO addresses
    /// come and go).
    fn record_history(&mut self, interval: &Snapshot) {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for row in interval.reason_rows() {
            *counts.entry(row.name.clone()).or_default() += row.count;
        }
        for group in event_groups(interval) {
            for line in group.lines {
                counts.insert(line.key, line.count);
            }
        }
        for site in &interval.sites {
            counts.insert(site_key(site), site.count);
        }
        for row in interval.exits.iter().filter(|r| r.pid.is_some()) {
            counts.insert(vcpu_key(row), row.count);
        }
        for key in counts.keys() {
            if !self.history.contains_key(key) {
                self.history.insert(key.clone(), VecDeque::new());
            }
        }
        for (key, points) in &mut self.history {
            let count = counts.get(key).copied().unwrap_or(0);
            points.push_back(per_second(count, interval.interval_ns));
            while points.len() > HISTORY {
                points.pop_front();
            }
        }
        self.history
            .retain(|_, points| points.len() < HISTORY || points.iter().any(|&p| p > 0));
    }

    /// Whether `name` passes the reason filter.
    pub(super) fn reason_matches(&self, name: &str) -> bool {
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

    /// Whether the VM of `pid` passes the VM filter: its pid, or a part
    /// of its name.
    pub(super) fn vm_matches(&self, pid: Option<u32>) -> bool {
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

    /// The selected exit row.
    #[must_use]
    pub fn selected_row(&self) -> Option<ExitRow> {
        self.exit_rows().into_iter().nth(self.selected)
    }
}

/// The history key of a per-vCPU row.
#[must_use]
pub fn vcpu_key(row: &ExitRow) -> String {
    format!(
        "vcpu {} {} {}",
        row.pid.unwrap_or_default(),
        row.vcpu.unwrap_or_default(),
        row.name
    )
}

/// The history key of a site.
#[must_use]
pub fn site_key(site: &SiteRow) -> String {
    format!(
        "site {} {:?} {} {:#x}",
        site.pid, site.isa, site.reason, site.rip
    )
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

    /// `(pid, vcpu, name, code, count)` breakdown rows added to `s`, of
    /// the VMs `web` (pid 10) and `db` (pid 20).
    pub fn with_breakdown(mut s: Snapshot, rows: &[(u32, u32, &str, u32, u64)]) -> Snapshot {
        for &(pid, vcpu, name, reason, count) in rows {
            s.exits.push(ExitRow {
                isa: Isa::Svm,
                reason,
                name: name.into(),
                pid: Some(pid),
                vcpu: Some(vcpu),
                vm: Some(if pid == 10 { "qemu-web" } else { "qemu-db" }.into()),
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
        assert_eq!(app.names[&20], "qemu-db", "names come with the rows");
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
        assert_eq!(app.view, View::Sites);
        app.update(Action::NextView);
        assert_eq!(app.view, View::Exits);
        app.update(Action::Quit);
        assert!(app.quit);
    }
}
