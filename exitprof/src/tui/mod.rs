//! `exitprof top`'s terminal UI: the loop turns terminal keys, ticks and
//! signals into [`app::Action`]s; `App::update` is the only state change;
//! drawing (`ui.rs`, `tables.rs`) does no I/O. Snapshots come from a
//! source the command hands in, with their VMs named (`host::vmname`):
//! the TUI never sees the eBPF side or `/proc`.
pub mod app;
pub mod input;
pub mod lines;
pub mod tables;
pub mod ui;

use std::time::Duration;

use crossterm::event::{self, Event};
use tokio::sync::mpsc;

use crate::model::Snapshot;
use app::{Action, App};

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
                Some(Action::Data(Box::new(source()?)))
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
