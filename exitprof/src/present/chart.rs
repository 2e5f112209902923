//! The chart of `exitprof report --svg`: exits per reason, one bar per
//! run, for the reasons with the most impact, drawn with plotters' SVG
//! backend.
use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use crate::model::{comparison::Compared, recording::Recording};

/// Bar colours, one per run (the first two runs are compared).
pub const COLORS: [RGBColor; 2] = [RGBColor(0x4e, 0x79, 0xa7), RGBColor(0xe1, 0x57, 0x59)];

/// Reasons shown at most.
const SHOWN: usize = 12;

/// A grouped bar chart of `rows` (the comparison of `recording`'s first
/// two runs, by impact) as an SVG document.
///
/// # Errors
/// When plotters fails to draw (it reports drawing errors of its
/// backend; the SVG backend writes to memory).
pub fn svg(recording: &Recording, rows: &[Compared]) -> Result<String, String> {
    let rows: Vec<&Compared> = rows.iter().take(SHOWN).collect();
    let runs: Vec<&str> = recording
        .runs
        .iter()
        .take(2)
        .map(|r| r.mode.name())
        .collect();
    let max = rows.iter().flat_map(|r| r.count).max().unwrap_or(1).max(1);
    let groups = u32::try_from(rows.len().max(1)).unwrap_or(1);
    let width = 120 + 90 * groups;
    let mut out = String::new();
    draw(&mut out, (width, 440), &rows, &runs, max).map_err(|e| e.to_string())?;
    Ok(out)
}

fn draw(
    out: &mut String,
    size: (u32, u32),
    rows: &[&Compared],
    runs: &[&str],
    max: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(out, size).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "VM exits per reason: {}",
        runs.iter()
            .map(|r| format!("{r} paging"))
            .collect::<Vec<_>>()
            .join(" vs ")
    );
    let groups = rows.len();
    #[expect(clippy::cast_precision_loss, reason = "chart coordinates")]
    let x_end = groups.max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(90)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_end, 0u64..max + max / 4 + 1)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        // The reason names go under their groups below, not at plotters'
        // evenly spaced ticks.
        .x_labels(0)
        .y_desc("exits")
        .draw()?;
    for (run, name) in runs.iter().enumerate() {
        let color = COLORS[run % COLORS.len()];
        chart
            .draw_series(rows.iter().enumerate().map(|(g, r)| {
                #[expect(clippy::cast_precision_loss, reason = "chart coordinates")]
                let left = g as f64 + 0.1 + 0.4 * run as f64;
                Rectangle::new([(left, 0), (left + 0.35, r.count[run])], color.filled())
            }))?
            .label(format!("{name} paging"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], color.filled()));
        chart.draw_series(rows.iter().enumerate().map(|(g, r)| {
            #[expect(clippy::cast_precision_loss, reason = "chart coordinates")]
            let middle = g as f64 + 0.275 + 0.4 * run as f64;
            Text::new(
                r.count[run].to_string(),
                (middle, r.count[run]),
                TextStyle::from(("sans-serif", 10).into_font())
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
        }))?;
    }
    let label = TextStyle::from(
        ("sans-serif", 12)
            .into_font()
            .transform(FontTransform::Rotate90),
    )
    .pos(Pos::new(HPos::Left, VPos::Center));
    for (g, r) in rows.iter().enumerate() {
        #[expect(clippy::cast_precision_loss, reason = "chart coordinates")]
        let (x, y) = chart.backend_coord(&(g as f64 + 0.5, 0));
        root.draw(&Text::new(r.name.clone(), (x, y + 6), label.clone()))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{comparison::compare, recording::tests::sample};

    /// `fill="#RRGGBB"` of a colour, as plotters writes it.
    fn fill(c: RGBColor) -> String {
        format!("fill=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2)
    }

    /// The texts of the document's `<text>` elements.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let body = &t[t.find('>')? + 1..t.find("</text>")?];
                Some(body.trim().to_owned())
            })
            .collect()
    }

    #[test]
    fn bars_per_reason_and_run_with_labels_and_legend() {
        let r = sample();
        let text = svg(&r, &compare(&r)).unwrap();
        assert!(text.starts_with("<svg "), "{}", &text[..60]);
        assert!(text.trim_end().ends_with("</svg>"));
        // 4 reasons per run, plus the legend's swatch.
        for color in COLORS {
            assert_eq!(text.matches(&fill(color)).count(), 4 + 1);
        }
        let texts = texts(&text);
        for label in [
            "VM exits per reason: nested paging vs shadow paging",
            "PF excp",
            "write_cr3",
            "npf",
            "cpuid",
            "nested paging",
            "shadow paging",
            "40",
            "50",
        ] {
            assert!(texts.iter().any(|t| t == label), "{label}: {texts:?}");
        }
    }
}
