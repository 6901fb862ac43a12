//! The whole suite in one run, and its written report: `report.md`, `report.json` and one
//! `.hgrm` percentile distribution per latency case.
//!
//! `report.json`:
//!
//! ```text
//! {
//!   "cases":  [{"name", "group", "p50_ns", "p99_ns", "p999_ns", "max_ns", "events_per_sec",
//!               "samples", "what"}],          // figures a case did not measure are null
//!   "ratios": {"<comparison>": ours ÷ theirs},  // e.g. "engine_fused_vs_crossbeam_p50"
//!   "ratio_definitions": {"<comparison>": "p50 <ours> ÷ <theirs>"},
//!   "machine": {"cpu_model", "cores", "kernel", "load_at_start", "steal_pct", "loaded"},
//!   "pinning": {"held", "layout", "threads": [{"thread", "outcome", "held"}]},
//!   "scale", "elapsed_s", "started_unix_ns", "notes": [..]
//! }
//! ```

use crate::case::{hgrm, Case, Group, Ratio};
use crate::hop::Transport;
use crate::lab::{CpuTimes, Lab, Machine, Pacing, PinEntry, Scale};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Progress steps of a part of the suite.
fn steps(g: Group) -> usize {
    match g {
        Group::Hop => 18,
        Group::Engine => 9,
        Group::Feed => 2,
        Group::Journal => 3,
        Group::EndToEnd => 4,
        Group::Sink => 0,
        Group::Venue => 2,
    }
}

/// A finished run.
#[derive(Debug)]
pub struct Suite {
    /// The size it ran at.
    pub scale: Scale,
    /// The machine.
    pub machine: Machine,
    /// Every case, in run order.
    pub cases: Vec<Case>,
    /// Comparisons, ours ÷ theirs.
    pub ratios: Vec<Ratio>,
    /// What the reader must know (data sources, failures, skipped parts).
    pub notes: Vec<String>,
    /// Every thread pin the cases made.
    pub pins: Vec<PinEntry>,
    /// All pins succeeded and held.
    pub pins_held: bool,
    /// How producer and consumer were placed.
    pub layout: String,
    /// Wall time of the run, s.
    pub elapsed_s: f64,
    /// When it started, Unix ns.
    pub started_unix_ns: u64,
}

/// Runs the parts in `only` (every part when empty); `progress(step, total, label)` before
/// each step.
pub fn run(lab: &Lab, only: &[Group], progress: &mut dyn FnMut(usize, usize, &str)) -> Suite {
    let started = std::time::Instant::now();
    let started_unix_ns = sapphire_core::latency::unix_nanos();
    let mut machine = Machine::describe(lab.cores);
    let cpu_before = CpuTimes::read();
    let wanted = |g: Group| only.is_empty() || only.contains(&g);
    let total: usize = GROUPS.iter().filter(|g| wanted(**g)).map(|g| steps(*g)).sum();
    let mut step = 0;
    let mut tick = |label: &str| {
        step += 1;
        progress(step.min(total), total, label);
    };
    let mut cases = Vec::new();
    let mut notes = Vec::new();
    if wanted(Group::Hop) {
        cases.extend(crate::hop::suite(lab, &mut tick));
    }
    if wanted(Group::Engine) {
        cases.extend(crate::engine::suite(lab, &mut tick));
        cases.extend(crate::api_attack::suite(lab, &mut tick));
    }
    if wanted(Group::Feed) {
        let (feed, note) = crate::feed::suite(lab, &mut tick);
        cases.extend(feed);
        notes.push(format!("feed: {note}"));
    }
    if wanted(Group::Journal) {
        cases.extend(crate::journal::suite(lab, &mut tick));
        notes.push(format!(
            "journal: scratch directory {} (fsync cost depends on the device; EveryRecord pays one per event)",
            lab.scratch.display()
        ));
    }
    if wanted(Group::EndToEnd) {
        let (e2e, n) = crate::loopback::suite(lab, &mut tick);
        cases.extend(e2e);
        notes.extend(n);
    }
    if wanted(Group::Venue) {
        cases.extend(crate::venue::suite(lab, &mut tick));
    }
    if wanted(Group::Sink) {
        notes.push(
            "sink: the Postgres sink's rows/s is benches/benches/sink.rs (cargo bench -p sapphire-benches --bench sink); \
             it exposes no library function, so this report does not include it"
                .into(),
        );
    }
    if let (Some(a), Some(b)) = (cpu_before, CpuTimes::read()) {
        machine.steal_pct = b.steal_pct_since(&a);
    }
    let ratios = ratios(&cases);
    Suite {
        scale: lab.scale,
        machine,
        cases,
        ratios,
        notes,
        pins: lab.pins.entries(),
        pins_held: lab.pins.all_held(),
        layout: lab.layout_note(),
        elapsed_s: started.elapsed().as_secs_f64(),
        started_unix_ns,
    }
}

