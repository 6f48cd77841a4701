//! The trade-off plots beside the demo's report: per workload, quality against file size
//! and against batch-1 latency (log scales), every model a labelled point and the Pareto
//! front (no other model at least as good and no more costly) joined by a line. Written
//! as SVG and PNG by `plotters`; text needs a TrueType font, read at run time from the
//! usual Debian locations (`fonts-dejavu-core`, which `scripts/setup.sh` installs).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

/// One model of a plot.
pub struct Point {
    pub label: String,
    pub quality: f64,
    pub size_kb: f64,
    pub latency_ms: f64,
}

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers the first font found as plotters' "sans-serif" (once); the error names where
/// it looked.
fn font() -> Result<()> {
    static FONT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let path = FONTS
            .iter()
            .find(|p| Path::new(p).is_file())
            .ok_or_else(|| {
                format!(
                    "no TrueType font for the plots' text in {} (apt-get install fonts-dejavu-core)",
                    FONTS.join(", ")
                )
            })?;
        let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
        plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
            .map_err(|_| format!("{path}: not a TrueType font plotters can read"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// Indices of the Pareto front of (cost, quality): lower cost, higher quality; sorted by
/// cost.
pub fn pareto(points: &[(f64, f64)]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..points.len()).collect();
    idx.sort_by(|&a, &b| {
        points[a]
            .0
            .total_cmp(&points[b].0)
            .then(points[b].1.total_cmp(&points[a].1))
    });
    let mut best = f64::NEG_INFINITY;
    idx.into_iter()
        .filter(|&i| {
            let keep = points[i].1 > best;
            best = best.max(points[i].1);
            keep
        })
        .collect()
}

/// One panel: quality against `cost` (log axis).
fn panel(
    area: &DrawingArea<impl DrawingBackend, Shift>,
    points: &[Point],
    cost: impl Fn(&Point) -> f64,
    x_label: &str,
    quality: &str,
) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing the plot: {e}");
    let xs: Vec<f64> = points.iter().map(&cost).collect();
    let ys: Vec<f64> = points.iter().map(|p| p.quality).collect();
    let (x0, x1) = (
        xs.iter().cloned().fold(f64::INFINITY, f64::min) / 1.6,
        xs.iter().cloned().fold(0.0, f64::max) * 1.6,
    );
    let (y0, y1) = (
        ys.iter().cloned().fold(f64::INFINITY, f64::min),
        ys.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
    );
    let pad = ((y1 - y0) * 0.08).max(0.2);
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((x0..x1).log_scale(), (y0 - pad)..(y1 + pad))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(quality)
        .x_labels(8)
        .x_label_formatter(&|v| match *v {
            v if v >= 100.0 => format!("{v:.0}"),
            v if v >= 1.0 => format!("{v:.1}"),
            v => format!("{v:.2}"),
        })
        .light_line_style(WHITE)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(|e| err(&e))?;
    let pairs: Vec<(f64, f64)> = xs.iter().cloned().zip(ys.iter().cloned()).collect();
    let front: Vec<(f64, f64)> = pareto(&pairs).into_iter().map(|i| pairs[i]).collect();
    chart
        .draw_series(LineSeries::new(front, BLUE.stroke_width(2)))
        .map_err(|e| err(&e))?;
    for (p, &(x, y)) in points.iter().zip(&pairs) {
        // a dot, its label a little up and to the right
        let mark = EmptyElement::at((x, y))
            + Circle::new((0, 0), 4, RED.filled())
            + Text::new(
                p.label.clone(),
                (6, -14),
                ("sans-serif", 12).into_font().color(&BLACK),
            );
        chart
            .draw_series(std::iter::once(mark))
            .map_err(|e| err(&e))?;
    }
    Ok(())
}

fn draw(
    area: DrawingArea<impl DrawingBackend, Shift>,
    title: &str,
    points: &[Point],
    quality: &str,
) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing the plot: {e}");
    area.fill(&WHITE).map_err(|e| err(&e))?;
    let area = area
        .titled(title, ("sans-serif", 20))
        .map_err(|e| err(&e))?;
    let (left, right) = area.split_horizontally(area.dim_in_pixel().0 / 2);
    panel(&left, points, |p| p.size_kb, "file size (KB, log)", quality)?;
    panel(
        &right,
        points,
        |p| p.latency_ms,
        "batch-1 latency (ms, log)",
        quality,
    )?;
    area.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Writes `stem.svg` and `stem.png`; returns their paths.
pub fn write(stem: &Path, title: &str, points: &[Point], quality: &str) -> Result<Vec<PathBuf>> {
    font()?;
    if points.is_empty() {
        return Ok(Vec::new());
    }
    let size = (1200, 520);
    let (svg, png) = (stem.with_extension("svg"), stem.with_extension("png"));
    // drawn under temporary names (the bitmap backend reads the format from the
    // extension), then renamed: never a half-written plot
    let (svg_tmp, png_tmp) = (
        stem.with_extension("tmp.svg"),
        stem.with_extension("tmp.png"),
    );
    draw(
        SVGBackend::new(&svg_tmp, size).into_drawing_area(),
        title,
        points,
        quality,
    )?;
    draw(
        BitMapBackend::new(&png_tmp, size).into_drawing_area(),
        title,
        points,
        quality,
    )?;
    for (t, f) in [(&svg_tmp, &svg), (&png_tmp, &png)] {
        std::fs::rename(t, f).map_err(|e| anyhow!("cannot write {}: {e}", f.display()))?;
    }
    Ok(vec![svg, png])
}

#[cfg(test)]
mod tests {
    use super::pareto;

    #[test]
    fn the_pareto_front_keeps_only_models_no_other_beats_on_both() {
        // (cost, quality): the 2nd is beaten by the 3rd (cheaper and better)
        let pts = [
            (1.0, 80.0),
            (5.0, 85.0),
            (3.0, 90.0),
            (10.0, 91.0),
            (10.0, 89.0),
        ];
        assert_eq!(pareto(&pts), vec![0, 2, 3]);
    }
}
