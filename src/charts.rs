//! PNG line and marker charts for reports and benchmarks.
//!
//! Rendering uses plotters' bitmap backend; text is drawn with `ab_glyph` from the bundled
//! DejaVu Sans (`assets/fonts/`, compiled into the binary), so charts need no system fonts
//! at build or run time.
//!
//! The API is two calls:
//! - [`line_chart`]: lines only, linear axes — the common case;
//! - [`render`]: a [`Chart`] with markers (trades on a price line), log axes and a size.
//!
//! Points that are not finite (and, on a log axis, not positive) are left out; a chart with
//! no point left still renders, with "no data" in the plot area, so a report always has its
//! images.

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

/// The chart font, compiled in (DejaVu Sans; licence in `assets/fonts/`).
static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

/// Line colours in series order (then repeated).
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// A line through the points in order.
    Line,
    /// An upward triangle at each point (e.g. buys).
    Up,
    /// A downward triangle at each point (e.g. sells).
    Down,
    /// A dot at each point.
    #[allow(dead_code)] // for callers beyond the report (benchmarks)
    Dot,
}

/// One named series.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// `(x, y)` points; lines join them in this order.
    pub points: Vec<(f64, f64)>,
    /// Line or markers.
    pub mark: Mark,
    /// RGB colour; `None` takes the next palette colour.
    pub color: Option<(u8, u8, u8)>,
}

impl Series {
    /// A line series in the next palette colour.
    pub fn line(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self { name: name.into(), points, mark: Mark::Line, color: None }
    }

    /// A marker series in a given colour.
    pub fn markers(name: impl Into<String>, points: Vec<(f64, f64)>, mark: Mark, color: (u8, u8, u8)) -> Self {
        Self { name: name.into(), points, mark, color: Some(color) }
    }
}

/// A chart: titles, series, axes and image size.
#[derive(Clone, Debug)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// X axis description.
    pub x_label: String,
    /// Y axis description.
    pub y_label: String,
    /// The series, drawn in order (later ones on top).
    pub series: Vec<Series>,
    /// Image size in pixels (width, height).
    pub size: (u32, u32),
    /// Logarithmic x axis (non-positive x left out).
    pub log_x: bool,
    /// Logarithmic y axis (non-positive y left out).
    pub log_y: bool,
    /// Category names for a linear x axis: x = 1, 2, … is labelled with these (other ticks
    /// stay blank). Empty: numeric labels.
    pub x_names: Vec<String>,
}

impl Chart {
    /// A chart with linear axes and the default size (960 × 540).
    pub fn new(title: impl Into<String>, x_label: impl Into<String>, y_label: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: Vec::new(),
            size: DEFAULT_SIZE,
            log_x: false,
            log_y: false,
            x_names: Vec::new(),
        }
    }
}

/// The default image size.
pub const DEFAULT_SIZE: (u32, u32) = (960, 540);

/// Writes a PNG line chart: one line per `(name, points)` series, linear axes.
#[allow(dead_code)] // the simple entry point, for `sapphire bench`
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    size: (u32, u32),
) -> anyhow::Result<()> {
    let mut chart = Chart::new(title, x_label, y_label);
    chart.size = size;
    chart.series = series.iter().map(|(n, p)| Series::line(n.clone(), p.clone())).collect();
    render(path, &chart)
}