/// The named comparisons, from whichever cases ran.
pub fn ratios(cases: &[Case]) -> Vec<Ratio> {
    let find = |n: &str| cases.iter().find(|c| c.name == n);
    let mut out = Vec::new();
    let mut add = |r: Option<Ratio>| out.extend(r);
    let paced = Pacing::Interval(1_000).label();
    let burst = Pacing::Burst { size: 16, period: 16_000 }.label();
    for t in &Transport::ALL[1..] {
        let theirs = t.label();
        let pair = |mode: &str| (find(&format!("hop_ring_{mode}")), find(&format!("hop_{theirs}_{mode}")));
        if let (Some(a), Some(b)) = pair(&paced) {
            add(Ratio::p50(&format!("hop_ring_vs_{theirs}_p50"), a, b));
            add(Ratio::p99(&format!("hop_ring_vs_{theirs}_p99"), a, b));
        }
        if let (Some(a), Some(b)) = pair(&burst) {
            add(Ratio::p99(&format!("hop_ring_vs_{theirs}_burst_p99"), a, b));
        }
        if let (Some(a), Some(b)) = pair("flood") {
            add(Ratio::rate(&format!("hop_ring_vs_{theirs}_flood_rate"), a, b));
        }
    }
    add(crate::api_attack::ratio(cases));
    let e2e = |who: &str| find(&format!("engine_{who}_paced_5us_end_to_end"));
    for ours in ["fused", "split"] {
        for theirs in ["crossbeam", "tokio"] {
            if let (Some(a), Some(b)) = (e2e(ours), e2e(theirs)) {
                add(Ratio::p50(&format!("engine_{ours}_vs_{theirs}_p50"), a, b));
                add(Ratio::p99(&format!("engine_{ours}_vs_{theirs}_p99"), a, b));
            }
        }
    }
    // The issue-18 target: a frame's first event crosses the ring as fast as one hop (≤ 2×).
    if let Some(hop) = find(&format!("hop_ring_{paced}")) {
        for prefix in ["e2e", "e2e_exchange_pinned", "e2e_spot"] {
            if let Some(first) = find(&format!("{prefix}_first_publish_to_pickup")) {
                let name = if prefix == "e2e" {
                    "e2e_first_pickup_vs_hop_ring_p50".to_string()
                } else {
                    format!("{prefix}_first_pickup_vs_hop_ring_p50")
                };
                add(Ratio::p50(&name, first, hop));
            }
        }
    }
    if let (Some(a), Some(b)) = (find("feed_parse_ours"), find("feed_parse_serde_json")) {
        add(Ratio::rate("feed_parse_ours_vs_serde_json_rate", a, b));
    }
    if let (Some(a), Some(b)) = (find("venue_binance_encode_sign"), find("venue_hmac_floor")) {
        add(Ratio::p99("venue_encode_sign_vs_hmac_p99", a, b));
    }
    if let (Some(a), Some(b)) = (find("venue_router_to_wire"), find("venue_reqwest_to_wire")) {
        add(Ratio::p50("venue_router_vs_reqwest_p50", a, b));
        add(Ratio::p99("venue_router_vs_reqwest_p99", a, b));
    }
    out
}

