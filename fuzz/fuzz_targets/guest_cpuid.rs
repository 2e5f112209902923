//! The registers a hypervisor answers `exitprof guest`'s CPUID queries
//! with: whatever they hold, decoding must not panic.
#![no_main]

use exitprof::{guest::{CpuidSource, query}, present::guest::render};
use libfuzzer_sys::fuzz_target;

/// Answers every CPUID with the next 16 bytes of the input (zeros after
/// its end); leaf 1 says "hypervisor" so that decoding goes on.
struct Replay<'a>(&'a [u8]);

impl CpuidSource for Replay<'_> {
    fn cpuid(&mut self, leaf: u32, _subleaf: u32) -> [u32; 4] {
        let mut regs = [0u32; 4];
        for r in &mut regs {
            let (word, rest) = self.0.split_at(self.0.len().min(4));
            let mut bytes = [0u8; 4];
            bytes[..word.len()].copy_from_slice(word);
            *r = u32::from_le_bytes(bytes);
            self.0 = rest;
        }
        if leaf == 1 {
            regs[2] |= 1 << 31;
        }
        regs
    }
}

fuzz_target!(|data: &[u8]| {
    for all in [false, true] {
        if let Ok(report) = query(&mut Replay(data), all) {
            let _ = render(&report);
        }
    }
});
