//! The result protocol: a boot's scripts print `@@EXITPROF <key> <value>`
//! lines on the serial console, the host reads them back from the serial
//! log. Several scenarios can share one boot, each in its own section.
use std::{fmt::Write as _, fs, path::PathBuf};

use anyhow::Context as _;

/// The marker of a result line.
const MARKER: &str = "@@EXITPROF ";

/// The key that starts a section (its value is the section's name).
const SECTION: &str = "section";

/// What a boot (or one section of it) reported.
pub struct Results {
    /// `@@EXITPROF key value` lines, in order.
    pub values: Vec<(String, String)>,
    /// The serial log's path.
    pub log: PathBuf,
}

impl Results {
    /// The result lines of the serial log at `log`.
    ///
    /// # Errors
    /// When the log cannot be read.
    pub fn read(log: PathBuf) -> anyhow::Result<Self> {
        let bytes = fs::read(&log).with_context(|| format!("reading {}", log.display()))?;
        Ok(Self {
            values: parse(&String::from_utf8_lossy(&bytes)),
            log,
        })
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> anyhow::Result<&str> {
        self.values
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .with_context(|| {
                format!(
                    "the sandbox reported no `{key}` (see {})",
                    self.log.display()
                )
            })
    }

    /// Every value of `key`.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.values
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The lines of section `name` (see [`sections`]), empty when the
    /// boot never reached it.
    #[must_use]
    pub fn section(&self, name: &str) -> Self {
        let values = self
            .values
            .iter()
            .skip_while(|(k, v)| !(k == SECTION && v == name))
            .skip(1)
            .take_while(|(k, _)| k != SECTION)
            .cloned()
            .collect();
        Self {
            values,
            log: self.log.clone(),
        }
    }
}

/// `@@EXITPROF key value` pairs of a serial log (a marker may follow
/// kernel output on the same line; `\r` of the serial console dropped).
fn parse(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let rest = &l[l.find(MARKER)? + MARKER.len()..];
            let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
            Some((k.to_owned(), v.trim_end_matches('\r').to_owned()))
        })
        .collect()
}

/// One boot's script running several scenarios' scripts in turn, each in
/// its own subshell and its own section of the results (read back with
/// [`Results::section`]), with its exit status as `section_rc`.
#[must_use]
pub fn sections(parts: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (name, script) in parts {
        let _ = write!(
            out,
            "echo \"{MARKER}{SECTION} {name}\"\n(\n{}\n)\necho \"{MARKER}section_rc $?\"\n",
            script.trim_matches('\n')
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_and_sections() {
        let log = "[    1.0] kernel noise\r\n@@EXITPROF booted 3.5\r\n\
                   @@EXITPROF section a\n@@EXITPROF x 1\n@@EXITPROF y two words\n\
                   @@EXITPROF section_rc 0\n[ 2.0] noise @@EXITPROF section b\n\
                   @@EXITPROF x 2\n@@EXITPROF flag\n";
        let results = Results {
            values: parse(log),
            log: PathBuf::from("log"),
        };
        assert_eq!(results.get("booted").unwrap(), "3.5");
        let a = results.section("a");
        assert_eq!(a.get("x").unwrap(), "1");
        assert_eq!(a.get("y").unwrap(), "two words");
        assert_eq!(a.get("section_rc").unwrap(), "0");
        let b = results.section("b");
        assert_eq!(b.all("x"), ["2"]);
        assert_eq!(b.get("flag").unwrap(), "");
        assert!(results.section("c").values.is_empty());
        assert!(b.get("y").is_err());
    }

    #[test]
    fn sections_script() {
        assert_eq!(
            sections(&[("a", "\necho 1\n"), ("b", "true")]),
            "echo \"@@EXITPROF section a\"\n(\necho 1\n)\necho \"@@EXITPROF section_rc $?\"\n\
             echo \"@@EXITPROF section b\"\n(\ntrue\n)\necho \"@@EXITPROF section_rc $?\"\n"
        );
    }
}