/// Writes `chart` as a PNG at `path` (the parent directory must exist).
pub fn render(path: &Path, chart: &Chart) -> anyhow::Result<()> {
    anyhow::ensure!(
        chart.size.0 >= 200 && chart.size.1 >= 150 && chart.size.0 <= 8192 && chart.size.1 <= 8192,
        "chart size {}x{}: between 200x150 and 8192x8192",
        chart.size.0,
        chart.size.1
    );
    register_font();
    let keep = |(x, y): (f64, f64)| x.is_finite() && y.is_finite() && (!chart.log_x || x > 0.0) && (!chart.log_y || y > 0.0);
    let series: Vec<Series> =
        chart.series.iter().map(|s| Series { points: s.points.iter().copied().filter(|&p| keep(p)).collect(), ..s.clone() }).collect();
    let (xr, yr) = bounds(&series, chart.log_x, chart.log_y);
    let root = BitMapBackend::new(path, chart.size).into_drawing_area();
    let fail = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut builder = ChartBuilder::on(&root);
    builder.caption(&chart.title, ("sans-serif", 22)).margin(12).x_label_area_size(48).y_label_area_size(100);
    let empty = series.iter().all(|s| s.points.is_empty());
    let result = match (chart.log_x, chart.log_y) {
        (false, false) => draw(&mut builder, xr.0..xr.1, yr.0..yr.1, chart, &series, empty),
        (false, true) => draw(&mut builder, xr.0..xr.1, (yr.0..yr.1).log_scale(), chart, &series, empty),
        (true, false) => draw(&mut builder, (xr.0..xr.1).log_scale(), yr.0..yr.1, chart, &series, empty),
        (true, true) => draw(&mut builder, (xr.0..xr.1).log_scale(), (yr.0..yr.1).log_scale(), chart, &series, empty),
    };
    result.map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

fn register_font() {
    static ONCE: Once = Once::new();
    // A bundled, known-good font: failing to parse it is a build defect, reported on first use.
    ONCE.call_once(|| {
        if plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_err() {
            errln!("charts: the bundled font did not parse; text will be missing");
        }
    });
}

/// Axis ranges covering every point, padded by 5% (log axes: by a factor), never empty.
fn bounds(series: &[Series], log_x: bool, log_y: bool) -> ((f64, f64), (f64, f64)) {
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    (pad(x0, x1, log_x, false), pad(y0, y1, log_y, true))
}

fn pad(lo: f64, hi: f64, log: bool, margin: bool) -> (f64, f64) {
    if !lo.is_finite() || !hi.is_finite() {
        return if log { (1.0, 10.0) } else { (0.0, 1.0) };
    }
    if log {
        let (lo, hi) = if hi / lo < 1.5 { (lo / 1.5, hi * 1.5) } else { (lo, hi) };
        return if margin { (lo / 1.2, hi * 1.2) } else { (lo, hi) };
    }
    let span = hi - lo;
    if span <= f64::EPSILON * hi.abs().max(1.0) {
        let d = (hi.abs() * 0.01).max(1e-9);
        return (lo - d, hi + d);
    }
    if margin {
        (lo - span * 0.05, hi + span * 0.05)
    } else {
        (lo, hi)
    }
}

fn draw<X, Y>(
    builder: &mut ChartBuilder<'_, '_, BitMapBackend<'_>>,
    x: X,
    y: Y,
    chart: &Chart,
    series: &[Series],
    empty: bool,
) -> Result<(), String>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut ctx = builder.build_cartesian_2d(x, y).map_err(|e| e.to_string())?;
    let names = &chart.x_names;
    let x_tick = |v: &f64| {
        if names.is_empty() {
            return tick(*v);
        }
        let i = v.round();
        if (v - i).abs() < 1e-6 && i >= 1.0 {
            names.get(i as usize - 1).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let mut mesh = ctx.configure_mesh();
    if !names.is_empty() {
        mesh.x_labels(names.len() + 1);
    }
    mesh.x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .x_label_formatter(&x_tick)
        .y_label_formatter(&|v| tick(*v))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| e.to_string())?;
    if empty {
        let at = (middle(ctx.x_range()), middle(ctx.y_range()));
        ctx.plotting_area().draw(&Text::new("no data", at, ("sans-serif", 24).into_font().color(&BLACK))).map_err(|e| e.to_string())?;
    }
    let mut palette = 0usize;
    let mut legend = false;
    for s in series {
        let color = match s.color {
            Some((r, g, b)) => RGBColor(r, g, b),
            None => {
                palette += 1;
                PALETTE[(palette - 1) % PALETTE.len()]
            }
        };
        if s.points.is_empty() {
            continue;
        }
        let anno = match s.mark {
            Mark::Line => ctx.draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2))).map_err(|e| e.to_string())?,
            Mark::Up => ctx
                .draw_series(s.points.iter().map(|&p| EmptyElement::at(p) + Polygon::new(vec![(0, -6), (-5, 4), (5, 4)], color.filled())))
                .map_err(|e| e.to_string())?,
            Mark::Down => ctx
                .draw_series(s.points.iter().map(|&p| EmptyElement::at(p) + Polygon::new(vec![(0, 6), (-5, -4), (5, -4)], color.filled())))
                .map_err(|e| e.to_string())?,
            Mark::Dot => ctx.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(|e| e.to_string())?,
        };
        if !s.name.is_empty() {
            legend = true;
            anno.label(s.name.as_str()).legend(move |(x, y)| Rectangle::new([(x, y - 4), (x + 14, y + 4)], color.filled()));
        }
    }
    if legend {
        ctx.configure_series_labels()
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Where "no data" goes: about the middle of an axis (geometric middle on a log axis).
fn middle(range: std::ops::Range<f64>) -> f64 {
    if range.start > 0.0 && range.end / range.start > 100.0 {
        (range.start * range.end).sqrt()
    } else {
        range.start + (range.end - range.start) * 0.45
    }
}

/// Tick text: short, no float noise (`0.30000000000000004` → `0.3`), SI suffixes only for
/// values so big that the digits would crowd the axis (an equity of 15,999.8 stays exact).
fn tick(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{}G", trim(v / 1e9))
    } else if a >= 1e7 {
        format!("{}M", trim(v / 1e6))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(0.1 + 0.2), "0.3");
        assert_eq!(tick(-0.0), "0");
        assert_eq!(tick(15_999.8), "15999.8");
        assert_eq!(tick(15_000_000.0), "15M");
        assert_eq!(tick(2.5e9), "2.5G");
        assert_eq!(tick(42.0), "42");
    }

    #[test]
    fn charts_render_at_their_size_even_without_data() {
        let dir = std::env::temp_dir().join(format!("sapphire-charts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.png");
        line_chart(&p, "t", "x", "y", &[("s".into(), vec![(0.0, 1.0), (1.0, 2.0), (2.0, f64::NAN)])], (400, 300)).unwrap();
        let mut c = Chart::new("empty", "x", "y");
        c.log_y = true;
        c.series.push(Series::line("neg", vec![(0.0, -1.0)]));
        let q = dir.join("b.png");
        render(&q, &c).unwrap();
        for path in [&p, &q] {
            let bytes = std::fs::read(path).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        }
        assert!(render(&dir.join("c.png"), &Chart { size: (10, 10), ..c }).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
