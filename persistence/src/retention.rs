//! Retention: sealed journal segments that a restart no longer needs are copied to an archive
//! (a directory, or a Google Cloud Storage bucket) and then deleted, so a core's disk and its
//! restart time stay bounded however long it runs.
//!
//! # What may go
//! - **Input journal.** A sealed segment (any but the last) whose every event is at or before
//!   the newest usable snapshot: recovery loads that snapshot and replays only the events
//!   after it. "Usable" is checked as recovery checks it: the snapshot's checksums (and, in
//!   the core, that it was written for this run's instruments and engine configuration), the
//!   input journal holding its event, the output journal holding an output of a later event
//!   (so the snapshot's own outputs are all written), and, when a sink is known, the sink
//!   having committed every output of the events up to the snapshot.
//! - **Output journal.** Only when a sink is known: a sealed segment whose every record the
//!   sink has committed to Postgres, and that has not been written to for `keep_output`
//!   (the daily report reads the last day of outputs from the local journal).
//!
//! Without a known sink the output journal is never pruned: locally it is the trade record.
//!
//! # How
//! Each segment is put into the archive under `<shard>/<input|output>/<segment name>` (the
//! input journal's `instruments.txt` beside them), read back by size, and only then deleted
//! locally (a directory archive's copy is synced to disk first); a segment already in the
//! archive with the same size and ends (a crash between the copy and the delete) is not copied
//! again, and a file under its name that starts differently is never overwritten. Readers that
//! still map a deleted segment keep reading it (an unlinked file lives until unmapped). [`fetch`] brings archived segments back: `sapphire
//! journal restore` and `sapphire replay --archive`.

use crate::journal::{last_seq_quick, record_at, segment_first_seq, segments, JournalError};
use crate::snapshot::{self, Fingerprints};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutPayload};
use sapphire_core::engine::Output;
use sapphire_core::event::Event;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The archive folder of the input journal's segments.
pub const INPUT: &str = "input";
/// The archive folder of the output journal's segments.
pub const OUTPUT: &str = "output";
/// The input journal's instrument list (segments name instruments by id).
const INSTRUMENTS_FILE: &str = "instruments.txt";

/// Why retention could not run.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// The archive location is not one retention can use.
    #[error("archive {spec:?}: {why}")]
    Spec {
        /// What was given.
        spec: String,
        /// Why it cannot be used.
        why: String,
    },
    /// Writing to or reading from the archive failed.
    #[error("archive {archive}: {op} {object}: {why}")]
    Archive {
        /// The archive (its location, no credentials).
        archive: String,
        /// What was being done.
        op: &'static str,
        /// The object.
        object: String,
        /// The store's error.
        why: String,
    },
    /// A journal could not be read.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A local file could not be read, written or deleted.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RetentionError + '_ {
    move |source| RetentionError::Io { path: path.to_path_buf(), source }
}

/// A core's journals and snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirs {
    /// The input journal (`<data dir>/journal/input`).
    pub input: PathBuf,
    /// The output journal (`<data dir>/journal/output`).
    pub output: PathBuf,
    /// The snapshots (`<data dir>/snapshots`).
    pub snapshots: PathBuf,
}

impl Dirs {
    /// The standard layout under a data directory.
    pub fn under(data_dir: &Path) -> Self {
        Self {
            input: data_dir.join("journal").join(INPUT),
            output: data_dir.join("journal").join(OUTPUT),
            snapshots: data_dir.join("snapshots"),
        }
    }
}

/// How a snapshot is checked before the journal before it is let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotCheck {
    /// Checksums, and written for these instruments, engine configuration and build (what
    /// recovery will ask of it): the core's own retention.
    Full(Fingerprints),
    /// Checksums only (`sapphire journal prune`, which has no engine configuration).
    Checksums,
}

/// A sealed segment retention may archive and delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// [`INPUT`] or [`OUTPUT`].
    pub journal: &'static str,
    /// The local file.
    pub path: PathBuf,
    /// Its first record's sequence.
    pub first_seq: u64,
    /// The sequence after its last record (the next segment's first).
    pub end_seq: u64,
    /// Its size.
    pub bytes: u64,
}

