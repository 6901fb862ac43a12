//! Engine snapshots on disk: the checksummed file format, the writer thread, and reading them
//! back for recovery (see `sapphire_core::snapshot` for when they are taken and how the engine
//! threads copy their state without stopping).
//!
//! ```text
//! file   = header body                     snapshot-<seq:020>.snap in <data dir>/snapshots
//! header = magic "SAPSNAP1"  format:u32  reserved:u32
//!          seq:u64            the input journal sequence of the event the state is after
//!          ts_event:u64       that event's time
//!          written_ns:u64     wall clock when written
//!          instruments:u64    FNV-1a of the instruments (ids, symbols, venues, filters)
//!          config:u64         FNV-1a of the engine configuration
//!          layout:u64         the engine state's archived layout (`state_layout`)
//!          body_len:u64  body_crc:u32 (CRC32C of the body)  header_crc:u32 (CRC32C of the above)
//!                                            (80 bytes, little-endian)
//! body   = rkyv archive of the engine's `Stages`, validated when read
//! ```
//!
//! A snapshot is written to `<name>.part`, `fsync`ed, renamed into place and the directory
//! `fsync`ed, so a crash leaves the previous snapshots and at most a `.part` file (removed at
//! the next write). The newest `keep` are kept.
//!
//! A snapshot is only used for the engine and instruments it was written for: another
//! configuration or instrument list (or a build whose state layout differs) makes recovery
//! pass over it and replay the journal instead, saying why.

use rkyv::rancor::Error as RkyvError;
use rkyv::util::AlignedVec;
use sapphire_core::engine::{ArchivedStages, EngineConfig, Stages};
use sapphire_core::instrument::Instrument;
use sapphire_core::latency::unix_nanos;
use sapphire_core::release::JournalProgress;
use sapphire_core::snapshot::{fingerprint, state_layout, SnapshotFeed, TapStats};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The magic a snapshot file starts with.
pub const MAGIC: &[u8; 8] = b"SAPSNAP1";
/// The file format's version (the header; the body's layout has its own fingerprint).
pub const FORMAT_VERSION: u32 = 1;
/// Header bytes (a multiple of 16: the body starts aligned for rkyv).
pub const HEADER: usize = 80;
/// Snapshots kept by default.
pub const DEFAULT_KEEP: usize = 3;

/// Where snapshots go and how many stay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// The snapshot directory (`<data dir>/snapshots`).
    pub dir: PathBuf,
    /// The newest this many are kept (at least 1).
    pub keep: usize,
}

/// Why a snapshot cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Not a snapshot, or cut short.
    #[error("not a whole snapshot file ({0})")]
    Format(String),
    /// A checksum does not match: the file was damaged.
    #[error("its {0} checksum does not match: the file is damaged")]
    Checksum(&'static str),
    /// Written for other instruments, another engine configuration, or by a build whose
    /// engine state has another layout.
    #[error("written for {0} than this run's")]
    Mismatch(&'static str),
    /// The body does not decode.
    #[error("its state does not decode: {0}")]
    Archive(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io { path: path.to_path_buf(), source }
}

/// What a snapshot must match to be used: this run's instruments, engine configuration and
/// engine state layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprints {
    /// Of the instruments (`Debug` of the list: ids, symbols, venues, filters).
    pub instruments: u64,
    /// Of the engine configuration (`Debug`).
    pub config: u64,
    /// Of the engine state's layout.
    pub layout: u64,
}

impl Fingerprints {
    /// This run's.
    pub fn new(config: &EngineConfig, instruments: &[Instrument]) -> Self {
        Self {
            instruments: fingerprint(format!("{instruments:?}").as_bytes()),
            config: fingerprint(format!("{config:?}").as_bytes()),
            layout: state_layout(),
        }
    }
}

/// A snapshot's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The input journal sequence of the event the state is after.
    pub seq: u64,
    /// That event's time, ns.
    pub ts_event: u64,
    /// When it was written (wall clock), ns.
    pub written_ns: u64,
    /// What it was written for.
    pub fingerprints: Fingerprints,
    /// Body bytes.
    pub body_len: u64,
    /// CRC32C of the body.
    pub body_crc: u32,
}

