//! `sapphire bench`: runs the latency lab (`sapphire_benches`) and writes `report.md`,
//! `report.json`, one HdrHistogram `.hgrm` file per latency case and PNG plots of the
//! percentile curves (log-scaled "percentile" x axis, as HdrHistogram's plotter draws them).

use crate::charts::{render, Chart, Series};
use anyhow::Context;
use sapphire_benches::case::{percentile_curve, Case, Group};
use sapphire_benches::lab::{Lab, Scale};
use sapphire_benches::suite::{self, Suite};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// `sapphire bench` options.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A short run (well under two minutes on 2 cores): the CI smoke run and a first look.
    #[arg(long)]
    pub quick: bool,
    /// Tiny sizes that only exercise the harness (for tests; the numbers mean nothing).
    #[arg(long, hide = true)]
    pub smoke: bool,
    /// Run only these parts (comma-separated): hop, engine, feed, journal, sink, e2e, venue.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Where the report goes (created if missing).
    #[arg(long, default_value = "target/bench-report")]
    pub out: PathBuf,
}

/// Draws `[#####.....] 12/32 label` on stderr: in place on a terminal, a line per step otherwise.
#[derive(Debug)]
struct Progress {
    tty: bool,
}

impl Progress {
    fn step(&self, done: usize, total: usize, label: &str) {
        let bar = bar(done, total, label);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{bar}");
        } else {
            let _ = writeln!(err, "{bar}");
        }
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.tty {
            errln!();
        }
    }
}

/// The bar for step `done` of `total` (steps done before this one are filled).
fn bar(done: usize, total: usize, label: &str) -> String {
    const WIDTH: usize = 30;
    let filled = (done.min(total).saturating_sub(1) * WIDTH / total.max(1)).min(WIDTH);
    format!("[{}{}] {done:>2}/{total} {label}", "#".repeat(filled), ".".repeat(WIDTH - filled))
}

/// Runs the suite and writes the report into `args.out`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let scale = match (args.smoke, args.quick) {
        (true, _) => Scale::Smoke,
        (false, true) => Scale::Quick,
        (false, false) => Scale::Full,
    };
    let only = args
        .only
        .iter()
        .map(|s| {
            Group::parse(s.trim())
                .ok_or_else(|| crate::config::refuse("--only", format!("{s:?} is not hop, engine, feed, journal, sink, e2e or venue")))
        })
        .collect::<anyhow::Result<Vec<Group>>>()?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating the output directory {}", args.out.display()))?;
    let scratch = args.out.join("scratch");
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let lab = Lab::new(scale, scratch.clone());
    let machine = sapphire_benches::lab::Machine::describe(lab.cores);
    errln!("sapphire bench ({scale:?}): {} × {}; {}", lab.cores, machine.cpu_model, lab.layout_note());
    if machine.was_loaded() {
        errln!(
            "warning: load average {:.2} on {} cores: other work is running; numbers will come from a loaded machine",
            machine.load_at_start.unwrap_or(0.0),
            lab.cores
        );
    }
    let progress = Progress { tty: std::io::stderr().is_terminal() };
    let result = suite::run(&lab, &only, &mut |done, total, label| progress.step(done, total, label));
    progress.finish();
    let _ = std::fs::remove_dir_all(&scratch);
    let plots = plot(&result, &args.out)?;
    let written = result.write(&args.out, &plots).with_context(|| format!("writing the report into {}", args.out.display()))?;
    print_summary(&result);
    outln!("report: {} ({} files, {} plots)", args.out.join("report.md").display(), written.len(), plots.len());
    Ok(())
}

/// Which cases go on which plot: hops by schedule, the engine's end-to-end wirings, the rest
/// by group.
fn plot_sets(s: &Suite) -> Vec<(Group, String, String, Vec<&Case>)> {
    let with = |g: Group, f: &dyn Fn(&Case) -> bool| -> Vec<&Case> {
        s.cases.iter().filter(|c| c.group == g && c.latency.as_ref().is_some_and(|h| !h.is_empty()) && f(c)).collect()
    };
    let mut sets = Vec::new();
    for (mode, title) in [("paced_1us", "paced every 1 µs"), ("burst16_16us", "bursts of 16 every 16 µs"), ("flood", "flood")] {
        sets.push((Group::Hop, format!("hop_{mode}"), format!("One hop, {title}"), with(Group::Hop, &|c| c.name.ends_with(mode))));
    }
    sets.push((
        Group::Engine,
        "engine".into(),
        "Engine: tick in to leaving the route stage".into(),
        with(Group::Engine, &|c| !c.name.ends_with("tick_to_order")),
    ));
    sets.push((Group::Feed, "feed".into(), "Depth apply".into(), with(Group::Feed, &|_| true)));
    sets.push((Group::Journal, "journal".into(), "Journal append per call".into(), with(Group::Journal, &|_| true)));
    sets.push((Group::EndToEnd, "e2e".into(), "End to end on loopback, from frame receipt".into(), with(Group::EndToEnd, &|_| true)));
    sets.push((Group::Venue, "venue".into(), "Order routing: encode + sign, router → wire".into(), with(Group::Venue, &|_| true)));
    sets.retain(|s| !s.3.is_empty());
    sets
}

/// Writes one PNG per plot set into `out/plots`; returns `(group, relative path)`.
fn plot(s: &Suite, out: &Path) -> anyhow::Result<Vec<(Group, String)>> {
    let dir = out.join("plots");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for (group, file, title, cases) in plot_sets(s) {
        let mut chart = Chart::new(title, "percentile as 1/(1−p): 10 = p90, 100 = p99, 1k = p99.9, 10k = p99.99", "latency, µs");
        chart.log_x = true;
        chart.log_y = true;
        chart.size = (1200, 700);
        chart.series = cases.iter().filter_map(|c| c.latency.as_ref().map(|h| Series::line(c.name.clone(), percentile_curve(h)))).collect();
        let rel = format!("plots/{file}.png");
        render(&out.join(&rel), &chart)?;
        written.push((group, rel));
    }
    Ok(written)
}

fn print_summary(s: &Suite) {
    out!("{}", sapphire_benches::case::table(&s.cases, &s.ratios));
    for n in &s.notes {
        outln!("note: {n}");
    }
    let m = &s.machine;
    outln!(
        "machine: {} ({} cores), load at start {}, steal {}, pinning {}",
        m.cpu_model,
        m.cores,
        m.load_at_start.map_or_else(|| "?".into(), |l| format!("{l:.2}")),
        m.steal_pct.map_or_else(|| "?".into(), |p| format!("{p:.2}%")),
        if s.pins_held { "held" } else { "did NOT hold everywhere" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_bar_fills_with_the_steps_and_never_overflows() {
        assert_eq!(bar(1, 10, "a"), format!("[{}]  1/10 a", ".".repeat(30)));
        assert_eq!(bar(6, 10, "b"), format!("[{}{}]  6/10 b", "#".repeat(15), ".".repeat(15)));
        for (done, total) in [(10, 10), (40, 10), (0, 0), (3, 0)] {
            let b = bar(done, total, "x");
            assert_eq!(b.find(']'), Some(31), "{b}");
        }
    }
}