/// What may go now, and what holds the rest back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The snapshot the input journal may be pruned up to (the event it is the state after).
    pub snapshot: Option<u64>,
    /// Segments to archive and delete, input first, oldest first.
    pub segments: Vec<Segment>,
    /// Why more is not pruned (for `journal prune` and the log), e.g. no usable snapshot yet.
    pub held: Vec<String>,
}

impl Plan {
    /// Bytes the plan frees.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }
}

/// Checks a snapshot file; returns the event it is the state after.
fn check_snapshot(path: &Path, check: &SnapshotCheck) -> Result<u64, String> {
    let bytes = snapshot::read(path).map_err(|e| e.to_string())?;
    match check {
        SnapshotCheck::Full(fps) => snapshot::decode(&bytes, fps).map(|(h, _)| h.seq).map_err(|e| e.to_string()),
        SnapshotCheck::Checksums => {
            let header = snapshot::Header::decode(&bytes).map_err(|e| e.to_string())?;
            let body = &bytes[snapshot::HEADER..];
            if body.len() as u64 != header.body_len || crc32c::crc32c(body) != header.body_crc {
                return Err("its body checksum does not match: the file is damaged".into());
            }
            Ok(header.seq)
        }
    }
}

/// The sealed segments of a journal with their sequence ranges (the last segment, the one a
/// writer appends to, is never among them).
fn sealed(dir: &Path, journal: &'static str) -> Result<Vec<Segment>, RetentionError> {
    let segs = segments(dir)?;
    let mut out = Vec::new();
    for pair in segs.windows(2) {
        let (Some(first_seq), Some(end_seq)) = (segment_first_seq(&pair[0]), segment_first_seq(&pair[1])) else { continue };
        let bytes = fs::metadata(&pair[0]).map_err(io_err(&pair[0]))?.len();
        out.push(Segment { journal, path: pair[0].clone(), first_seq, end_seq, bytes });
    }
    Ok(out)
}

/// What may be archived and deleted now (see the module docs). `sink`: the sink's committed
/// cursor in the output journal (the next record it has not committed), `None` when no sink is
/// known; `keep_output`: output segments written to within this long stay; `now`: the wall
/// clock (file times are wall clock).
pub fn plan(dirs: &Dirs, check: &SnapshotCheck, sink: Option<u64>, keep_output: Duration, now: SystemTime) -> Result<Plan, RetentionError> {
    let mut plan = Plan::default();
    // The newest usable snapshot.
    // Each pass reads a few records, not segments: it must not sweep the page cache the
    // engine's cores share every few seconds.
    let journal_next = last_seq_quick::<Event>(&dirs.input)?.map(|seq| seq + 1);
    let last_output = last_seq_quick::<Output>(&dirs.output)?;
    let outputs_end = match last_output {
        Some(n) => record_at::<Output>(&dirs.output, n)?.map_or(-1, |o| o.seq),
        None => -1,
    };
    let listed = snapshot::list(&dirs.snapshots)
        .map_err(|e| RetentionError::Io { path: dirs.snapshots.clone(), source: io::Error::other(e.to_string()) })?;
    for (seq, path) in listed.into_iter().rev() {
        if journal_next.is_none_or(|next| seq >= next) {
            plan.held.push(format!("snapshot {}: the input journal does not hold its event", path.display()));
            continue;
        }
        if outputs_end <= seq as i64 {
            plan.held.push(format!(
                "snapshot {}: the output journal holds no output of a later event yet (its outputs may not all be written)",
                path.display()
            ));
            continue;
        }
        match check_snapshot(&path, check) {
            Ok(_) => {
                plan.snapshot = Some(seq);
                break;
            }
            Err(why) => plan.held.push(format!("snapshot {}: {why}", path.display())),
        }
    }
    if let (Some(s), Some(c)) = (plan.snapshot, sink) {
        // Every output of the events up to the snapshot must be committed: the first record
        // the sink has not committed (if any) is of a later event.
        let first_uncommitted = match record_at::<Output>(&dirs.output, c)? {
            Some(o) => Some(o.seq),
            // Beyond the journal's end: everything is committed.
            None if last_output.is_none_or(|last| c > last) => None,
            // There but unreadable (being written): not known to be committed.
            None => Some(i64::MIN),
        };
        if first_uncommitted.is_some_and(|seq| seq <= s as i64) {
            plan.held
                .push(format!("the sink has not committed the outputs of the events up to snapshot {s} yet (its cursor is at output {c})"));
            plan.snapshot = None;
        }
    }
    match plan.snapshot {
        Some(s) => plan.segments.extend(sealed(&dirs.input, INPUT)?.into_iter().filter(|seg| seg.end_seq <= s + 1)),
        None => plan.held.push("no usable snapshot: the input journal stays whole".into()),
    }
    match sink {
        None => plan.held.push("no sink is known: the output journal stays whole (it is the local trade record)".into()),
        Some(c) => {
            for seg in sealed(&dirs.output, OUTPUT)? {
                if seg.end_seq > c {
                    break;
                }
                let modified = fs::metadata(&seg.path).and_then(|m| m.modified()).map_err(io_err(&seg.path))?;
                if now.duration_since(modified).unwrap_or_default() < keep_output {
                    plan.held.push(format!("output segments from {} on were written within the last {keep_output:?}", seg.path.display()));
                    break;
                }
                plan.segments.push(seg);
            }
        }
    }
    Ok(plan)
}

