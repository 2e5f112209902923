//! Drawing: `impl Widget for &App`. No I/O here; everything shown comes
//! from the state.
use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style, Stylize as _},
    text::{Line, Span},
    widgets::{Block, Borders, Clear, Paragraph, Row, Table, Widget, Wrap},
};

use super::{
    app::{App, Input, View, vcpu_key},
    tables::sparkline,
};
use crate::present::{duration, exit_columns};

impl Widget for &App {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let note = self.latest.backend.vmexit_note();
        let banner_height = if note.is_some() { 3 } else { 0 };
        let [header, tabs, banner, body, footer] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Length(banner_height),
            Constraint::Min(1),
            Constraint::Length(1),
        ])
        .areas(area);
        self.header(header, buf);
        self.tabs(tabs, buf);
        if let Some(note) = note {
            Paragraph::new(format!("note: {note}"))
                .wrap(Wrap { trim: true })
                .style(Style::new().yellow())
                .render(banner, buf);
        }
        match self.view {
            View::Exits => self.exits(body, buf),
            View::Events => self.events(body, buf),
            View::Vcpus => self.vcpus(body, buf),
            View::Histogram => self.histogram(body, buf),
            View::Sites => self.sites(body, buf),
        }
        self.footer(footer, buf);
        if self.help {
            App::help_box(area, buf);
        }
    }
}

impl App {
    fn header(&self, area: Rect, buf: &mut Buffer) {
        let up = self.uptime_s;
        // Where kvm_exit cannot fire (PVM), no exit rate: a zero there
        // would say that nothing exits.
        let exits = if self.latest.vmexit_available {
            format!("{} exits/s | ", self.total_rate())
        } else {
            String::new()
        };
        let mut text = format!(
            "exitprof top | backend {} ({} tracepoints) | paging {} | host {} | up {:02}:{:02}:{:02} | {exits}{} events/s",
            self.latest.backend,
            self.latest.attach_mode,
            self.paging,
            self.host,
            up / 3600,
            up / 60 % 60,
            up % 60,
            self.events_rate()
        );
        if self.paused {
            text.push_str(" | PAUSED");
        }
        Line::from(text).bold().render(area, buf);
    }

    fn tabs(&self, area: Rect, buf: &mut Buffer) {
        let mut spans = Vec::new();
        for view in View::ALL {
            let title = format!(" {} ", view.title());
            if view == self.view {
                spans.push(Span::styled(title, Style::new().reversed()));
            } else {
                spans.push(Span::raw(title));
            }
        }
        spans.push(Span::raw(format!(" sort: {}", self.sort.label())));
        if !self.reason_filter.is_empty() || self.input == Input::Reason {
            let how = if self.reason_filter_invalid() {
                " (no regex: substring)"
            } else {
                ""
            };
            spans.push(Span::raw(format!(" | reason: {}{how}", self.reason_filter)));
        }
        if !self.pid_filter.is_empty() || self.input == Input::Pid {
            spans.push(Span::raw(format!(" | vm: {}", self.pid_filter)));
        }
        Line::from(spans).render(area, buf);
    }

