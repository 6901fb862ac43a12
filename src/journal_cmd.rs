//! `sapphire journal dump DIR [--format jsonl|csv]`: a journal's records for humans and
//! scripts. `sapphire journal repair DIR [--dry-run]`: a damaged journal's damaged part moved
//! aside. `sapphire journal prune DATA_DIR --archive URL`: sealed segments a restart no longer
//! needs archived and deleted (what the core's `[retention]` does); `sapphire journal restore`
//! brings them back. The kind (input or output journal) is read from the segments' magic.
//!
//! A dump of a damaged journal prints the records before the damage, then fails (exit 1)
//! naming it; a dump that ends in a torn tail (a record being written, or what a crash left)
//! says so on stderr.

use anyhow::{bail, Context};
use sapphire_core::engine::Output;
use sapphire_core::event::Event;
use sapphire_persistence::journal::{for_each_backwards, segments, Record, Repaired, Tail, QUARANTINE_DIR};
use sapphire_persistence::text::{event_fields, output_fields, to_csv, to_json, Names, CSV_HEADER};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// CSV with a header row.
    Csv,
}

impl Format {
    /// `jsonl` or `csv`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "jsonl" | "json" => Ok(Format::Jsonl),
            "csv" => Ok(Format::Csv),
            other => bail!("--format {other:?}: use jsonl or csv"),
        }
    }
}

/// What to dump.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// The journal directory (segment files), or a data directory / `journal` directory
    /// holding `input` and `output`.
    pub dir: PathBuf,
    /// Output format.
    pub format: Format,
    /// First record sequence.
    pub from: u64,
    /// At most this many records.
    pub limit: Option<u64>,
}

fn magic(dir: &Path) -> anyhow::Result<[u8; 8]> {
    let segs = segments(dir).with_context(|| format!("listing {}", dir.display()))?;
    let Some(first) = segs.first() else {
        let hint = if dir.join("journal").is_dir() || dir.join("input").is_dir() {
            let base = if dir.join("journal").is_dir() { dir.join("journal") } else { dir.to_path_buf() };
            format!(": it holds journals — dump {} or {}", base.join("input").display(), base.join("output").display())
        } else {
            String::new()
        };
        bail!("{} has no journal segments (*.seg){hint}", dir.display());
    };
    let mut m = [0u8; 8];
    std::fs::File::open(first)
        .and_then(|mut f| f.read_exact(&mut m))
        .with_context(|| format!("reading the header of {}", first.display()))?;
    Ok(m)
}

fn names(dir: &Path) -> Names {
    // The input journal keeps its instrument list; the output journal sits beside it.
    for candidate in [dir.join("instruments.txt"), dir.with_file_name("input").join("instruments.txt")] {
        if let Ok(text) = std::fs::read_to_string(candidate) {
            return Names::from_listing(&text);
        }
    }
    Names::default()
}

/// What a dump read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dumped {
    /// Records written.
    pub records: u64,
    /// What the operator should know about how the journal ended (a torn tail), if anything.
    pub note: Option<String>,
}

/// Writes the records; returns how many. A closed pipe (`| head`) ends the dump quietly.
/// Damage ends it with an error after the records before it are written.
pub fn dump(opts: &DumpOptions, mut out: impl Write) -> anyhow::Result<Dumped> {
    let m = magic(&opts.dir)?;
    let names = names(&opts.dir);
    let mut tail = Tail::open(&opts.dir, opts.from)?;
    let limit = opts.limit.unwrap_or(u64::MAX);
    let mut line = String::with_capacity(512);
    let emitted = std::cell::Cell::new(0u64);
    if opts.format == Format::Csv {
        line.push_str(CSV_HEADER);
        line.push('\n');
    }
    let emit = |seq: u64, fields: sapphire_persistence::text::Fields, line: &mut String| {
        match opts.format {
            Format::Jsonl => to_json(line, seq, &fields),
            Format::Csv => to_csv(line, seq, &fields),
        }
        line.push('\n');
        // Counted here: a poll that meets damage hands out records before it but returns no count.
        emitted.set(emitted.get() + 1);
    };
    let mut to_the_end = false;
    let damage = loop {
        let want = (limit - emitted.get()).min(4_096) as usize;
        if want == 0 {
            break None;
        }
        let polled = if &m == Event::MAGIC {
            tail.poll::<Event>(want, |seq, e| emit(seq, event_fields(e, &names), &mut line))
        } else if &m == Output::MAGIC {
            tail.poll::<Output>(want, |seq, o| emit(seq, output_fields(o, &names), &mut line))
        } else {
            bail!("{} does not hold Sapphire journal segments", opts.dir.display());
        };
        // Records handed out before damage was met are in `line`: they are written first.
        match polled {
            Ok(0) => {
                to_the_end = true;
                break None;
            }
            Ok(_) => {}
            Err(e) => break Some(e),
        }
        match out.write_all(line.as_bytes()) {
            Err(e) if e.kind() == ErrorKind::BrokenPipe => return Ok(Dumped { records: emitted.get(), note: None }),
            r => r.context("writing the dump")?,
        }
        line.clear();
    };
    let records = emitted.get();
    match out.write_all(line.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => return Ok(Dumped { records, note: None }),
        r => r.context("writing the dump")?,
    }
    if let Some(e) = damage {
        return Err(anyhow::Error::new(e).context(format!("journal dump stopped after {records} records")));
    }
    let note = tail.unread().filter(|_| to_the_end).map(|(seg, offset, bytes)| {
        format!(
            "{} ends in {bytes} bytes after its last whole record (byte {offset}): a record still being written, or a torn tail a crash left, which `sapphire run` cuts when it opens the journal",
            seg.display()
        )
    });
    Ok(Dumped { records, note })
}

