//! `exitprof top`'s terminal UI: the loop turns terminal keys, ticks and
//! signals into [`app::Action`]s; `App::update` is the only state change;
//! drawing (`ui.rs`) does no I/O. Snapshots come from a source the
//! command hands in: the TUI never sees the eBPF side.
pub mod app;
pub mod input;
pub mod ui;

use std::{collections::BTreeMap, time::Duration};

use crossterm::event::{self, Event};
use tokio::sync::mpsc;

use crate::{host::vmname, model::Snapshot};
use app::{Action, App};

/// The VM names (`host::vmname`) of the VMM processes in `snapshot` not
/// in `known`.
fn new_process_names(snapshot: &Snapshot, known: &BTreeMap<u32, String>) -> BTreeMap<u32, String> {
    snapshot
        .exits
        .iter()
        .filter_map(|r| r.pid)
        .filter(|pid| !known.contains_key(pid))
        .filter_map(|pid| Some((pid, vmname::vm_name(pid)?)))
        .collect()
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

/// Runs the TUI on `terminal` from `app` until the user quits or a
/// signal ends it, taking a snapshot from `source` every `delay`.
///
/// # Errors
/// A snapshot or the terminal fails.
pub async fn run(
    terminal: &mut ratatui::DefaultTerminal,
    mut app: App,
    delay: Duration,
    mut source: impl FnMut() -> anyhow::Result<Snapshot>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let started = std::time::Instant::now();
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
                let snapshot = source()?;
                let names = new_process_names(&snapshot, &app.names);
                if !names.is_empty() {
                    app.update(Action::ProcessNames(names));
                }
                Some(Action::Data(Box::new(snapshot)))
            }
            ev = input.recv() => match ev {
                Some(Event::Key(key)) => input::action_for(key, app.input),
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
