//! Drawing the events view (view 2) and the sites view (view 5), and the
//! sparkline every view's TREND column uses. No I/O.
use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style, Stylize as _},
    text::Line,
    widgets::{Paragraph, Row, Table, Widget},
};

use super::app::{App, HISTORY, site_key};
use crate::present::{duration, percent};

const SPARK: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The rates as a text sparkline scaled to their maximum.
#[must_use]
pub fn sparkline(points: impl Iterator<Item = u64> + Clone) -> String {
    let max = points.clone().max().unwrap_or(0);
    points
        .map(|p| match (p * 7).checked_div(max) {
            None => ' ',
            Some(i) => SPARK[usize::try_from(i).unwrap_or(7).min(7)],
        })
        .collect()
}

/// The TREND column's width.
fn trend_width() -> Constraint {
    Constraint::Length(u16::try_from(HISTORY).unwrap_or(16))
}

impl App {
    /// The trend of history key `key`.
    fn trend(&self, key: &str) -> String {
        self.history
            .get(key)
            .map(|h| sparkline(h.iter().copied()))
            .unwrap_or_default()
    }

    /// View 2: each kind's events, under its exit reason where exits are
    /// seen, with count, rate, share of the group, round-trip times
    /// (userspace exits) and trend.
    pub(super) fn events(&self, area: Rect, buf: &mut Buffer) {
        let [table, footer] =
            Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(area);
        let mut rows = Vec::new();
        for group in self.event_groups() {
            let total = group.count();
            let heading = match &group.parent {
                Some(p) => Row::new(vec![
                    format!("{} › {}", p.label, group.title),
                    p.count.to_string(),
                    p.rate.rounded().to_string(),
                ]),
                None => Row::new(vec![group.title.to_owned()]),
            };
            rows.push(heading.style(Style::new().add_modifier(Modifier::BOLD)));
            for line in &group.lines {
                let (avg, max) = match line.roundtrips {
                    Some(_) => (duration(line.avg_ns()), duration(line.max_ns())),
                    None => (String::new(), String::new()),
                };
                rows.push(Row::new(vec![
                    format!("  {}", line.label),
                    line.count.to_string(),
                    line.rate.rounded().to_string(),
                    percent(line.count, total),
                    avg,
                    max,
                    self.trend(&line.key),
                ]));
            }
            if rows.len() >= usize::from(area.height) {
                break; // Only what fits is formatted.
            }
        }
        if rows.is_empty() {
            Paragraph::new("no exit-handler events yet").render(table, buf);
        } else {
            let header = Row::new(vec![
                "EVENT", "COUNT", "RATE/s", "SHARE", "AVG RT", "MAX RT", "TREND",
            ])
            .style(Style::new().add_modifier(Modifier::BOLD));
            let widths = [
                Constraint::Min(30),
                Constraint::Length(9),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(10),
                Constraint::Length(10),
                trend_width(),
            ];
            Widget::render(Table::new(rows, widths).header(header), table, buf);
        }
        Line::from(format!("dropped: {}", self.shown().dropped)).render(footer, buf);
    }

    /// View 5: the exit sites of the selected reason.
    pub(super) fn sites(&self, area: Rect, buf: &mut Buffer) {
        if !self.sites_counted {
            Paragraph::new(
                "exit sites are not counted: start top with --sites (one more map update per exit; see BENCHMARKS.md)",
            )
            .render(area, buf);
            return;
        }
        let (Some(reason), Some(sites)) = (self.selected_row(), self.site_rows()) else {
            Paragraph::new("select a reason in view 1 (↑/↓): its exit sites show here")
                .render(area, buf);
            return;
        };
        let total: u64 = sites.iter().map(|s| s.count).sum();
        let [title, table] =
            Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(area);
        Line::from(format!(
            "{} ({:#x}): {total} exits at {} guest RIPs",
            reason.name,
            reason.reason,
            sites.len()
        ))
        .bold()
        .render(title, buf);
        let rows: Vec<Row> = sites
            .iter()
            .take(usize::from(table.height))
            .map(|s| {
                Row::new(vec![
                    format!("{:#018x}", s.rip),
                    s.symbol.clone().unwrap_or_default(),
                    s.vm.clone()
                        .or_else(|| self.names.get(&s.pid).cloned())
                        .unwrap_or_default(),
                    s.count.to_string(),
                    s.rate_per_s.rounded().to_string(),
                    percent(s.count, total),
                    duration(s.total_ns),
                    duration(s.avg_ns()),
                    self.trend(&site_key(s)),
                ])
            })
            .collect();
        if rows.is_empty() {
            Paragraph::new("no sites for this reason yet").render(table, buf);
            return;
        }
        let header = Row::new(vec![
            "GUEST RIP",
            "SYMBOL",
            "VM",
            "COUNT",
            "RATE/s",
            "COUNT%",
            "TIME",
            "AVG",
            "TREND",
        ])
        .style(Style::new().add_modifier(Modifier::BOLD));
        let widths = [
            Constraint::Length(18),
            Constraint::Min(20),
            Constraint::Length(12),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(10),
            trend_width(),
        ];
        Widget::render(Table::new(rows, widths).header(header), table, buf);
    }
}

#[cfg(test)]
mod tests {
    use exitprof_common::Isa;

    use super::*;
    use crate::{
        model::{Backend, CpuidRow, PerSecond, PioRow, SiteRow, Snapshot},
        tui::{
            app::{
                Action, View,
                tests::{snap, with_breakdown},
            },
            ui::tests::lines,
        },
    };