/// Checks an archive location's form without touching it (see [`Archive::open`]).
pub fn check_spec(spec: &str) -> Result<(), String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err("empty: give a directory, file:///dir or gs://bucket/prefix".into());
    }
    if let Some(rest) = spec.strip_prefix("gs://") {
        if rest.split('/').next().unwrap_or_default().is_empty() {
            return Err("no bucket name after gs://".into());
        }
        return Ok(());
    }
    if let Some(path) = spec.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err("file:// needs an absolute path (file:///var/archive)".into());
        }
        return Ok(());
    }
    if spec.contains("://") {
        return Err("only directories, file:// and gs:// archives are supported".into());
    }
    Ok(())
}

/// Where archived segments go: a directory or a bucket, under the shard's folder.
#[derive(Debug, Clone)]
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    root: ObjPath,
    display: String,
    /// The shard's folder when the archive is a directory: object_store's local backend
    /// renames a copy into place without syncing it, so [`Archive::put_file`] syncs the file
    /// and its folder itself before the local segment may go. (A bucket's successful put is
    /// durable.)
    local: Option<PathBuf>,
}

/// Bytes compared at each end of a file already in the archive before it counts as this file's
/// copy.
const COMPARE_BYTES: u64 = 64 * 1024;

impl Archive {
    /// Opens an archive: `gs://bucket[/prefix]` (Google Cloud Storage; credentials from
    /// `GOOGLE_APPLICATION_CREDENTIALS`/`GOOGLE_SERVICE_ACCOUNT` or the GKE metadata server,
    /// through workload identity), `file:///absolute/dir`, or a directory path (created when
    /// missing). Segments go under `<shard>/`.
    pub fn open(spec: &str, shard: &str) -> Result<Archive, RetentionError> {
        let bad = |why: &str| RetentionError::Spec { spec: spec.to_string(), why: why.to_string() };
        check_spec(spec).map_err(|why| bad(&why))?;
        let spec_t = spec.trim();
        if let Some(rest) = spec_t.strip_prefix("gs://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let store = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| bad(&format!("cannot reach Google Cloud Storage: {e}")))?;
            let root = ObjPath::from(format!("{}/{shard}", prefix.trim_matches('/')).trim_start_matches('/'));
            return Ok(Archive {
                store: Arc::new(store),
                root,
                display: format!("gs://{bucket}/{}", prefix.trim_matches('/')),
                local: None,
            });
        }
        let dir = PathBuf::from(spec_t.strip_prefix("file://").unwrap_or(spec_t));
        let shard_dir = dir.join(shard);
        fs::create_dir_all(&shard_dir).map_err(|e| bad(&format!("cannot create {}: {e}", shard_dir.display())))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(&shard_dir)
            .map_err(|e| bad(&format!("cannot open {}: {e}", shard_dir.display())))?;
        Ok(Archive { store: Arc::new(store), root: ObjPath::default(), display: dir.display().to_string(), local: Some(shard_dir) })
    }