impl Header {
    fn encode(&self) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let fields = [
            self.seq,
            self.ts_event,
            self.written_ns,
            self.fingerprints.instruments,
            self.fingerprints.config,
            self.fingerprints.layout,
            self.body_len,
        ];
        for (i, v) in fields.iter().enumerate() {
            h[16 + i * 8..24 + i * 8].copy_from_slice(&v.to_le_bytes());
        }
        h[72..76].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32c::crc32c(&h[..76]);
        h[76..80].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Reads and checks a header (magic, version, checksum).
    pub fn decode(bytes: &[u8]) -> Result<Header, SnapshotError> {
        if bytes.len() < HEADER {
            return Err(SnapshotError::Format(format!("{} bytes, shorter than the {HEADER}-byte header", bytes.len())));
        }
        if &bytes[..8] != MAGIC {
            return Err(SnapshotError::Format("no snapshot magic".into()));
        }
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(bytes[76..80].try_into().expect("4 bytes"));
        if crc != crc32c::crc32c(&bytes[..76]) {
            return Err(SnapshotError::Checksum("header"));
        }
        if version != FORMAT_VERSION {
            return Err(SnapshotError::Format(format!("format version {version}, this build reads {FORMAT_VERSION}")));
        }
        Ok(Header {
            seq: word(16),
            ts_event: word(24),
            written_ns: word(32),
            fingerprints: Fingerprints { instruments: word(40), config: word(48), layout: word(56) },
            body_len: word(64),
            body_crc: u32::from_le_bytes(bytes[72..76].try_into().expect("4 bytes")),
        })
    }
}

/// Encodes the state after event `seq` (in canonical form: see `Stages::canonical_snapshot`).
pub fn encode(seq: u64, ts_event: u64, fingerprints: Fingerprints, stages: &Stages) -> Result<AlignedVec<16>, SnapshotError> {
    let body = rkyv::to_bytes::<RkyvError>(stages).map_err(|e| SnapshotError::Archive(e.to_string()))?;
    let header =
        Header { seq, ts_event, written_ns: unix_nanos(), fingerprints, body_len: body.len() as u64, body_crc: crc32c::crc32c(&body) };
    let mut out = AlignedVec::<16>::with_capacity(HEADER + body.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Checks a snapshot file's bytes (header, checksums, what it was written for, the archive)
/// and decodes its state. The state is as archived: restore it with `Stages::restore`.
pub fn decode(bytes: &[u8], expected: &Fingerprints) -> Result<(Header, Stages), SnapshotError> {
    let header = Header::decode(bytes)?;
    let body = &bytes[HEADER..];
    if body.len() as u64 != header.body_len {
        return Err(SnapshotError::Format(format!("the body has {} bytes, the header says {}", body.len(), header.body_len)));
    }
    if crc32c::crc32c(body) != header.body_crc {
        return Err(SnapshotError::Checksum("body"));
    }
    let found = header.fingerprints;
    if found.layout != expected.layout {
        return Err(SnapshotError::Mismatch("another engine state layout (another build)"));
    }
    if found.instruments != expected.instruments {
        return Err(SnapshotError::Mismatch("other instruments"));
    }
    if found.config != expected.config {
        return Err(SnapshotError::Mismatch("another engine configuration (risk, paper, agents or engine settings changed)"));
    }
    // The body must sit on rkyv's alignment: copy it when the caller's buffer does not.
    let aligned;
    let body = if (body.as_ptr() as usize) % 16 == 0 {
        body
    } else {
        let mut v = AlignedVec::<16>::with_capacity(body.len());
        v.extend_from_slice(body);
        aligned = v;
        &aligned[..]
    };
    let archived = rkyv::access::<ArchivedStages, RkyvError>(body).map_err(|e| SnapshotError::Archive(e.to_string()))?;
    let stages = rkyv::deserialize::<Stages, RkyvError>(archived).map_err(|e| SnapshotError::Archive(e.to_string()))?;
    Ok((header, stages))
}

/// Reads a snapshot file into an aligned buffer.
pub fn read(path: &Path) -> Result<AlignedVec<16>, SnapshotError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len() as usize;
    let mut buf = AlignedVec::<16>::with_capacity(len);
    let mut bytes = Vec::with_capacity(len);
    f.read_to_end(&mut bytes).map_err(io_err(path))?;
    buf.extend_from_slice(&bytes);
    Ok(buf)
}

/// The file name of the snapshot after event `seq`.
pub fn file_name(seq: u64) -> String {
    format!("snapshot-{seq:020}.snap")
}

fn seq_of(path: &Path) -> Option<u64> {
    path.file_name()?.to_str()?.strip_prefix("snapshot-")?.strip_suffix(".snap")?.parse().ok()
}

/// The snapshots in `dir` (by name; not yet checked), oldest first. A missing directory has none.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SnapshotError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut out: Vec<(u64, PathBuf)> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter_map(|p| Some((seq_of(&p)?, p))).collect();
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// Writes a snapshot durably: `.part`, `fsync`, rename, `fsync` of the directory.
pub fn write(dir: &Path, seq: u64, bytes: &[u8]) -> Result<PathBuf, SnapshotError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let path = dir.join(file_name(seq));
    let part = dir.join(format!("{}.part", file_name(seq)));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&part).map_err(io_err(&part))?;
        f.write_all(bytes).map_err(io_err(&part))?;
        f.sync_all().map_err(io_err(&part))?;
        drop(f);
        fs::rename(&part, &path).map_err(io_err(&path))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&part);
    }
    result.map(|()| path)
}

