//! Argument values shared by subcommands.
use std::time::Duration;

/// The longest duration exitprof accepts: a year (and no deadline can
/// overflow the clock).
const MAX_DURATION: Duration = Duration::from_hours(365 * 24);

/// Parses a duration as `humantime` reads it (`500ms`, `5s`, `2m`,
/// `1h 30m`), or a bare number of seconds; it must be more than zero and
/// at most a year.
///
/// # Errors
/// A message for clap when the text is no such duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let duration = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(text)
            .map_err(|e| format!("{text:?} is not a duration ({e}; try 500ms, 5s, 2m, 1h 30m)"))?,
    };
    if duration.is_zero() {
        return Err(format!("{text:?}: the duration must be more than zero"));
    }
    if duration > MAX_DURATION {
        return Err(format!("{text:?}: the longest duration is a year (365d)"));
    }
    Ok(duration)
}

/// Parses a process id that must exist now.
///
/// # Errors
/// A message for clap when the text is no number or no such process runs.
pub fn parse_live_pid(text: &str) -> Result<u32, String> {
    let pid: u32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a process id"))?;
    if pid == 0 || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err(format!("no process with pid {pid}"));
    }
    Ok(pid)
}

/// Parses a number in decimal or `0x` hexadecimal.
///
/// # Errors
/// A message for clap.
pub fn parse_number(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("{text:?} is not a number (decimal or 0x-hex)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_mins(2)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn pids() {
        assert_eq!(
            parse_live_pid(&std::process::id().to_string()),
            Ok(std::process::id())
        );
        assert_eq!(parse_live_pid("0"), Err("no process with pid 0".into()));
        assert_eq!(
            parse_live_pid("4194304"),
            Err("no process with pid 4194304".into())
        );
        assert!(parse_live_pid("abc").is_err());
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("0x283"), Ok(0x283));
        assert_eq!(parse_number("42"), Ok(42));
        assert!(parse_number("0xzz").is_err());
    }
}