fn ns(v: Option<u64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v >= 10_000_000 => format!("{:.1} ms", v as f64 / 1e6),
        Some(v) if v >= 10_000 => format!("{:.1} µs", v as f64 / 1e3),
        Some(v) => format!("{v} ns"),
    }
}

fn rate(v: Option<f64>) -> String {
    match v {
        Some(r) if r.is_finite() && r >= 1e6 => format!("{:.2} M", r / 1e6),
        Some(r) if r.is_finite() && r >= 1e3 => format!("{:.1} k", r / 1e3),
        Some(r) if r.is_finite() => format!("{r:.0}"),
        _ => "–".into(),
    }
}

/// The groups in report order.
pub const GROUPS: [Group; 7] = [Group::Hop, Group::Engine, Group::Feed, Group::Journal, Group::Sink, Group::EndToEnd, Group::Venue];

/// Plot file name for a group's percentile curves, relative to the output directory.
pub fn plot_name(g: Group) -> String {
    format!("plots/{}.png", format!("{g:?}").to_lowercase())
}

impl Suite {
    /// The report as Markdown; `plots` are the plot files that were written.
    pub fn markdown(&self, plots: &[(Group, String)]) -> String {
        let m = &self.machine;
        let mut o = String::new();
        let _ = writeln!(o, "# Sapphire latency report\n");
        let _ = writeln!(o, "Scale: {:?}; {:.1} s; written by `sapphire bench`.\n", self.scale, self.elapsed_s);
        let _ = writeln!(o, "## Machine\n");
        let _ = writeln!(o, "- CPU: {} ({} cores available), kernel {}", m.cpu_model, m.cores, m.kernel);
        let load = m.load_at_start.map_or_else(|| "unknown".into(), |l| format!("{l:.2}"));
        let _ = writeln!(
            o,
            "- Load average at start: {load}{}",
            if m.was_loaded() { " — **a loaded machine: absolute numbers are pessimistic; compare ratios within this run**" } else { "" }
        );
        let _ = writeln!(o, "- Steal time during the run: {}", m.steal_pct.map_or_else(|| "unknown".into(), |s| format!("{s:.2}%")));
        let failed: Vec<&PinEntry> = self.pins.iter().filter(|p| !p.held).collect();
        let _ = writeln!(
            o,
            "- Pinning: {}; {}",
            self.layout,
            if self.pins_held {
                format!("all {} pins held", self.pins.len())
            } else {
                format!("{} of {} pins did NOT hold", failed.len(), self.pins.len())
            }
        );
        for p in failed.iter().take(10) {
            let _ = writeln!(o, "  - {}: {:?}", p.thread, p.outcome);
        }
        let _ = writeln!(o, "\nLatencies are open-loop, from the scheduled send time (no coordinated omission), in ns unless marked. Ratios are ours ÷ theirs from this run.\n");
        for g in GROUPS {
            let cases: Vec<&Case> = self.cases.iter().filter(|c| c.group == g).collect();
            if cases.is_empty() {
                continue;
            }
            let _ = writeln!(o, "## {}\n", g.title());
            let _ = writeln!(o, "| case | p50 | p99 | p99.9 | max | events/s | samples |");
            let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|");
            for c in &cases {
                let max = c.latency.as_ref().filter(|h| !h.is_empty()).map(hdrhistogram::Histogram::max);
                let _ = writeln!(
                    o,
                    "| `{}` | {} | {} | {} | {} | {} | {} |",
                    c.name,
                    ns(c.p50()),
                    ns(c.quantile(0.99)),
                    ns(c.quantile(0.999)),
                    ns(max),
                    rate(c.events_per_sec),
                    c.samples()
                );
            }
            let _ = writeln!(o);
            for c in &cases {
                let _ = writeln!(o, "- `{}`: {}", c.name, c.what);
            }
            for (pg, file) in plots {
                if *pg == g {
                    let _ = writeln!(o, "\n![{} percentile curves]({file})", g.title());
                }
            }
            let _ = writeln!(o);
        }
        if !self.ratios.is_empty() {
            let _ = writeln!(o, "## Ratios (ours ÷ theirs, same run)\n");
            let _ = writeln!(o, "Latency ratios below 1 and rate ratios above 1 favour ours.\n");
            let _ = writeln!(o, "| comparison | value | definition |");
            let _ = writeln!(o, "|---|---:|---|");
            for r in &self.ratios {
                let _ = writeln!(o, "| `{}` | {:.3} | {} |", r.name, r.value, r.what);
            }
            let _ = writeln!(o);
        }
        let _ = writeln!(o, "## Notes\n");
        for n in &self.notes {
            let _ = writeln!(o, "- {n}");
        }
        let _ = writeln!(o, "\nPercentile distributions: `hgrm/<case>.hgrm` (HdrHistogram text format, values in µs).");
        o
    }

