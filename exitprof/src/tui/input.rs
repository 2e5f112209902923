//! Terminal keys to [`Action`]s: the one place key bindings live.
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::app::{Action, Input, View};

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
        KeyCode::Char('5') => Action::Show(View::Sites),
        KeyCode::Tab => Action::NextView,
        KeyCode::Char('s') => Action::NextSort,
        KeyCode::Char('/') => Action::StartInput(Input::Reason),
        KeyCode::Char('v' | 'p') => Action::StartInput(Input::Pid),
        KeyCode::Char('r') => Action::Reset,
        KeyCode::Char(' ') => Action::TogglePause,
        KeyCode::Up => Action::Select(-1),
        KeyCode::Down => Action::Select(1),
        _ => return None,
    })
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
