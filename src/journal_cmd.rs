//! `sapphire journal dump DIR [--format jsonl|csv]`: a journal's records for humans and
//! scripts. The kind (input or output journal) is read from the segments' magic.

use anyhow::{bail, Context};
use sapphire_core::engine::Output;
use sapphire_core::event::Event;
use sapphire_persistence::journal::{segments, Record, Tail};
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

/// Writes the records; returns how many. A closed pipe (`| head`) ends the dump quietly.
pub fn dump(opts: &DumpOptions, mut out: impl Write) -> anyhow::Result<u64> {
    let m = magic(&opts.dir)?;
    let names = names(&opts.dir);
    let mut tail = Tail::open(&opts.dir, opts.from)?;
    let limit = opts.limit.unwrap_or(u64::MAX);
    let mut line = String::with_capacity(512);
    let mut written = 0u64;
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
    };
    loop {
        let want = (limit - written).min(4_096) as usize;
        if want == 0 {
            break;
        }
        let n = if &m == Event::MAGIC {
            tail.poll::<Event>(want, |seq, e| emit(seq, event_fields(e, &names), &mut line))?
        } else if &m == Output::MAGIC {
            tail.poll::<Output>(want, |seq, o| emit(seq, output_fields(o, &names), &mut line))?
        } else {
            bail!("{} does not hold Sapphire journal segments", opts.dir.display());
        };
        if n == 0 {
            break;
        }
        written += n as u64;
        match out.write_all(line.as_bytes()) {
            Err(e) if e.kind() == ErrorKind::BrokenPipe => return Ok(written),
            r => r.context("writing the dump")?,
        }
        line.clear();
    }
    match out.write_all(line.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(written),
        r => r.context("writing the dump").map(|_| written),
    }
}