    /// `report.json`.
    pub fn json(&self) -> serde_json::Value {
        let m = &self.machine;
        serde_json::json!({
            "cases": self.cases.iter().map(Case::to_json).collect::<Vec<_>>(),
            "ratios": self.ratios.iter().map(|r| (r.name.clone(), serde_json::json!((r.value * 1e4).round() / 1e4))).collect::<serde_json::Map<_, _>>(),
            "ratio_definitions": self.ratios.iter().map(|r| (r.name.clone(), serde_json::json!(r.what))).collect::<serde_json::Map<_, _>>(),
            "machine": {
                "cpu_model": m.cpu_model,
                "cores": m.cores,
                "kernel": m.kernel,
                "load_at_start": m.load_at_start,
                "steal_pct": m.steal_pct,
                "loaded": m.was_loaded(),
            },
            "pinning": {
                "held": self.pins_held,
                "layout": self.layout,
                "threads": self.pins.iter().map(|p| serde_json::json!({"thread": p.thread, "outcome": format!("{:?}", p.outcome), "held": p.held})).collect::<Vec<_>>(),
            },
            "scale": format!("{:?}", self.scale).to_lowercase(),
            "elapsed_s": (self.elapsed_s * 1e3).round() / 1e3,
            "started_unix_ns": self.started_unix_ns,
            "notes": self.notes,
        })
    }

    /// Writes `report.json`, `report.md` (linking `plots`) and `hgrm/<case>.hgrm` into `dir`;
    /// returns the files written.
    pub fn write(&self, dir: &Path, plots: &[(Group, String)]) -> std::io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir.join("hgrm"))?;
        let mut written = Vec::new();
        for c in &self.cases {
            if let Some(h) = &c.latency {
                let p = dir.join("hgrm").join(format!("{}.hgrm", c.name));
                std::fs::write(&p, hgrm(h))?;
                written.push(p);
            }
        }
        let p = dir.join("report.json");
        let text = serde_json::to_string_pretty(&self.json()).map_err(std::io::Error::other)?;
        std::fs::write(&p, text + "\n")?;
        written.push(p);
        let p = dir.join("report.md");
        std::fs::write(&p, self.markdown(plots))?;
        written.push(p);
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::{histogram, record};

    fn case(name: &str, group: Group, p50: u64, rate: f64) -> Case {
        let mut h = histogram();
        record(&mut h, p50);
        Case::latency(name, group, "t", h, Some(rate))
    }

    #[test]
    fn ratios_name_each_comparison_present() {
        let cases = vec![
            case("hop_ring_paced_1us", Group::Hop, 100, 1.0),
            case("hop_tokio_mpsc_paced_1us", Group::Hop, 400, 1.0),
            case("engine_fused_paced_5us_end_to_end", Group::Engine, 1_000, 10.0),
            case("engine_crossbeam_paced_5us_end_to_end", Group::Engine, 4_000, 5.0),
        ];
        let r = ratios(&cases);
        let get = |n: &str| r.iter().find(|x| x.name == n).map(|x| x.value);
        assert!((get("hop_ring_vs_tokio_mpsc_p50").unwrap() - 0.25).abs() < 0.01);
        assert!((get("engine_fused_vs_crossbeam_p50").unwrap() - 0.25).abs() < 0.01);
        assert!(get("engine_split_vs_crossbeam_p50").is_none(), "no split case, no ratio");
        assert!(get("hop_ring_vs_arrayqueue_p50").is_none());
    }
}
