//! `exitprof top`: live tables of exits. The loop turns terminal keys,
//! ticks and signals into [`app::Action`]s; `App::update` is the only
//! state change; drawing (`ui.rs`) does no I/O.
pub mod app;
pub mod ui;

use std::{
    io::IsTerminal as _,
    process::ExitCode,
    time::{Duration, Instant},
};

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use tokio::sync::mpsc;

use crate::{
    cli::{parse_duration, parse_live_pid},
    loader::{Filter, Options, Profiler},
    present::table,
    signals,
};
use app::{Action, App, Input, View};

/// Arguments of `exitprof top`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  sudo exitprof top                   live tables, refreshed every second
  sudo exitprof top -d 500ms --pid $(pidof qemu-system-x86_64)
  sudo exitprof top --once            one interval as text, like top -b -n 1
  sudo exitprof top --json -d 2s      one JSON snapshot per interval")]
pub struct TopArgs {
    /// Refresh interval (500ms, 1s, 2s).
    #[arg(short, long, default_value = "1s", value_parser = parse_duration)]
    pub delay: Duration,
    /// Count only this process (and its children from now on); repeatable.
    #[arg(short, long = "pid", value_name = "PID", value_parser = parse_live_pid)]
    pub pids: Vec<u32>,
    /// Print one interval as text tables and exit (also when stdout is no
    /// terminal).
    #[arg(long)]
    pub once: bool,
    /// Print one JSON snapshot per interval (counts of that interval).
    #[arg(long, conflicts_with = "once")]
    pub json: bool,
    /// Raw or classic tracepoints for the KVM programs (see `stat --help`).
    #[arg(long, value_enum, default_value_t = crate::loader::AttachMode::Auto)]
    pub attach: crate::loader::AttachMode,
    /// Load test of exitprof itself: fill the per-vCPU map with this many
    /// synthetic vCPUs × 30 reasons before starting.
    #[arg(long, hide = true, value_name = "VCPUS")]
    pub load_test_vcpus: Option<u32>,
}

/// Runs `exitprof top`.
///
/// # Errors
/// Loading, reading or the terminal fails; each error says why.
pub fn main(args: &TopArgs) -> anyhow::Result<ExitCode> {
    let filter = if args.pids.is_empty() {
        Filter::All
    } else {
        Filter::Tracked(args.pids.clone())
    };
    let mut profiler = Profiler::start(&Options {
        filter,
        breakdown: true,
        map_entries: None,
        cost: false,
        attach: args.attach,
    })?;
    if args.json {
        signals::install();
        return stream_json(&profiler, args.delay);
    }
    if args.once || !std::io::stdout().is_terminal() {
        signals::install();
        sleep_unless_signalled(args.delay);
        let scope = if args.pids.is_empty() {
            "all processes".to_owned()
        } else {
            format!("pid {:?}", args.pids)
        };
        print!("{}", table::render(&profiler.snapshot()?, &scope));
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut terminal = ratatui::init();
    let result = runtime.block_on(run(
        &mut terminal,
        &mut profiler,
        args.delay,
        args.load_test_vcpus,
    ));
    // Restored on every path out of `run`, errors included (and by
    // ratatui's panic hook on a panic).
    ratatui::restore();
    result.map(|()| ExitCode::SUCCESS)
}

/// Sleeps `total`, returning early on SIGINT/SIGTERM.
fn sleep_unless_signalled(total: Duration) {
    let end = Instant::now() + total;
    while Instant::now() < end && signals::received().is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stream_json(profiler: &Profiler, delay: Duration) -> anyhow::Result<ExitCode> {
    let mut previous = profiler.snapshot()?;
    loop {
        sleep_unless_signalled(delay);
        if signals::received().is_some() {
            return Ok(ExitCode::SUCCESS);
        }
        let now = profiler.snapshot()?;
        println!("{}", serde_json::to_string(&now.since(&previous))?);
        previous = now;
    }
}

/// The host's name for the header.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

/// "EPT on", "NPT off", or "n/a" from the vendor module's parameter.
#[must_use]
pub fn paging_mode() -> String {
    for (module, param, name) in [("kvm_intel", "ept", "EPT"), ("kvm_amd", "npt", "NPT")] {
        if let Ok(v) = std::fs::read_to_string(format!("/sys/module/{module}/parameters/{param}")) {
            let on = matches!(v.trim(), "Y" | "1");
            return format!("{name} {}", if on { "on" } else { "off" });
        }
    }
    "n/a".to_owned()
}

/// `/proc/<pid>/comm` of the VMM processes in `snapshot` not in `known`.
fn new_process_names(
    snapshot: &crate::snapshot::Snapshot,
    known: &std::collections::BTreeMap<u32, String>,
) -> std::collections::BTreeMap<u32, String> {
    snapshot
        .exits
        .iter()
        .filter_map(|r| r.pid)
        .filter(|pid| !known.contains_key(pid))
        .filter_map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            Some((pid, comm.trim().to_owned()))
        })
        .collect()
}