    fn exits(&self, area: Rect, buf: &mut Buffer) {
        let shown = self.shown();
        let total = shown.total_exits();
        let total_ns = shown.total_exit_ns();
        let rows: Vec<Row> = self
            .exit_rows()
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let trend = self
                    .history
                    .get(&r.name)
                    .map(|h| sparkline(h.iter().copied()))
                    .unwrap_or_default();
                let mut cells = vec![
                    r.name.clone(),
                    format!("{:#x}", r.reason),
                    r.count.to_string(),
                    self.rate(&r.name).to_string(),
                ];
                cells.extend(exit_columns(r, total, total_ns));
                cells.push(trend);
                let row = Row::new(cells);
                if i == self.selected {
                    row.style(Style::new().reversed())
                } else {
                    row
                }
            })
            .collect();
        if rows.is_empty() {
            let text = if self.latest.vmexit_available {
                "no VM exits yet".to_owned()
            } else {
                format!(
                    "no VM-exit rows on this backend ({}): press 2 for the exit-handler events",
                    self.latest.backend
                )
            };
            Paragraph::new(text).render(area, buf);
            return;
        }
        let header = Row::new(vec![
            "REASON", "CODE", "COUNT", "RATE/s", "COUNT%", "TIME", "TIME%", "AVG", "MIN", "MAX",
            "TREND",
        ])
        .style(Style::new().add_modifier(Modifier::BOLD));
        let widths = [
            Constraint::Min(12),
            Constraint::Length(6),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(10),
            Constraint::Length(7),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(u16::try_from(super::app::HISTORY).unwrap_or(16)),
        ];
        Widget::render(Table::new(rows, widths).header(header), area, buf);
    }

    fn vcpus(&self, area: Rect, buf: &mut Buffer) {
        // Only the rows that fit are formatted (a big host has thousands).
        let rows: Vec<Row> = self
            .vcpu_rows()
            .iter()
            .take(usize::from(area.height))
            .map(|r| {
                let pid = r.pid.unwrap_or_default();
                let key = vcpu_key(r);
                Row::new(vec![
                    pid.to_string(),
                    r.vm.clone()
                        .or_else(|| self.names.get(&pid).cloned())
                        .unwrap_or_default(),
                    r.vcpu.unwrap_or_default().to_string(),
                    r.name.clone(),
                    r.count.to_string(),
                    self.rate(&key).to_string(),
                    duration(r.total_ns),
                    duration(r.avg_ns()),
                    duration(r.max_ns),
                    self.history
                        .get(&key)
                        .map(|h| sparkline(h.iter().copied()))
                        .unwrap_or_default(),
                ])
            })
            .collect();
        if rows.is_empty() {
            Paragraph::new("no per-vCPU exits yet (VM-exit rows only: kvm_exit must fire)")
                .render(area, buf);
            return;
        }
        let header = Row::new(vec![
            "PID", "VM", "VCPU", "REASON", "COUNT", "RATE/s", "TIME", "AVG", "MAX", "TREND",
        ])
        .style(Style::new().add_modifier(Modifier::BOLD));
        let widths = [
            Constraint::Length(8),
            Constraint::Length(16),
            Constraint::Length(5),
            Constraint::Min(12),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(u16::try_from(super::app::HISTORY).unwrap_or(16)),
        ];
        Widget::render(Table::new(rows, widths).header(header), area, buf);
    }

    fn histogram(&self, area: Rect, buf: &mut Buffer) {
        let Some(row) = self.selected_row() else {
            Paragraph::new("select a reason in view 1 (arrow keys) to see its latency histogram")
                .render(area, buf);
            return;
        };
        let max = row.hist_log2_ns.iter().copied().max().unwrap_or(0);
        let bar_width = u64::from(area.width.saturating_sub(40));
        let mut lines = vec![
            Line::from(format!(
                "{} ({:#x}): {} timed exits, avg {}",
                row.name,
                row.reason,
                row.timed,
                duration(row.avg_ns())
            ))
            .bold(),
        ];
        for (i, &n) in row.hist_log2_ns.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let len = (n * bar_width).checked_div(max).unwrap_or(0);
            lines.push(Line::from(format!(
                "{:>10} .. {:<10} {:>9} {}",
                duration(1 << i),
                duration(1 << (i + 1)),
                n,
                "█".repeat(usize::try_from(len.max(1)).unwrap_or(1))
            )));
        }
        Paragraph::new(lines).render(area, buf);
    }

    fn footer(&self, area: Rect, buf: &mut Buffer) {
        let text = match self.input {
            Input::Reason => "type a reason regex, Enter to apply, Esc to clear".to_owned(),
            Input::Pid => "type a VM's pid or name, Enter to apply, Esc to clear".to_owned(),
            Input::None => {
                "q quit  ? help  1-5/Tab views  s sort  / reason  v vm  r reset  space pause  ↑↓ select".to_owned()
            }
        };
        Line::from(text).reversed().render(area, buf);
    }

    fn help_box(area: Rect, buf: &mut Buffer) {
        let lines = [
            "q, Ctrl-C   quit (the terminal is restored)",
            "?           this help",
            "1 2 3 4 5   exits, events, vcpus, histogram, sites; Tab: next view",
            "s           sort every table: count, rate, time, avg, max, name",
            "/           filter reasons by regex (Enter applies, Esc clears)",
            "v, p        show one VM: its pid or name",
            "r           reset: count from now on",
            "space       pause/resume",
            "↑ ↓         select a reason (its histogram: 4, its sites: 5)",
        ];
        let width = 72.min(area.width);
        let height = (u16::try_from(lines.len()).unwrap_or(9) + 2).min(area.height);
        let rect = Rect {
            x: area.x + (area.width - width) / 2,
            y: area.y + (area.height - height) / 2,
            width,
            height,
        };
        Clear.render(rect, buf);
        Paragraph::new(lines.iter().map(|l| Line::from(*l)).collect::<Vec<_>>())
            .block(Block::new().borders(Borders::ALL).title(" keys "))
            .render(rect, buf);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::tui::app::{Action, tests::snap};

    fn app() -> App {
        let mut app = App::new(snap(0, &[]), "h".into(), "NPT on".into());
        app.update(Action::Data(Box::new(snap(
            1,
            &[("cpuid", 0x72, 100), ("hlt", 0x78, 10)],
        ))));
        app.update(Action::Data(Box::new(snap(
            2,
            &[("cpuid", 0x72, 300), ("hlt", 0x78, 20)],
        ))));
        app.uptime_s = 3723;
        app
    }

    /// The screen `app` draws at `width` x `height`, line by line.
    pub fn lines(app: &App, width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| f.render_widget(app, f.area())).unwrap();
        let buf = terminal.backend().buffer().clone();
        (0..height)
            .map(|y| {
                (0..width)
                    .map(|x| buf[(x, y)].symbol().to_owned())
                    .collect::<String>()
                    .trim_end()
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn exit_view_at_120_columns() {
        let l = lines(&app(), 120, 8);
        assert_eq!(
            l[0],
            "exitprof top | backend svm (classic tracepoints) | paging NPT on | host h | up 01:02:03 | 210 exits/s | 0 events/s"
        );
        assert_eq!(
            l[1],
            " 1 exits  2 events  3 vcpus  4 histogram  5 sites  sort: count"
        );
        assert_eq!(
            l[2],
            "REASON            CODE   COUNT     RATE/s   COUNT%  TIME       TIME%   AVG        MIN        MAX        TREND"
        );
        assert_eq!(
            l[3],
            "cpuid             0x72   300       200      93.75%  300.00 us  93.75%  1.00 us    500 ns     1.11 us    ▄█"
        );
        assert_eq!(
            l[4],
            "hlt               0x78   20        10       6.25%   20.00 us   6.25%   1.00 us    500 ns     1.12 us    ██"
        );
        assert!(l[7].starts_with("q quit  ? help  1-5/Tab views  s sort  / reason  v vm"));
    }

    #[test]
    fn narrow_terminal_truncates_instead_of_breaking() {
        let l = lines(&app(), 60, 8);
        assert_eq!(
            l[0],
            "exitprof top | backend svm (classic tracepoints) | paging NP"
        );
        assert!(l[3].starts_with("cpuid"), "{:?}", l[3]);
        assert!(l.iter().all(|line| line.chars().count() <= 60));
    }

    #[test]
    fn pvm_banner_and_empty_exit_view() {
        let mut first = snap(0, &[]);
        first.backend = crate::model::Backend::Pvm;
        first.vmexit_available = false;
        let mut app = App::new(first, "h".into(), "n/a".into());
        assert_eq!(app.view, View::Events, "PVM opens on the events view");
        app.update(Action::Show(View::Exits));
        let l = lines(&app, 100, 8);
        assert!(
            l[2].starts_with("note: this host's KVM backend is PVM: kvm_exit/kvm_entry are not"),
            "{l:?}"
        );
        assert_eq!(
            l[5],
            "no VM-exit rows on this backend (pvm): press 2 for the exit-handler events"
        );
    }

    #[test]
    fn histogram_of_the_selected_reason() {
        let mut app = app();
        let mut s = snap(3, &[("cpuid", 0x72, 400), ("hlt", 0x78, 20)]);
        s.exits[0].hist_log2_ns[9] = 300;
        s.exits[0].hist_log2_ns[10] = 100;
        app.update(Action::Data(Box::new(s)));
        app.update(Action::Show(View::Histogram));
        let l = lines(&app, 80, 8);
        assert_eq!(l[2], "cpuid (0x72): 400 timed exits, avg 1.00 us");
        assert!(
            l[3].starts_with("    512 ns .. 1.02 us          300 ████"),
            "{:?}",
            l[3]
        );
        assert!(
            l[4].starts_with("   1.02 us .. 2.05 us          100 ████"),
            "{:?}",
            l[4]
        );
    }
}
