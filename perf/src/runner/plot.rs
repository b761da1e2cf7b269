//! `--plot FILE.svg`: latency against percentile, one line per operation kind.
//!
//! The x axis is in "nines": x = -log10(1 - percentile/100), so 0, 90, 99, 99.9 and 99.99 sit
//! at 0, 1, 2, 3 and 4, evenly spaced, as HdrHistogram's plotter draws them; the tail gets as
//! much room as the median. The maximum (percentile 100) is drawn at the position of one sample
//! in `count`, `log10(count)`, the rank it really has. The y axis is latency in µs, linear.
//!
//! plotters is built without its `ttf` feature, so it has no font metrics: it estimates text
//! sizes, and the SVG backend writes labels as SVG `<text>` elements that the viewer renders
//! with its own fonts. That is good enough for axis labels, a caption and a legend.

use std::path::Path;

use plotters::prelude::*;

use super::options::workload_name;
use super::report::Report;

/// Width and height of the image, pixels.
const PLOT_WIDTH_PX: u32 = 960;
const PLOT_HEIGHT_PX: u32 = 600;

/// The x position of `percentile` (0..=100) for a histogram of `count` samples.
pub fn nines(percentile: f64, count: u64) -> f64 {
    let cap = (count.max(10) as f64).log10();
    let rest = 1.0 - percentile / 100.0;
    if rest <= 0.0 {
        return cap;
    }
    (-rest.log10()).clamp(0.0, cap)
}

/// The label of the tick at `x` nines: 0, 90, 99, 99.9, ...
pub fn nines_label(x: f64) -> String {
    let n = x.round() as i32;
    if (x - f64::from(n)).abs() > 1e-6 || n < 0 {
        return String::new();
    }
    match n {
        0 => "0".into(),
        1 => "90".into(),
        n => format!("99.{}", "9".repeat((n - 2) as usize)).trim_end_matches('.').to_string(),
    }
}

/// The points of one line: every percentile below the rank of a single sample (beyond it the
/// histogram only repeats its maximum), then the maximum at that rank.
pub fn curve(points: &[(f64, u64)], count: u64) -> Vec<(f64, u64)> {
    let cap = nines(100.0, count);
    let mut line: Vec<(f64, u64)> = points
        .iter()
        .map(|&(p, v)| (nines(p, count), v))
        .filter(|&(x, _)| x < cap - 1e-9)
        .collect();
    if let Some(&(_, max)) = points.last() {
        line.push((cap, max));
    }
    line
}

/// One line of the plot: name, count and `(percentile, value_us)` points.
type Series<'a> = (&'a str, u64, &'a [(f64, u64)]);

/// Draws the percentile curves of `report` into an SVG file at `path`.
pub fn write_svg(report: &Report, path: &Path) -> anyhow::Result<()> {
    let mut series: Vec<Series<'_>> = report
        .operations
        .iter()
        .map(|(name, r)| (name.as_str(), r.count, r.histogram.as_slice()))
        .collect();
    if series.len() > 1 {
        series.push(("all", report.overall.count, report.overall.histogram.as_slice()));
    }
    let x_max = series
        .iter()
        .flat_map(|(_, count, pts)| pts.iter().map(move |&(p, _)| nines(p, *count)))
        .fold(2.0f64, f64::max)
        .ceil();
    let y_max =
        series.iter().flat_map(|(_, _, pts)| pts.iter().map(|&(_, v)| v)).max().unwrap_or(1);
    let y_top = (y_max as f64 * 1.05).max(1.0) as u64;

    let root = SVGBackend::new(path, (PLOT_WIDTH_PX, PLOT_HEIGHT_PX)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    let loop_kind = if report.config.rate.is_some() {
        "open loop, from intended start"
    } else {
        "closed loop, from send"
    };
    let caption = format!(
        "{} {}: latency by percentile ({loop_kind})",
        report.config.target,
        workload_name(report.config.workload.kind)
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(16)
        .margin_right(40)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..x_max, 0u64..y_top)
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    chart
        .configure_mesh()
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&|x| nines_label(*x))
        .x_desc("percentile")
        .y_desc("latency (us)")
        .draw()
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    for (i, (name, count, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let line = curve(pts, *count);
        chart
            .draw_series(LineSeries::new(line.iter().copied(), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?
            .label(format!("{name} ({count})"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(line.iter().map(|&(x, y)| Circle::new((x, y), 2, color.filled())))
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("plot {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_are_evenly_spaced() {
        assert_eq!(nines(0.0, 1000), 0.0);
        assert!((nines(90.0, 1000) - 1.0).abs() < 1e-9);
        assert!((nines(99.9, 1000) - 3.0).abs() < 1e-9);
        // The max sits at one sample in count.
        assert!((nines(100.0, 1000) - 3.0).abs() < 1e-9);
        assert!((nines(99.999, 1000) - 3.0).abs() < 1e-9);
        assert_eq!(nines_label(0.0), "0");
        assert_eq!(nines_label(1.0), "90");
        assert_eq!(nines_label(2.0), "99");
        assert_eq!(nines_label(4.0), "99.99");
        assert_eq!(nines_label(1.5), "");
        let pts = [(0.0, 1), (90.0, 5), (99.9, 7), (99.99, 9), (100.0, 9)];
        assert_eq!(curve(&pts, 1000), vec![(0.0, 1), (1.0, 5), (3.0, 9)]);
    }
}
