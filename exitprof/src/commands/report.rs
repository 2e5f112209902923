//! `exitprof report FILE`: a recording as tables, and with two paging
//! modes a side-by-side comparison per reason, sorted by impact, with a
//! one-line summary; `--json`, `--csv`, and `--svg` for a bar chart.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    model::{
        comparison::{Compared, compare, summary},
        recording::Recording,
    },
    present::{
        chart,
        report::{comparison_text, csv},
        table,
    },
};

/// Arguments of `exitprof report`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  exitprof report r.json
  exitprof report r.json --csv > r.csv
  exitprof report r.json --svg r.svg")]
pub struct ReportArgs {
    /// A recording written by `exitprof record`.
    pub file: PathBuf,
    /// Print the runs and the comparison as one JSON object.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print one CSV row per run and reason.
    #[arg(long)]
    pub csv: bool,
    /// Also draw the comparison as a grouped bar chart into this SVG file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
}

/// Runs `exitprof report`.
///
/// # Errors
/// The recording cannot be read, or the SVG cannot be written.
pub fn main(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let recording = Recording::load(&args.file)?;
    let rows = if recording.runs.len() >= 2 {
        compare(&recording)
    } else {
        Vec::new()
    };
    if let Some(path) = &args.svg {
        let svg = chart::svg(&recording, &rows)
            .map_err(|e| anyhow::anyhow!("drawing the chart failed: {e}"))?;
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        #[derive(Serialize)]
        struct Out<'a> {
            recording: &'a Recording,
            comparison: &'a [Compared],
            summary: Option<String>,
        }
        let out = Out {
            recording: &recording,
            comparison: &rows,
            summary: summary(&recording, &rows),
        };
        println!("{}", serde_json::to_string(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    if args.csv {
        print!("{}", csv(&recording));
        return Ok(ExitCode::SUCCESS);
    }
    for run in &recording.runs {
        println!(
            "== {} paging{} ==",
            run.mode.name(),
            run.paging
                .as_deref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default()
        );
        print!(
            "{}",
            table::render(&run.total, &format!("`{}`", recording.command.join(" ")))
        );
    }
    if recording.runs.len() >= 2 {
        println!("== comparison ==");
        print!("{}", comparison_text(&recording, &rows));
        if let Some(line) = summary(&recording, &rows) {
            println!("\n{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
