//! A tracepoint `format` file as tracefs hands it over: parsing must not
//! panic, and a parsed format answers field lookups.
#![no_main]

use exitprof::host::tracefs::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(format) = Format::parse(text) {
        for field in ["function", "exit_reason", "vcpu_id", "gpa", "errno"] {
            let _ = format.offset(field);
        }
    }
});