/// Deletes all but the newest `keep` snapshots (and any `.part` left by a crash); returns
/// what it deleted.
pub fn prune(dir: &Path, keep: usize) -> Result<Vec<PathBuf>, SnapshotError> {
    let all = list(dir)?;
    let mut gone = Vec::new();
    for (_, path) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        fs::remove_file(path).map_err(io_err(path))?;
        gone.push(path.clone());
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for p in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            if p.extension().is_some_and(|x| x == "part") {
                let _ = fs::remove_file(&p);
            }
        }
    }
    Ok(gone)
}

/// A snapshot read back and checked, as recovery uses it.
#[derive(Debug)]
pub struct Loaded {
    /// The file.
    pub path: PathBuf,
    /// Its header.
    pub header: Header,
    /// The state, restored into stages sized for this run.
    pub stages: Stages,
}

/// Reads, checks and restores the snapshot at `path`.
pub fn load(path: &Path, config: &EngineConfig, instruments: &[Instrument]) -> Result<Loaded, SnapshotError> {
    let bytes = read(path)?;
    let (header, decoded) = decode(&bytes, &Fingerprints::new(config, instruments))?;
    Ok(Loaded { path: path.to_path_buf(), header, stages: Stages::restore(config, instruments, &decoded) })
}

/// What the snapshot writer has done, for metrics, the status and the summary.
#[derive(Debug, Default)]
pub struct SnapshotStats {
    /// Snapshots written.
    pub written: AtomicU64,
    /// Snapshots that failed to be written (the engine carries on; the next one is tried).
    pub failed: AtomicU64,
    /// Snapshots not written because the input journal failed before holding their event.
    pub unjournaled: AtomicU64,
    /// Sequence of the newest snapshot written (-1: none).
    pub last_seq: AtomicI64,
    /// Wall clock when it was written, ns (0: none).
    pub last_written_ns: AtomicU64,
    /// Its size, bytes.
    pub last_bytes: AtomicU64,
    /// Encoding it took, ns.
    pub last_encode_ns: AtomicU64,
    /// Writing and syncing it took, ns.
    pub last_write_ns: AtomicU64,
    /// Snapshots in the directory.
    pub on_disk: AtomicU64,
    /// The last failure.
    pub last_error: Mutex<Option<String>>,
    /// The engine threads' copies (set when the writer starts).
    pub taps: Mutex<Option<Arc<TapStats>>>,
}

impl SnapshotStats {
    fn new() -> Self {
        let s = Self::default();
        s.last_seq.store(-1, Ordering::Relaxed);
        s
    }

    /// The engine threads' counters, when a writer runs.
    pub fn taps(&self) -> Option<Arc<TapStats>> {
        self.taps.lock().ok().and_then(|t| t.clone())
    }
}

/// The snapshot writer: a thread that takes the engine's copies, waits until the input
/// journal holds their event, encodes and writes them, keeps the newest few.
#[derive(Debug)]
pub struct SnapshotWriter {
    handle: JoinHandle<()>,
    stats: Arc<SnapshotStats>,
}