    /// A PVM host: CPUID and port events of the workload, no exits.
    fn pvm(t_s: u64, cpuids: u64, outs: u64) -> Snapshot {
        let mut s = Snapshot::empty(Backend::Pvm);
        s.interval_ns = t_s * 1_000_000_000;
        s.events.cpuid = vec![CpuidRow {
            leaf: 0x4242,
            subleaf: Some(0),
            count: cpuids,
            ..CpuidRow::default()
        }];
        s.events.pio = vec![PioRow {
            port: 0xe9,
            write: true,
            size: 1,
            count: outs,
            ..PioRow::default()
        }];
        s
    }

    /// PVM: the header says events/s and no exit rate; the events view has
    /// rates and trends.
    #[test]
    fn pvm_header_and_events_view_at_100_columns() {
        let mut app = App::new(pvm(0, 0, 0), "h".into(), "n/a".into());
        for (t, c, o) in [(1, 1_000, 10), (2, 3_000, 20), (3, 4_000, 40)] {
            app.update(Action::Data(Box::new(pvm(t, c, o))));
        }
        app.uptime_s = 3;
        let l = lines(&app, 100, 14);
        assert_eq!(
            l[..2],
            [
                "exitprof top | backend pvm (classic tracepoints) | paging n/a | host h | up 00:00:03 | 1020 events/s",
                " 1 exits  2 events  3 vcpus  4 histogram  5 sites  sort: count",
            ]
        );
        assert_eq!(
            l[5..12],
            [
                "EVENT                             COUNT     RATE/s   SHARE    AVG RT     MAX RT     TREND",
                "CPUID LEAF/SUBLEAF",
                "  0x00004242/0x0                  4000      1000     100.00%                        ▄█▄",
                "I/O PORT",
                "  0x00e9 out 1B                   40        20       100.00%                        ▄▄█",
                "",
                "",
            ]
        );
        assert_eq!(l[12], "dropped: 0");
    }

    /// SVM: the events drill down under their exit reason.
    #[test]
    fn svm_events_view_drills_down_under_the_exit_reason() {
        let mut app = App::new(snap(0, &[]), "h".into(), "NPT on".into());
        for (t, n) in [(1, 100), (2, 300)] {
            let mut s = snap(t, &[("cpuid", 0x72, n)]);
            s.events.cpuid = vec![CpuidRow {
                leaf: 0,
                subleaf: Some(0),
                count: n,
                ..CpuidRow::default()
            }];
            app.update(Action::Data(Box::new(s)));
        }
        app.update(Action::Show(View::Events));
        let l = lines(&app, 100, 8);
        assert_eq!(
            l[2..5],
            [
                "EVENT                             COUNT     RATE/s   SHARE    AVG RT     MAX RT     TREND",
                "cpuid (0x72) › CPUID LEAF/SUBLEAF 300       200",
                "  0x00000000/0x0                  300       200      100.00%                        ▄█",
            ]
        );
    }

    /// The vCPU view names each VM and has rates.
    #[test]
    fn vcpu_view_shows_vm_names_and_rates() {
        let mut app = App::new(snap(0, &[]), "h".into(), "NPT on".into());
        app.update(Action::Data(Box::new(with_breakdown(
            snap(1, &[("cpuid", 0x72, 30)]),
            &[(10, 0, "cpuid", 0x72, 10), (20, 1, "cpuid", 0x72, 20)],
        ))));
        app.update(Action::Show(View::Vcpus));
        let l = lines(&app, 120, 6);
        assert_eq!(
            l[2..5],
            [
                "PID      VM               VCPU  REASON              COUNT     RATE/s   TIME       AVG        MAX        TREND",
                "20       qemu-db          1     cpuid               20        20       20.00 us   1.00 us    2.00 us    █",
                "10       qemu-web         0     cpuid               10        10       10.00 us   1.00 us    2.00 us    █",
            ]
        );
    }

    fn site(rip: u64, count: u64, symbol: Option<&str>) -> SiteRow {
        SiteRow {
            isa: Isa::Svm,
            reason: 0x72,
            name: "cpuid".into(),
            pid: 10,
            vm: Some("web1".into()),
            rip,
            symbol: symbol.map(Into::into),
            count,
            timed: count,
            total_ns: count * 2_000,
            max_ns: 9_000,
            rate_per_s: PerSecond::default(),
        }
    }

    /// View 5: the sites of the selected reason, symbolized, by count.
    #[test]
    fn sites_view_at_120_columns() {
        let mut app = App::new(snap(0, &[]), "h".into(), "NPT on".into());
        app.sites_counted = true;
        let mut s = snap(1, &[("cpuid", 0x72, 40)]);
        s.sites = vec![
            site(0xffff_ffff_8103_6a32, 30, Some("native_cpuid+0x12")),
            site(0x40_1000, 10, None),
        ];
        app.update(Action::Data(Box::new(s)));
        app.update(Action::Show(View::Sites));
        let l = lines(&app, 120, 7);
        assert_eq!(
            l[2..6],
            [
                "cpuid (0x72): 40 exits at 2 guest RIPs",
                "GUEST RIP          SYMBOL                VM           COUNT     RATE/s   COUNT%   TIME       AVG        TREND",
                "0xffffffff81036a32 native_cpuid+0x12     web1         30        30       75.00%   60.00 us   2.00 us    █",
                "0x0000000000401000                       web1         10        10       25.00%   20.00 us   2.00 us    █",
            ]
        );
        app.sites_counted = false;
        assert!(
            lines(&app, 120, 7)[2]
                .starts_with("exit sites are not counted: start top with --sites")
        );
    }

    #[test]
    fn sparkline_scales_to_the_maximum() {
        assert_eq!(sparkline([0, 1, 7, 14].into_iter()), "▁▁▄█");
        assert_eq!(sparkline([0, 0].into_iter()), "  ");
    }
}
