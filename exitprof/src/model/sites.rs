//! Exit sites: where in the guest the exits of a reason come from, by
//! guest RIP (`--sites`), and the guest symbols that name them
//! (`--guest-symbols`: a `System.map` or a `/proc/kallsyms` copy).
use exitprof_common::Isa;
use serde::{Deserialize, Serialize};

use super::{per_second::PerSecond, status::isa_name};

/// Exits of one reason at one guest RIP of one VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRow {
    /// The isa whose table names `reason`.
    #[serde(with = "isa_name")]
    pub isa: Isa,
    /// Raw hardware code.
    pub reason: u32,
    /// Reason name as the kernel prints it.
    pub name: String,
    /// VMM process id (guest addresses mean something per VM only).
    pub pid: u32,
    /// The VM's name (`host::vmname`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// The guest's RIP at the exit.
    pub rip: u64,
    /// `function+0xoffset` from `--guest-symbols`, when it names `rip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
    /// Exits.
    pub count: u64,
    /// Exits whose re-entry was seen.
    pub timed: u64,
    /// Sum of exit-to-entry durations.
    pub total_ns: u64,
    /// Longest duration.
    pub max_ns: u64,
    /// Exits per second over the snapshot's interval.
    #[serde(default)]
    pub rate_per_s: PerSecond,
}

impl SiteRow {
    /// Mean duration of the timed exits.
    #[must_use]
    pub fn avg_ns(&self) -> u64 {
        self.total_ns.checked_div(self.timed).unwrap_or(0)
    }

    /// The key a site keeps from one snapshot to the next.
    #[must_use]
    pub fn key(&self) -> (u32, Isa, u32, u64) {
        (self.pid, self.isa, self.reason, self.rip)
    }
}

/// What a guest symbol file holds for people: code symbols by address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Symbols {
    /// `(address, name)`, sorted by address.
    text: Vec<(u64, String)>,
    /// The end of the kernel's code (`_etext`), when the file has it:
    /// addresses from there on are no function's.
    end: Option<u64>,
}

impl Symbols {
    /// Parses `System.map` or `/proc/kallsyms` text: `ADDRESS TYPE NAME
    /// [MODULE]` per line. Code symbols (`t`, `T`, `w`, `W`) are kept.
    ///
    /// # Errors
    /// When no line is such a symbol (not a symbol file, or kallsyms read
    /// without root, whose addresses are all 0).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut symbols = Self::default();
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if name == "_etext" {
                // A marker, not a function.
                symbols.end = Some(addr);
                continue;
            }
            if addr != 0 && matches!(kind, "t" | "T" | "w" | "W") {
                symbols.text.push((addr, name.to_owned()));
            }
        }
        if symbols.text.is_empty() {
            return Err(
                "no code symbols (lines `ADDRESS t|T NAME`); kallsyms shows all zeros unless read as root"
                    .to_owned(),
            );
        }
        symbols.text.sort_unstable();
        Ok(symbols)
    }

    /// `name+0xoffset` of the function `addr` is in, if any (nothing
    /// between the kernel's `_etext` and the next symbol, e.g. a
    /// module's, is a function).
    #[must_use]
    pub fn lookup(&self, addr: u64) -> Option<String> {
        let i = self
            .text
            .partition_point(|(a, _)| *a <= addr)
            .checked_sub(1)?;
        let (start, name) = &self.text[i];
        if self.end.is_some_and(|end| *start < end && addr >= end) {
            return None;
        }
        Some(format!("{name}+{:#x}", addr - start))
    }

    /// How many code symbols there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "\
0000000000000000 D __per_cpu_start
ffffffff81000000 T _stext
ffffffff81000000 T startup_64
ffffffff81001000 t native_cpuid
ffffffff81001040 T do_io
ffffffff81002000 D some_data
ffffffff81003000 T _etext
ffffffffc0000000 t mod_fn\t[kvm]
";

    #[test]
    fn symbols_name_functions_by_offset() {
        let s = Symbols::parse(MAP).unwrap();
        assert_eq!(
            s.lookup(0xffff_ffff_8100_1012).as_deref(),
            Some("native_cpuid+0x12")
        );
        assert_eq!(
            s.lookup(0xffff_ffff_8100_1040).as_deref(),
            Some("do_io+0x0")
        );
        assert_eq!(
            s.lookup(0x40_1000),
            None,
            "below every symbol: guest user space"
        );
        assert_eq!(s.lookup(0xffff_ffff_8100_3010), None, "past _etext");
        assert_eq!(
            s.lookup(0xffff_ffff_c000_0010).as_deref(),
            Some("mod_fn+0x10")
        );
        assert_eq!(s.len(), 5);
    }

    #[test]
    fn a_file_without_code_symbols_is_refused() {
        assert!(Symbols::parse("hello\nworld\n").is_err());
        assert!(Symbols::parse("0000000000000000 T _stext\n").is_err());
    }
}