impl SnapshotWriter {
    /// Starts the writer. It stops once the pipeline has stopped (its taps are gone) and the
    /// last complete snapshot is written.
    pub fn spawn(
        mut feed: SnapshotFeed,
        config: SnapshotConfig,
        fingerprints: Fingerprints,
        journal: Arc<JournalProgress>,
        quiet: bool,
    ) -> Result<SnapshotWriter, SnapshotError> {
        fs::create_dir_all(&config.dir).map_err(io_err(&config.dir))?;
        let stats = Arc::new(SnapshotStats::new());
        if let Ok(mut t) = stats.taps.lock() {
            *t = Some(feed.tap_stats());
        }
        if let Ok(existing) = list(&config.dir) {
            stats.on_disk.store(existing.len() as u64, Ordering::Relaxed);
            // The newest on disk until this run writes one (its age is the metric to watch).
            let newest = existing.iter().rev().find_map(|(_, p)| {
                let mut head = [0u8; HEADER];
                File::open(p).and_then(|mut f| f.read_exact(&mut head)).ok()?;
                Header::decode(&head).ok()
            });
            if let Some(h) = newest {
                stats.last_seq.store(h.seq as i64, Ordering::Relaxed);
                stats.last_written_ns.store(h.written_ns, Ordering::Relaxed);
            }
        }
        let s = Arc::clone(&stats);
        let handle = std::thread::Builder::new()
            .name("sapphire-snapshot".into())
            .spawn(move || writer_loop(&mut feed, &config, fingerprints, &journal, &s, quiet))
            .map_err(io_err(Path::new("the snapshot writer thread")))?;
        Ok(SnapshotWriter { handle, stats })
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<SnapshotStats> {
        Arc::clone(&self.stats)
    }

    /// Waits for it to finish (after the pipeline has stopped).
    pub fn join(self) {
        let _ = self.handle.join();
    }
}

fn writer_loop(
    feed: &mut SnapshotFeed,
    config: &SnapshotConfig,
    fingerprints: Fingerprints,
    journal: &JournalProgress,
    stats: &SnapshotStats,
    quiet: bool,
) {
    let fail = |what: String| {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        if !quiet {
            eprintln!("warning: {what} (the engine carries on; the next snapshot is tried)");
        }
        if let Ok(mut e) = stats.last_error.lock() {
            *e = Some(what);
        }
    };
    loop {
        let taken = match feed.next(Duration::from_millis(200)) {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(_) => break,
        };
        // A snapshot never runs ahead of the journal: recovery replays from its event on.
        let mut waited = 0;
        while journal.through() < taken.seq && !journal.failed() {
            std::thread::sleep(Duration::from_millis(1));
            waited += 1;
            if waited % 10_000 == 0 && !quiet {
                eprintln!("warning: the snapshot of event {} waits for the input journal to hold it ({} s)", taken.seq, waited / 1_000);
            }
        }
        if journal.through() < taken.seq {
            stats.unjournaled.fetch_add(1, Ordering::Relaxed);
            feed.recycle(taken);
            continue;
        }
        let t0 = Instant::now();
        let encoded = encode(taken.seq as u64, taken.ts_event, fingerprints, &taken.stages);
        let seq = taken.seq;
        feed.recycle(taken);
        let bytes = match encoded {
            Ok(b) => b,
            Err(e) => {
                fail(format!("encoding the snapshot of event {seq}: {e}"));
                continue;
            }
        };
        let t1 = Instant::now();
        match write(&config.dir, seq as u64, &bytes) {
            Ok(_) => {
                stats.last_encode_ns.store((t1 - t0).as_nanos() as u64, Ordering::Relaxed);
                stats.last_write_ns.store(t1.elapsed().as_nanos() as u64, Ordering::Relaxed);
                stats.last_bytes.store(bytes.len() as u64, Ordering::Relaxed);
                stats.last_seq.store(seq, Ordering::Relaxed);
                stats.last_written_ns.store(unix_nanos(), Ordering::Relaxed);
                stats.written.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = prune(&config.dir, config.keep) {
                    fail(format!("removing old snapshots: {e}"));
                }
                if let Ok(all) = list(&config.dir) {
                    stats.on_disk.store(all.len() as u64, Ordering::Relaxed);
                }
            }
            Err(e) => fail(format!("writing the snapshot of event {seq}: {e}")),
        }
    }
}
