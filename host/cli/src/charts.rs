//! The benchmarks' pictures and progress bars: what `bench` and
//! `bench-serve` show a person besides the table (the JSON is for
//! machines).
//!
//! Charts are SVG drawn by `plotters`, with no font files: text is left to
//! the SVG viewer, so a chart looks the same on any machine that opens it.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use plotters::prelude::*;

/// One panel of bars: a value per group for each series, drawn side by
/// side within the group.
pub struct Panel {
    /// Above the panel.
    pub title: String,
    /// The value axis.
    pub y_label: String,
    /// The groups, left to right.
    pub groups: Vec<String>,
    /// Each series' name and its value in each group.
    pub series: Vec<(String, Vec<f64>)>,
}

/// Series colours, in order; a colour-blind-safe palette (Okabe-Ito).
const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
];

/// Draws `panels` one above the other into an SVG at `path`.
pub fn grouped_bars(path: &Path, caption: &str, panels: &[Panel]) -> Result<()> {
    let height = 60 + 420 * panels.len() as u32;
    let root = SVGBackend::new(path, (1200, height)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let body = root.titled(caption, ("sans-serif", 22))?;
        for (panel, area) in panels
            .iter()
            .zip(body.split_evenly((panels.len().max(1), 1)))
        {
            draw_panel(&area, panel)?;
        }
        root.present()?;
        Ok(())
    };
    draw()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("drawing {}", path.display()))
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    // Each group takes one slot per series, plus one slot of gap between
    // groups.
    let groups = panel.groups.len();
    let slots = panel.series.len() + usize::from(groups > 1);
    let top = panel
        .series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(
            // A segmented range has one segment per value, its end included.
            (0..(groups * slots).saturating_sub(1)).into_segmented(),
            0.0..top * 1.7,
        )?;
    let label_slot = (slots - 1) / 2;
    chart
        .configure_mesh()
        .disable_x_mesh()
        // One label per slot; the formatter leaves all but the middle of
        // each group blank. (Asking plotters for zero labels never returns.)
        .x_labels(groups * slots)
        .y_label_formatter(&|v| short(*v))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) if i % slots == label_slot => {
                panel.groups.get(i / slots).cloned().unwrap_or_default()
            }
            _ => String::new(),
        })
        .y_desc(panel.y_label.as_str())
        .light_line_style(TRANSPARENT)
        .label_style(("sans-serif", 13))
        .draw()?;
    for (s, (name, values)) in panel.series.iter().enumerate() {
        let colour = PALETTE[s % PALETTE.len()];
        chart
            .draw_series(
                Histogram::vertical(&chart)
                    .style(colour.filled())
                    .margin(1)
                    .data(values.iter().enumerate().map(|(g, v)| (g * slots + s, *v))),
            )?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], colour.filled()));
        chart.draw_series(values.iter().enumerate().map(|(g, v)| {
            Text::new(
                short(*v),
                (SegmentValue::Exact(g * slots + s), *v + top * 0.04),
                ("sans-serif", 10),
            )
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 13))
        .draw()?;
    Ok(())
}

/// A bar's value in a few characters.
fn short(v: f64) -> String {
    match v {
        v if v >= 10_000.0 => format!("{:.0}k", v / 1000.0),
        v if v >= 100.0 => format!("{v:.0}"),
        v if v >= 10.0 => format!("{v:.1}"),
        v => format!("{v:.2}"),
    }
}

/// A progress bar on stderr, drawn only when stderr is a terminal (so logs
/// and CI output stay clean), for `steps` steps.
pub fn progress(steps: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_names_every_group_and_series() {
        let dir = std::env::temp_dir().join(format!("keyferry-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chart.svg");
        let panel = |title: &str| Panel {
            title: title.into(),
            y_label: "MB/s".into(),
            groups: vec!["TLS_AES_128_GCM_SHA256".into(), "TLS_CHACHA20".into()],
            series: vec![
                ("guest".into(), vec![120.0, 330.0]),
                ("rustls".into(), vec![1600.0, 1200.0]),
            ],
        };
        grouped_bars(&path, "throughput", &[panel("seal"), panel("open")]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        for text in [
            "throughput",
            "seal",
            "open",
            "TLS_AES_128_GCM_SHA256",
            "TLS_CHACHA20",
            "guest",
            "rustls",
            "1600",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn values_are_short() {
        assert_eq!(short(84930.4), "85k");
        assert_eq!(short(1532.2), "1532");
        assert_eq!(short(33.26), "33.3");
        assert_eq!(short(0.684), "0.68");
    }
}