/// `sapphire journal repair DIR`: finds the first damage and moves it into a quarantine folder
/// (or, with `dry_run`, says what it would move); prints what it did and what it means.
pub fn repair(dir: &Path, dry_run: bool, mut out: impl Write) -> anyhow::Result<()> {
    let m = magic(dir)?;
    let input = &m == Event::MAGIC;
    let repaired = if input {
        sapphire_persistence::journal::repair::<Event>(dir, dry_run)
    } else if &m == Output::MAGIC {
        sapphire_persistence::journal::repair::<Output>(dir, dry_run)
    } else {
        bail!("{} does not hold Sapphire journal segments", dir.display());
    }
    .with_context(|| format!("repairing the journal {}", dir.display()))?;
    let report = repair_report(dir, input, dry_run, &repaired);
    out.write_all(report.as_bytes()).and_then(|_| out.flush()).context("writing the repair report")
}

fn repair_report(dir: &Path, input: bool, dry_run: bool, r: &Repaired) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let kind = if input { "input" } else { "output" };
    let last = r.last_good_seq.map_or("none".to_string(), |seq| seq.to_string());
    let Some(damage) = &r.damage else {
        let _ = writeln!(
            s,
            "journal repair: the {kind} journal {} is clean: {} records, the last sequence {last}; nothing changed",
            dir.display(),
            r.records_kept
        );
        if let Some((seg, offset, bytes)) = &r.torn_tail {
            let _ = writeln!(
                s,
                "it ends in a torn tail of {bytes} bytes at byte {offset} of {} (what a crash leaves); `sapphire run` cuts it when it opens the journal",
                seg.display()
            );
        }
        return s;
    };
    let _ = writeln!(
        s,
        "journal repair: the {kind} journal {} is damaged at byte {} of {}: {}",
        dir.display(),
        damage.offset,
        damage.segment.display(),
        damage.problem
    );
    let _ = writeln!(
        s,
        "kept: {} records, the last good one sequence {last}; the next record appended gets sequence {}",
        r.records_kept, r.next_seq
    );
    let quarantine = r.quarantine.as_deref().unwrap_or(dir);
    let _ = writeln!(s, "{} to {}:", if dry_run { "would move" } else { "moved" }, quarantine.display());
    for m in &r.moved {
        if m.offset == 0 {
            let _ = writeln!(s, "  {} (the whole segment, {} bytes) -> {}", m.from.display(), m.bytes, m.to.display());
        } else {
            let _ =
                writeln!(s, "  {} bytes {}..{} ({} bytes) -> {}", m.from.display(), m.offset, m.offset + m.bytes, m.bytes, m.to.display());
        }
    }
    let _ = writeln!(
        s,
        "The moved bytes are kept, not deleted; nothing reads {}/ (journal dump, replay and run ignore it). Keep them until the incident is closed.",
        dir.join(QUARANTINE_DIR).display()
    );
    if input {
        let _ = writeln!(s, "What it means: events after sequence {last} are no longer in the input journal; a restart rebuilds the engine as of that event, and new events get sequences from {} on.", r.next_seq);
        let output = dir.with_file_name("output");
        if output.is_dir() {
            let mut later = 0u64;
            let after = r.last_good_seq.map_or(-1, |seq| seq as i64);
            let counted = for_each_backwards::<Output>(&output, |_, o| {
                if o.seq > after {
                    later += 1;
                }
                o.seq > after
            });
            match counted {
                Ok(()) => {
                    let _ = writeln!(s, "The output journal {} holds {later} outputs the engine decided on events after sequence {last}, now no longer in the input journal (and so does Postgres, if the sink wrote them): they stay as they were, and a replay of the input journal will not reproduce them.", output.display());
                }
                Err(e) => {
                    let _ = writeln!(
                        s,
                        "The output journal {} could not be read to count its outputs decided on events after sequence {last}: {e}",
                        output.display()
                    );
                }
            }
        }
    } else {
        let _ = writeln!(s, "What it means: outputs after record {last} are no longer in the output journal, and new outputs get record sequences from {} on. A Postgres sink whose cursor is past {} already holds rows of the moved records and would skip new records with those sequences: see the runbook before restarting the sink.", r.next_seq, r.next_seq);
    }
    let _ = writeln!(s, "See docs/runbook.md, \"The journal reports corruption\".");
    if dry_run {
        let _ = writeln!(s, "--dry-run: nothing was changed; run again without --dry-run to move it.");
    }
    s
}

