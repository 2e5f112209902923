//! Argument values shared by subcommands.
use std::time::Duration;

/// Parses `500ms`, `5s`, `2m`, `1h` or a bare number of seconds.
///
/// # Errors
/// A message for clap when the text is no duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 500ms, 5s, 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1e3,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?} (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
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