/// Keys to actions; `None` for keys that do nothing.
#[must_use]
pub fn action_for(key: KeyEvent, input: Input) -> Option<Action> {
    if key.kind != KeyEventKind::Press {
        return None;
    }
    if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
        return Some(Action::Quit);
    }
    if input != Input::None {
        return match key.code {
            KeyCode::Enter => Some(Action::EndInput),
            KeyCode::Esc => Some(Action::CancelInput),
            KeyCode::Backspace => Some(Action::Backspace),
            KeyCode::Char(c) => Some(Action::Type(c)),
            _ => None,
        };
    }
    Some(match key.code {
        KeyCode::Char('q') => Action::Quit,
        KeyCode::Char('?') => Action::ToggleHelp,
        KeyCode::Char('1') => Action::Show(View::Exits),
        KeyCode::Char('2') => Action::Show(View::Events),
        KeyCode::Char('3') => Action::Show(View::Vcpus),
        KeyCode::Char('4') => Action::Show(View::Histogram),
        KeyCode::Tab => Action::NextView,
        KeyCode::Char('s') => Action::NextSort,
        KeyCode::Char('/') => Action::StartInput(Input::Reason),
        KeyCode::Char('v') | KeyCode::Char('p') => Action::StartInput(Input::Pid),
        KeyCode::Char('r') => Action::Reset,
        KeyCode::Char(' ') => Action::TogglePause,
        KeyCode::Up => Action::Select(-1),
        KeyCode::Down => Action::Select(1),
        _ => return None,
    })
}

/// Terminal events, read on their own thread so the loop never blocks.
fn spawn_input() -> mpsc::UnboundedReceiver<Event> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        loop {
            match event::poll(Duration::from_millis(100)) {
                Ok(true) => match event::read() {
                    Ok(ev) => {
                        if tx.send(ev).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                },
                Ok(false) => {
                    if tx.is_closed() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    rx
}

async fn run(
    terminal: &mut ratatui::DefaultTerminal,
    profiler: &mut Profiler,
    delay: Duration,
    load_test_vcpus: Option<u32>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let started = Instant::now();
    let mut app = App::new(profiler.snapshot()?, hostname(), paging_mode());
    if let Some(vcpus) = load_test_vcpus {
        // After the baseline, so the synthetic rows show as new exits.
        profiler.fill_breakdown_for_load_test(vcpus * 30)?;
    }
    let mut input = spawn_input();
    let mut tick = tokio::time::interval(delay);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    while !app.quit {
        app.uptime_s = started.elapsed().as_secs();
        terminal.draw(|frame| frame.render_widget(&app, frame.area()))?;
        let action = tokio::select! {
            _ = tick.tick() => {
                let snapshot = profiler.snapshot()?;
                let names = new_process_names(&snapshot, &app.comms);
                if !names.is_empty() {
                    app.update(Action::ProcessNames(names));
                }
                Some(Action::Data(Box::new(snapshot)))
            }
            ev = input.recv() => match ev {
                Some(Event::Key(key)) => action_for(key, app.input),
                Some(_) => None, // resize: redraw
                None => Some(Action::Quit),
            },
            _ = sigterm.recv() => Some(Action::Quit),
            _ = sigint.recv() => Some(Action::Quit),
        };
        if let Some(action) = action {
            app.update(action);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn keys_map_to_actions() {
        assert_eq!(
            action_for(key(KeyCode::Char('q')), Input::None),
            Some(Action::Quit)
        );
        assert_eq!(
            action_for(
                KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
                Input::Reason
            ),
            Some(Action::Quit)
        );
        assert_eq!(
            action_for(key(KeyCode::Char('3')), Input::None),
            Some(Action::Show(View::Vcpus))
        );
        assert_eq!(
            action_for(key(KeyCode::Char('q')), Input::Reason),
            Some(Action::Type('q'))
        );
        assert_eq!(
            action_for(key(KeyCode::Enter), Input::Pid),
            Some(Action::EndInput)
        );
        assert_eq!(action_for(key(KeyCode::F(5)), Input::None), None);
    }
}
