//! A recording file as a user hands it to `exitprof report`: reading must
//! not panic, and what reads can be compared, charted and tabled.
#![no_main]

use exitprof::{
    model::{comparison, recording::Recording},
    present::{chart, report},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(recording) = Recording::parse(text, "fuzz.json") {
        let rows = comparison::compare(&recording);
        let _ = comparison::summary(&recording, &rows);
        let _ = report::csv(&recording);
        if recording.runs.len() >= 2 {
            let _ = report::comparison_text(&recording, &rows);
            let _ = chart::svg(&recording, &rows);
        }
    }
});
