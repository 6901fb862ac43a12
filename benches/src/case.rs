//! One measured case, the comparisons between cases, and their written forms: the
//! `report.json` objects and HdrHistogram's percentile-distribution text (`.hgrm`).

use hdrhistogram::Histogram;
use std::fmt::Write as _;

/// Highest latency a case records, ns (higher values are clamped): 100 s.
pub const MAX_NS: u64 = 100_000_000_000;

/// A latency histogram in nanoseconds, 3 significant digits (0.1% resolution).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("static histogram bounds are valid")
}

/// Records `ns` (clamped to the histogram's range) and never fails.
#[inline]
pub fn record(h: &mut Histogram<u64>, ns: u64) {
    let _ = h.record(ns.clamp(1, MAX_NS));
}

/// Which part of the suite a case belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Group {
    /// One hop between two pinned threads.
    Hop,
    /// The whole engine, tick in to order out.
    Engine,
    /// Feed parsing and book updates.
    Feed,
    /// Journal appends.
    Journal,
    /// The Postgres sink.
    Sink,
    /// Exchange WebSocket to the engine on loopback.
    EndToEnd,
    /// Order routing: encode, sign, and the router to the wire.
    Venue,
}

impl Group {
    /// Parses a part's name: `hop`, `engine`, `feed`, `journal`, `sink`, `e2e`, `venue`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hop" => Some(Group::Hop),
            "engine" => Some(Group::Engine),
            "feed" => Some(Group::Feed),
            "journal" => Some(Group::Journal),
            "sink" => Some(Group::Sink),
            "e2e" | "end-to-end" => Some(Group::EndToEnd),
            "venue" => Some(Group::Venue),
            _ => None,
        }
    }

    /// Heading used in the report.
    pub fn title(self) -> &'static str {
        match self {
            Group::Hop => "One hop between pinned threads (64-byte payload)",
            Group::Engine => "The engine, tick in to order out",
            Group::Feed => "Feed parsing",
            Group::Journal => "Journal append",
            Group::Sink => "Postgres sink",
            Group::EndToEnd => "End to end on loopback: exchange WebSocket → feed client → engine",
            Group::Venue => "Order routing: encode and sign, router → HTTP request on loopback",
        }
    }
}

/// One measured case: a latency distribution, a rate, or both.
#[derive(Clone, Debug)]
pub struct Case {
    /// Stable name (file names and JSON keys derive from it): `[a-z0-9_]+`.
    pub name: String,
    /// The part of the suite.
    pub group: Group,
    /// What was measured, in a sentence.
    pub what: String,
    /// Latency in ns, when the case measures latency.
    pub latency: Option<Histogram<u64>>,
    /// Events (messages, frames, records) per second, when the case measures a rate.
    pub events_per_sec: Option<f64>,
}

impl Case {
    /// A latency case (with a rate when one was measured).
    pub fn latency(name: impl Into<String>, group: Group, what: impl Into<String>, h: Histogram<u64>, rate: Option<f64>) -> Self {
        Self { name: name.into(), group, what: what.into(), latency: Some(h), events_per_sec: rate }
    }

    /// A throughput-only case.
    pub fn rate(name: impl Into<String>, group: Group, what: impl Into<String>, events_per_sec: f64) -> Self {
        Self { name: name.into(), group, what: what.into(), latency: None, events_per_sec: Some(events_per_sec) }
    }