    /// The archive's location, for messages (no credentials in it).
    pub fn location(&self) -> &str {
        &self.display
    }

    fn object(&self, journal: &str, name: &str) -> ObjPath {
        let mut p = self.root.clone();
        for part in [journal, name] {
            p = p.child(part);
        }
        p
    }

    fn err(&self, op: &'static str, object: &ObjPath, e: impl std::fmt::Display) -> RetentionError {
        RetentionError::Archive { archive: self.display.clone(), op, object: object.to_string(), why: e.to_string() }
    }

    /// Copies a local file into the archive, checks the copy's size, and (for a directory
    /// archive) syncs it to disk: only then may the local file go.
    ///
    /// An object already there under the name is this file's copy when it has the same size
    /// and the same first and last [`COMPARE_BYTES`] (a crash between the copy and the delete):
    /// it is not copied again. One with the same start but another size or end is an earlier
    /// copy of this file cut short or damaged, and is replaced. One that starts differently is
    /// another file that happens to have the name (two cores writing to one shard folder): an
    /// error, and nothing is overwritten.
    pub async fn put_file(&self, journal: &str, path: &Path) -> Result<(), RetentionError> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let object = self.object(journal, name);
        let len = fs::metadata(path).map_err(io_err(path))?.len();
        match self.store.head(&object).await {
            Ok(meta) => {
                let head = COMPARE_BYTES.min(len).min(meta.size);
                if !self.same_bytes(&object, path, 0..head).await? {
                    return Err(self.err(
                        "checking",
                        &object,
                        "the archive already holds a different file of this name (is another core archiving to the same shard folder?); nothing was overwritten or deleted",
                    ));
                }
                if meta.size == len && self.same_bytes(&object, path, len.saturating_sub(COMPARE_BYTES)..len).await? {
                    return self.sync_local(journal, name);
                }
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.err("checking", &object, e)),
        }
        let bytes = fs::read(path).map_err(io_err(path))?;
        self.store.put(&object, PutPayload::from(bytes)).await.map_err(|e| self.err("writing", &object, e))?;
        let meta = self.store.head(&object).await.map_err(|e| self.err("reading back", &object, e))?;
        if meta.size != len {
            return Err(self.err("reading back", &object, format!("{} bytes in the archive, {len} locally", meta.size)));
        }
        self.sync_local(journal, name)
    }

    /// True when the archived object's bytes in `range` equal the local file's.
    async fn same_bytes(&self, object: &ObjPath, path: &Path, range: std::ops::Range<u64>) -> Result<bool, RetentionError> {
        use std::io::{Read, Seek, SeekFrom};
        if range.is_empty() {
            return Ok(true);
        }
        let theirs = self.store.get_range(object, range.clone()).await.map_err(|e| self.err("comparing", object, e))?;
        let mut ours = vec![0u8; (range.end - range.start) as usize];
        let mut f = File::open(path).map_err(io_err(path))?;
        f.seek(SeekFrom::Start(range.start)).and_then(|_| f.read_exact(&mut ours)).map_err(io_err(path))?;
        Ok(theirs.as_ref() == ours.as_slice())
    }

    /// Syncs a directory archive's copy and its folder (nothing to do for a bucket).
    fn sync_local(&self, journal: &str, name: &str) -> Result<(), RetentionError> {
        let Some(shard_dir) = &self.local else { return Ok(()) };
        let dir = shard_dir.join(journal);
        let copy = dir.join(name);
        File::open(&copy).and_then(|f| f.sync_all()).map_err(io_err(&copy))?;
        sync_dir(&dir)
    }

    /// The archived segments of a journal: (first sequence, file name, size), oldest first.
    pub async fn list(&self, journal: &str) -> Result<Vec<(u64, String, u64)>, RetentionError> {
        use futures_util::TryStreamExt;
        let prefix = self.root.child(journal);
        let metas: Vec<object_store::ObjectMeta> =
            self.store.list(Some(&prefix)).try_collect().await.map_err(|e| self.err("listing", &prefix, e))?;
        let mut out: Vec<(u64, String, u64)> = metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?.to_string();
                let seq = segment_first_seq(Path::new(&name)).filter(|_| name.ends_with(".seg"))?;
                Some((seq, name, m.size))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Copies an archived object into `dir` (through a `.part` file, synced, then renamed).
    pub async fn get_file(&self, journal: &str, name: &str, dir: &Path) -> Result<PathBuf, RetentionError> {
        let object = self.object(journal, name);
        let bytes = self
            .store
            .get(&object)
            .await
            .map_err(|e| self.err("reading", &object, e))?
            .bytes()
            .await
            .map_err(|e| self.err("reading", &object, e))?;
        let path = dir.join(name);
        let part = dir.join(format!("{name}.part"));
        let mut f = File::create(&part).map_err(io_err(&part))?;
        f.write_all(&bytes).and_then(|()| f.sync_all()).map_err(io_err(&part))?;
        fs::rename(&part, &path).map_err(io_err(&path))?;
        sync_dir(dir)?;
        Ok(path)
    }
}

