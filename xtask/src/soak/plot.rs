//! The soak's chart: RSS of each exitprof process over time (above), and
//! the entries of its hash maps beside the live vCPU threads (below), as
//! SVG drawn with plotters; checked, then rendered with `rsvg-convert` as
//! `exitprof report --svg` is in the sandbox scenario.
use std::{path::Path, process::Command};

use anyhow::{Context as _, ensure};
use plotters::prelude::*;

use super::sample::Sample;
use crate::util::run;

const COLORS: [RGBColor; 12] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xe1, 0x57, 0x59),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0xb0, 0x7a, 0xa1),
    RGBColor(0x76, 0xb7, 0xb2),
    RGBColor(0x9c, 0x75, 0x5f),
    RGBColor(0xed, 0xc9, 0x48),
    RGBColor(0xff, 0x9d, 0xa7),
    RGBColor(0xba, 0xb0, 0xac),
    RGBColor(0x1b, 0x1b, 0x1b),
    RGBColor(0x8c, 0xd1, 0x7d),
];

/// One line of a panel.
struct Line {
    label: String,
    points: Vec<(f64, f64)>,
}

/// The chart of `samples` as an SVG document.
///
/// # Errors
/// When plotters fails to draw.
pub fn svg(samples: &[Sample], title: &str) -> anyhow::Result<String> {
    let names: Vec<String> = samples
        .iter()
        .flat_map(|s| s.processes.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    #[expect(clippy::cast_precision_loss, reason = "chart coordinates")]
    let rss: Vec<Line> = names
        .iter()
        .map(|name| Line {
            label: format!("exitprof {name}: RSS MB"),
            points: samples
                .iter()
                .filter_map(|s| Some((s.t_s, s.processes.get(name)?.rss_kb as f64 / 1024.0)))
                .collect(),
        })
        .collect();
    let mut entries: Vec<Line> = Vec::new();
    for name in &names {
        let maps: std::collections::BTreeSet<String> = samples
            .iter()
            .filter_map(|s| s.processes.get(name))
            .flat_map(|p| p.maps.keys().cloned())
            .collect();
        for map in maps {
            #[expect(clippy::cast_precision_loss, reason = "chart coordinates")]
            let points: Vec<(f64, f64)> = samples
                .iter()
                .filter_map(|s| Some((s.t_s, *s.processes.get(name)?.maps.get(&map)? as f64)))
                .collect();
            // Maps that stayed empty (EXIT_BREAKDOWN on a host without
            // kvm_exit) would only crowd the legend.
            if points.iter().any(|p| p.1 > 0.0) {
                entries.push(Line {
                    label: format!("{name}: {map}"),
                    points,
                });
            }
        }
    }
    #[expect(clippy::cast_precision_loss, reason = "chart coordinates")]
    entries.push(Line {
        label: "live vCPU threads".to_owned(),
        points: samples
            .iter()
            .map(|s| (s.t_s, s.vcpu_threads as f64))
            .collect(),
    });
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (960, 720)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let root = root
            .titled(title, ("sans-serif", 18))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (upper, lower) = root.split_vertically(300);
        panel(&upper, &rss, "RSS (MB)")?;
        panel(&lower, &entries, "map entries / threads")?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(out)
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    lines: &[Line],
    y_label: &str,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("{e:?}");
    let x_max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let y_max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc(y_label)
        .draw()
        .map_err(err)?;
    for (i, line) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(line.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Writes `svg` to `path`, checks it names every line of `labels`, and
/// renders it with `rsvg-convert` beside it as PNG.
///
/// # Errors
/// When the document lacks a label or does not render.
pub fn write_and_check(svg: &str, path: &Path, labels: &[&str]) -> anyhow::Result<()> {
    ensure!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "the soak chart is not an SVG document"
    );
    for label in labels {
        ensure!(svg.contains(label), "the soak chart has no line {label:?}");
    }
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
    let png = path.with_extension("png");
    run(Command::new("rsvg-convert").arg("-o").arg(&png).arg(path))?;
    let bytes = std::fs::read(&png)?;
    ensure!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 1000,
        "rsvg-convert made no image of {}",
        path.display()
    );
    Ok(())
}