    /// The value at quantile `q` (0..=1), ns; `None` without latency or samples.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        self.latency.as_ref().filter(|h| !h.is_empty()).map(|h| h.value_at_quantile(q))
    }

    /// Median, ns.
    pub fn p50(&self) -> Option<u64> {
        self.quantile(0.5)
    }

    /// Samples recorded (0 for throughput-only cases).
    pub fn samples(&self) -> u64 {
        self.latency.as_ref().map_or(0, Histogram::len)
    }

    /// The `report.json` object: `{name, p50_ns, p99_ns, p999_ns, max_ns, events_per_sec}`
    /// plus `group`, `samples` and `what`; figures a case did not measure are `null`.
    pub fn to_json(&self) -> serde_json::Value {
        let max = self.latency.as_ref().filter(|h| !h.is_empty()).map(Histogram::max);
        serde_json::json!({
            "name": self.name,
            "group": format!("{:?}", self.group).to_lowercase(),
            "p50_ns": self.quantile(0.5),
            "p99_ns": self.quantile(0.99),
            "p999_ns": self.quantile(0.999),
            "max_ns": max,
            "events_per_sec": self.events_per_sec.filter(|r| r.is_finite()).map(|r| r.round()),
            "samples": self.samples(),
            "what": self.what,
        })
    }
}

/// A named comparison from the same run: ours ÷ theirs.
#[derive(Clone, Debug)]
pub struct Ratio {
    /// Key in `report.json`'s `ratios`, e.g. `engine_fused_vs_crossbeam_p50`.
    pub name: String,
    /// Ours ÷ theirs (for latency, < 1 means ours is lower; for rates, > 1 means ours is faster).
    pub value: f64,
    /// What was divided by what.
    pub what: String,
}

impl Ratio {
    /// The ratio of two cases' medians (ours ÷ theirs); `None` if either has no latency.
    pub fn p50(name: &str, ours: &Case, theirs: &Case) -> Option<Self> {
        let (a, b) = (ours.p50()?, theirs.p50()?);
        Some(Self { name: name.into(), value: a as f64 / b.max(1) as f64, what: format!("p50 {} ÷ {}", ours.name, theirs.name) })
    }

    /// The ratio of two cases' p99s (ours ÷ theirs).
    pub fn p99(name: &str, ours: &Case, theirs: &Case) -> Option<Self> {
        let (a, b) = (ours.quantile(0.99)?, theirs.quantile(0.99)?);
        Some(Self { name: name.into(), value: a as f64 / b.max(1) as f64, what: format!("p99 {} ÷ {}", ours.name, theirs.name) })
    }

    /// The ratio of two cases' rates (ours ÷ theirs).
    pub fn rate(name: &str, ours: &Case, theirs: &Case) -> Option<Self> {
        let (a, b) = (ours.events_per_sec?, theirs.events_per_sec?);
        (b > 0.0).then(|| Self { name: name.into(), value: a / b, what: format!("events/s {} ÷ {}", ours.name, theirs.name) })
    }
}

/// HdrHistogram's percentile distribution text (the `.hgrm` format its plotter and tools
/// read), values in microseconds, five ticks per half distance.
pub fn hgrm(h: &Histogram<u64>) -> String {
    const SCALE: f64 = 1_000.0;
    let mut out = String::new();
    let _ = writeln!(out, "{:>12} {:>14} {:>10} {:>14}\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
    if !h.is_empty() {
        // TotalCount is cumulative (the count up to this value), as HdrHistogram writes it.
        let mut total = 0u64;
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / SCALE;
            if q < 1.0 {
                let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10} {:14.2}", 1.0 / (1.0 - q));
            } else {
                let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10}");
            }
        }
    }
    let _ = writeln!(out, "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]", h.mean() / SCALE, h.stdev() / SCALE);
    let _ = writeln!(out, "#[Max     = {:12.3}, Total count    = {:12}]", h.max() as f64 / SCALE, h.len());
    let sub_buckets = (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two();
    let _ = writeln!(out, "#[Buckets = {:12}, SubBuckets     = {:12}]", h.buckets(), sub_buckets);
    out
}

/// Points of the percentile curve for plotting: `(1/(1-q), value_us)`, the x axis of
/// HdrHistogram's plotter (1 = p0, 10 = p90, 100 = p99, 1000 = p99.9), up to p99.999 or the
/// maximum, whichever the sample count reaches first.
pub fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    // Past 1/(1-q) = samples the curve is the maximum: stop there.
    let end = (h.len() as f64).clamp(1.0, 100_000.0);
    let mut pts = Vec::new();
    let mut x = 1.0f64;
    while x < end {
        pts.push((x, h.value_at_quantile(1.0 - 1.0 / x) as f64 / 1_000.0));
        x *= 1.25;
    }
    pts.push((end, h.max() as f64 / 1_000.0));
    pts
}