fn sync_dir(dir: &Path) -> Result<(), RetentionError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Input segments archived and deleted.
    pub input_segments: u64,
    /// Output segments archived and deleted.
    pub output_segments: u64,
    /// Bytes freed locally.
    pub bytes: u64,
}

/// Archives each planned segment, then deletes it locally; stops at the first failure (what
/// was done before it stays done, and is counted in the error's absence by the next run).
pub async fn apply(plan: &Plan, dirs: &Dirs, archive: &Archive) -> Result<Applied, RetentionError> {
    let mut done = Applied::default();
    if plan.segments.iter().any(|s| s.journal == INPUT) {
        let list = dirs.input.join(INSTRUMENTS_FILE);
        if list.exists() {
            archive.put_file(INPUT, &list).await?;
        }
    }
    for seg in &plan.segments {
        archive.put_file(seg.journal, &seg.path).await?;
        fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
        if let Some(dir) = seg.path.parent() {
            sync_dir(dir)?;
        }
        done.bytes += seg.bytes;
        match seg.journal {
            INPUT => done.input_segments += 1,
            _ => done.output_segments += 1,
        }
    }
    Ok(done)
}

/// Brings back archived segments of `journal` that `dir` lacks, before its first local one
/// (all of them when it has none), and the instrument list if it is missing. Returns how many
/// segments were fetched.
pub async fn fetch(archive: &Archive, journal: &'static str, dir: &Path) -> Result<usize, RetentionError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let local_first = segments(dir)?.first().and_then(|p| segment_first_seq(p));
    let mut fetched = 0;
    for (seq, name, _) in archive.list(journal).await? {
        if local_first.is_some_and(|first| seq >= first) {
            break;
        }
        archive.get_file(journal, &name, dir).await?;
        fetched += 1;
    }
    if journal == INPUT && !dir.join(INSTRUMENTS_FILE).exists() {
        match archive.get_file(INPUT, INSTRUMENTS_FILE, dir).await {
            Ok(_) | Err(RetentionError::Archive { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(fetched)
}

/// Bytes held by the files directly in `dir` (0 when it does not exist).
pub fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok()?.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// Reads a sink's cursor file (`sapphire sink --cursor-file`): one decimal number, the next
/// output record the sink has not committed. `None` when it is missing or unreadable (nothing
/// is known: the output journal stays, and the input journal waits).
pub fn read_cursor_file(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Writes a cursor file atomically (`.tmp`, then rename).
pub fn write_cursor_file(path: &Path, cursor: u64) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, format!("{cursor}\n"))?;
    fs::rename(&tmp, path)
}

/// Where the worker learns how far the sink has committed.
#[derive(Debug, Clone)]
pub enum SinkCursor {
    /// No sink: the output journal stays whole; the input journal waits only for snapshots.
    None,
    /// The sink in this process.
    InProcess(Arc<crate::pg::SinkStats>),
    /// A sink in another process writing `sapphire sink --cursor-file` (missing or
    /// unreadable: nothing committed yet, so nothing the sink needs goes).
    File(PathBuf),
}

impl SinkCursor {
    fn read(&self) -> Option<u64> {
        match self {
            SinkCursor::None => None,
            SinkCursor::InProcess(stats) => Some(stats.cursor()),
            SinkCursor::File(path) => Some(read_cursor_file(path).unwrap_or(0)),
        }
    }
}

/// What the retention worker has done and sees, for metrics, the status and the summary.
#[derive(Debug, Default)]
pub struct RetentionStats {
    /// Segments archived and deleted: input, output.
    pub archived_segments: [AtomicU64; 2],
    /// Bytes freed locally.
    pub archived_bytes: AtomicU64,
    /// Passes that failed (the archive unreachable, a file unreadable); the next pass retries.
    pub errors: AtomicU64,
    /// Bytes on disk: input journal, output journal, snapshots (at the last pass).
    pub disk_bytes: [AtomicU64; 3],
    /// The event of the snapshot the input journal was last pruned up to (-1: none).
    pub pruned_to: AtomicI64,
    /// The last failure, and the last reason more was held back.
    pub last_error: Mutex<Option<String>>,
}

impl RetentionStats {
    /// Fresh counters.
    pub fn new() -> Arc<Self> {
        let s = Self::default();
        s.pruned_to.store(-1, Ordering::Relaxed);
        Arc::new(s)
    }

    /// Measures the bytes the journals and snapshots hold now (a directory listing each).
    pub fn measure(&self, dirs: &Dirs) {
        for (slot, dir) in self.disk_bytes.iter().zip([&dirs.input, &dirs.output, &dirs.snapshots]) {
            slot.store(dir_bytes(dir), Ordering::Relaxed);
        }
    }

    /// The last failure, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

/// The core's retention settings.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// The archive (see [`Archive::open`]).
    pub archive: String,
    /// The shard folder in the archive.
    pub shard: String,
    /// Time between passes.
    pub every: Duration,
    /// Output segments written to within this long stay.
    pub keep_output: Duration,
    /// Where the sink's cursor comes from.
    pub sink: SinkCursor,
}

/// Runs retention every `config.every` until `stop` is set: measures the disk, plans, archives
/// and deletes. Failures are counted, printed once per distinct message, and retried at the
/// next pass; trading never waits for it.
pub fn spawn(
    config: RetentionConfig,
    dirs: Dirs,
    check: SnapshotCheck,
    stats: Arc<RetentionStats>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, RetentionError> {
    let archive = Archive::open(&config.archive, &config.shard)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| RetentionError::Io { path: PathBuf::from("the retention runtime"), source })?;
    std::thread::Builder::new()
        .name("sapphire-retention".into())
        .spawn(move || {
            let mut printed: Option<String> = None;
            let mut next = std::time::Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if std::time::Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                next = std::time::Instant::now() + config.every;
                stats.measure(&dirs);
                let pass = plan(&dirs, &check, config.sink.read(), config.keep_output, SystemTime::now())
                    .and_then(|p| runtime.block_on(apply(&p, &dirs, &archive)).map(|done| (p, done)));
                match pass {
                    Ok((p, done)) => {
                        stats.archived_segments[0].fetch_add(done.input_segments, Ordering::Relaxed);
                        stats.archived_segments[1].fetch_add(done.output_segments, Ordering::Relaxed);
                        stats.archived_bytes.fetch_add(done.bytes, Ordering::Relaxed);
                        if let (Some(s), true) = (p.snapshot, done.input_segments > 0) {
                            stats.pruned_to.store(s as i64, Ordering::Relaxed);
                        }
                        if done.bytes > 0 {
                            stats.measure(&dirs);
                        }
                        printed = None;
                    }
                    Err(e) => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        let msg = e.to_string();
                        if printed.as_deref() != Some(msg.as_str()) {
                            eprintln!("retention: {msg} (retrying every {:?}; the journal stays until it works)", config.every);
                            printed = Some(msg.clone());
                        }
                        if let Ok(mut last) = stats.last_error.lock() {
                            *last = Some(msg);
                        }
                    }
                }
            }
        })
        .map_err(|source| RetentionError::Io { path: PathBuf::from("the retention thread"), source })
}

#[cfg(test)]
mod tests;