/// What `sapphire journal prune` is asked to do.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// The data directory (`journal/input`, `journal/output`, `snapshots` under it).
    pub data_dir: PathBuf,
    /// Where segments go (a directory, `file:///dir` or `gs://bucket/prefix`).
    pub archive: String,
    /// The shard folder in the archive.
    pub shard: String,
    /// The sink's committed cursor, when known (`--sink-cursor` or `--sink-cursor-file`).
    pub sink: Option<u64>,
    /// Output segments written to within this long stay.
    pub keep_output: std::time::Duration,
    /// Only say what would go.
    pub dry_run: bool,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// `sapphire journal prune`: what the core's retention does, by hand (snapshots checked by
/// their checksums: this command has no engine configuration to check them against).
pub fn prune(opts: &PruneOptions, mut out: impl Write) -> anyhow::Result<()> {
    use sapphire_persistence::retention::{self, Dirs, SnapshotCheck};
    let dirs = Dirs::under(&opts.data_dir);
    anyhow::ensure!(
        dirs.input.is_dir(),
        "{} holds no input journal ({} is missing): give the data directory",
        opts.data_dir.display(),
        dirs.input.display()
    );
    let plan = retention::plan(&dirs, &SnapshotCheck::Checksums, opts.sink, opts.keep_output, std::time::SystemTime::now())?;
    match plan.snapshot {
        Some(s) => writeln!(out, "newest usable snapshot: of event {s}")?,
        None => writeln!(out, "no usable snapshot")?,
    }
    for why in &plan.held {
        writeln!(out, "kept: {why}")?;
    }
    for seg in &plan.segments {
        writeln!(
            out,
            "{} {} ({} records from {}, {:.1} MiB)",
            if opts.dry_run { "would archive and delete" } else { "archive and delete" },
            seg.path.display(),
            seg.end_seq - seg.first_seq,
            seg.first_seq,
            mib(seg.bytes)
        )?;
    }
    if opts.dry_run || plan.segments.is_empty() {
        writeln!(
            out,
            "{} segments, {:.1} MiB{}",
            plan.segments.len(),
            mib(plan.bytes()),
            if opts.dry_run { " (dry run: nothing done)" } else { "" }
        )?;
        return Ok(());
    }
    let archive = retention::Archive::open(&opts.archive, &opts.shard)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting a runtime")?;
    let done = runtime.block_on(retention::apply(&plan, &dirs, &archive))?;
    writeln!(
        out,
        "archived to {} and deleted: {} input and {} output segments, {:.1} MiB freed",
        archive.location(),
        done.input_segments,
        done.output_segments,
        mib(done.bytes)
    )?;
    Ok(())
}

/// `sapphire journal restore`: the archived segments a data directory's journals lack, brought
/// back in front of its local ones (stop the core first).
pub fn restore(data_dir: &Path, archive: &str, shard: &str, mut out: impl Write) -> anyhow::Result<()> {
    use sapphire_persistence::retention::{self, Dirs, INPUT, OUTPUT};
    let dirs = Dirs::under(data_dir);
    let archive = retention::Archive::open(archive, shard)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting a runtime")?;
    for (journal, dir) in [(INPUT, &dirs.input), (OUTPUT, &dirs.output)] {
        let n = runtime.block_on(retention::fetch(&archive, journal, dir))?;
        writeln!(out, "{journal}: {n} segments brought back from {} into {}", archive.location(), dir.display())?;
    }
    Ok(())
}

/// An input journal put together from its archived segments and its local ones, in a folder
/// of its own that is removed when this is dropped (`sapphire replay --archive`).
#[derive(Debug)]
pub struct StagedJournal {
    /// The folder holding every segment.
    pub dir: PathBuf,
    /// Segments that came from the archive.
    pub fetched: usize,
}

impl Drop for StagedJournal {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stages `journal` (an input journal directory) with the archived segments before its first
/// local one: local files are hard-linked (copied across file systems), archived ones fetched.
pub fn stage_with_archive(journal: &Path, archive: &str, shard: &str) -> anyhow::Result<StagedJournal> {
    use sapphire_persistence::retention::{self, INPUT};
    let dir = std::env::temp_dir().join(format!("sapphire-replay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Removed again if anything below fails.
    let mut staged = StagedJournal { dir: dir.clone(), fetched: 0 };
    let mut local = segments(journal).with_context(|| format!("listing {}", journal.display()))?;
    let list = journal.join("instruments.txt");
    if list.exists() {
        local.push(list);
    }
    for p in &local {
        let to = dir.join(p.file_name().unwrap_or_default());
        if std::fs::hard_link(p, &to).is_err() {
            std::fs::copy(p, &to).with_context(|| format!("copying {} to {}", p.display(), to.display()))?;
        }
    }
    let archive = retention::Archive::open(archive, shard)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting a runtime")?;
    staged.fetched = runtime.block_on(retention::fetch(&archive, INPUT, &dir))?;
    Ok(staged)
}