/// A plain-text table of cases and then ratios, for the bench harnesses' output.
pub fn table(cases: &[Case], ratios: &[Ratio]) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{:<48} {:>10} {:>10} {:>10} {:>12} {:>14} {:>9}", "case", "p50", "p99", "p99.9", "max", "events/s", "samples");
    let f = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| format!("{v}ns"));
    for c in cases {
        let max = c.latency.as_ref().filter(|h| !h.is_empty()).map(Histogram::max);
        let rate = c.events_per_sec.map_or_else(|| "-".to_string(), |r| format!("{r:.0}"));
        let _ = writeln!(
            o,
            "{:<48} {:>10} {:>10} {:>10} {:>12} {:>14} {:>9}",
            c.name,
            f(c.p50()),
            f(c.quantile(0.99)),
            f(c.quantile(0.999)),
            f(max),
            rate,
            c.samples()
        );
    }
    for r in ratios {
        let _ = writeln!(o, "ratio {:<42} {:>8.3}  ({})", r.name, r.value, r.what);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_lists_rising_percentiles_and_the_totals() {
        let mut h = histogram();
        for v in 1..=10_000u64 {
            record(&mut h, v * 10);
        }
        let text = hgrm(&h);
        let rows: Vec<(f64, f64)> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty() && !l.contains("Value"))
            .map(|l| {
                let mut f = l.split_whitespace();
                (f.next().unwrap().parse().unwrap(), f.next().unwrap().parse().unwrap())
            })
            .collect();
        assert!(rows.len() > 20, "{text}");
        assert!(rows.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1), "values and percentiles rise: {text}");
        let (last_value, last_q) = *rows.last().unwrap();
        assert!((last_q - 1.0).abs() < 1e-12);
        assert!((last_value - 100.0).abs() < 0.2, "max 100 µs, got {last_value}");
        assert!(text.contains("Total count    =        10000"), "{text}");
        let last_total: u64 =
            text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split_whitespace().nth(2)?.parse().ok()).next_back().unwrap();
        assert_eq!(last_total, 10_000, "the TotalCount column is cumulative");
        // The median row sits near 50 µs.
        let median = rows.iter().find(|r| r.1 >= 0.5).unwrap();
        assert!((median.0 - 50.0).abs() < 0.2, "{median:?}");
    }

    #[test]
    fn empty_cases_write_nulls_not_zeros() {
        let c = Case::latency("x", Group::Hop, "nothing", histogram(), None);
        let j = c.to_json();
        assert!(j["p50_ns"].is_null() && j["max_ns"].is_null() && j["events_per_sec"].is_null(), "{j}");
        assert!(hgrm(&histogram()).contains("Total count    =            0"));
        assert!(percentile_curve(&histogram()).is_empty());
        let r = Case::rate("y", Group::Feed, "rate", 1234.4);
        assert_eq!(r.to_json()["events_per_sec"], 1234.0);
        assert!(Ratio::p50("n", &c, &r).is_none());
    }

    #[test]
    fn ratios_are_ours_over_theirs() {
        let mut a = histogram();
        let mut b = histogram();
        record(&mut a, 100);
        record(&mut b, 400);
        let ours = Case::latency("ours", Group::Hop, "", a, Some(4.0));
        let theirs = Case::latency("theirs", Group::Hop, "", b, Some(1.0));
        assert!((Ratio::p50("r", &ours, &theirs).unwrap().value - 0.25).abs() < 0.01);
        assert!((Ratio::rate("r", &ours, &theirs).unwrap().value - 4.0).abs() < 1e-9);
    }
}
