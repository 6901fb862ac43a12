//! The journals: the input journal (every inbound event) and the output journal (every engine
//! output), appended in order to segment files, each record framed with its length, sequence
//! number and a CRC32C, the record itself an rkyv archive. A [`Record`] type names the kind;
//! its magic keeps an input journal from being read as an output journal.
//!
//! ```text
//! segment  = header record*            header = magic first_seq:u64le   (16 bytes)
//!                                      magic  = b"SAPJRNL1" (events) | b"SAPOUTJ1" (outputs)
//! record   = len:u32le crc:u32le seq:u64le payload[len] pad   (pad to 16 bytes)
//! crc      = CRC32C(seq bytes ++ payload)
//! ```
//!
//! Segments roll at a configured size and are named by their first sequence. Opening a
//! journal scans the last segment and truncates a torn tail (a record cut short or failing
//! its CRC — what a crash mid-write leaves), reporting how many bytes and records it
//! dropped. Readers map sealed segments read-only and read the last one (which a writer may
//! still extend or truncate) into an aligned buffer; either way each archive is used in place,
//! after validating its bytes (they came from disk).
//!
//! # Durability
//! - [`Durability::EveryRecord`]: `fsync` after each record. Nothing acknowledged is lost even
//!   if the machine loses power; costs a disk flush per event (milliseconds on most disks).
//! - [`Durability::EveryMs`]: `fsync` at most every N ms (and on flush/shutdown). A power loss
//!   can lose the last N ms; a process crash (SIGKILL) loses nothing the OS already has.
//! - [`Durability::Os`]: never `fsync`; the OS writes back when it likes (typically within
//!   30 s). A process crash loses nothing; a power loss or kernel panic can lose seconds.

use rkyv::rancor::Error as RkyvError;
use rkyv::util::AlignedVec;
use sapphire_core::engine::{ArchivedOutput, Output};
use sapphire_core::event::{ArchivedEvent, Event};
use sapphire_core::journal::InputJournal;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const HEADER: usize = 16;
const RECORD_HEADER: usize = 16;
/// Records and the payloads in them start on this boundary (rkyv archives need alignment).
pub const ALIGN: usize = 16;
/// No record archive comes near this; a larger length is corruption.
const MAX_PAYLOAD: usize = 4_096;

/// A kind of journal record: fixed-size engine types archived with rkyv.
pub trait Record: Sized {
    /// The segment magic of journals of this kind.
    const MAGIC: &'static [u8; 8];
    /// Archives `self` into `scratch` (cleared by the caller), returning the buffer.
    fn encode(&self, scratch: AlignedVec<ALIGN>) -> Result<AlignedVec<ALIGN>, JournalError>;
    /// True when `bytes` hold a valid archive of this kind (bytes from disk are checked).
    fn validate(bytes: &[u8]) -> bool;
    /// Reads a validated archive.
    fn decode(bytes: &[u8]) -> Result<Self, JournalError>;
}

macro_rules! record {
    ($ty:ty, $archived:ty, $magic:expr) => {
        impl Record for $ty {
            const MAGIC: &'static [u8; 8] = $magic;
            fn encode(&self, scratch: AlignedVec<ALIGN>) -> Result<AlignedVec<ALIGN>, JournalError> {
                rkyv::api::high::to_bytes_in::<_, RkyvError>(self, scratch).map_err(|e| JournalError::Archive(e.to_string()))
            }
            fn validate(bytes: &[u8]) -> bool {
                rkyv::access::<$archived, RkyvError>(bytes).is_ok()
            }
            fn decode(bytes: &[u8]) -> Result<Self, JournalError> {
                let archived = rkyv::access::<$archived, RkyvError>(bytes).map_err(|e| JournalError::Archive(e.to_string()))?;
                rkyv::deserialize::<$ty, RkyvError>(archived).map_err(|e| JournalError::Archive(e.to_string()))
            }
        }
    };
}
record!(Event, ArchivedEvent, b"SAPJRNL1");
record!(Output, ArchivedOutput, b"SAPOUTJ1");

/// When appended records are forced to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `fsync` after every record.
    EveryRecord,
    /// `fsync` at most every this many milliseconds.
    EveryMs(u64),
    /// Leave it to the OS.
    Os,
}

/// Journal settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// Directory of the segment files.
    pub dir: PathBuf,
    /// A new segment starts once the current one reaches this size.
    pub segment_bytes: u64,
    /// When to `fsync`.
    pub durability: Durability,
}

impl JournalConfig {
    /// Defaults for `dir`: 64 MiB segments, `fsync` every 10 ms.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), segment_bytes: 64 << 20, durability: Durability::EveryMs(10) }
    }
}

/// Errors of the journal. I/O errors are fatal to the journal: the engine must not run on
/// without its record.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file system refused.
    #[error("journal I/O on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A segment that is not a journal segment (wrong magic or header).
    #[error("{path} is not a journal segment")]
    NotASegment {
        /// The file.
        path: PathBuf,
    },
    /// A record could not be archived or read (never expected for fixed-size records).
    #[error("archiving a record: {0}")]
    Archive(String),
    /// A reader found damage where records must be whole (not a tail still being written).
    #[error("journal {path}: corrupt record at byte {offset}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.to_path_buf(), source }
}

/// What opening the journal found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segments found.
    pub segments: usize,
    /// Valid records found.
    pub records: u64,
    /// Bytes cut from a torn tail.
    pub truncated_bytes: u64,
    /// Records in that tail that had a complete header (0 when only a partial header was cut).
    pub truncated_records: u64,
    /// The sequence the next append gets.
    pub next_seq: u64,
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

fn padded(len: usize) -> usize {
    (RECORD_HEADER + len).div_ceil(ALIGN) * ALIGN
}

/// Segments of `dir`, in sequence order.
pub fn segments(dir: &Path) -> Result<Vec<PathBuf>, JournalError> {
    let mut segs: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "seg")).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_err(dir)(e)),
    };
    segs.sort();
    Ok(segs)
}

/// A segment's bytes: memory-mapped when sealed, read into an aligned buffer when it is the
/// last one (the one a writer appends to, and truncates after a crash).
enum SegmentBytes {
    Mapped(memmap2::Mmap),
    Owned(AlignedVec<ALIGN>),
}

impl std::ops::Deref for SegmentBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            SegmentBytes::Mapped(m) => m,
            SegmentBytes::Owned(v) => v,
        }
    }
}

/// Reads a whole segment into an aligned buffer.
fn load(path: &Path) -> Result<AlignedVec<ALIGN>, JournalError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let mut buf = AlignedVec::<ALIGN>::with_capacity(bytes.len());
    buf.extend_from_slice(&bytes);
    Ok(buf)
}

/// A segment for reading: sealed segments (every one but the last) are mapped read-only and
/// read in place — no copy, no allocation, pages shared with the page cache; the last one is
/// read, because a writer may still append to it, or truncate its torn tail when it reopens
/// after a crash, and a mapping of a file that shrinks faults (SIGBUS) when touched past the
/// new end. Sealed segments are never modified: the writer refuses damage inside them.
fn open_segment(path: &Path, sealed: bool) -> Result<SegmentBytes, JournalError> {
    if !sealed {
        return Ok(SegmentBytes::Owned(load(path)?));
    }
    let file = File::open(path).map_err(io_err(path))?;
    if file.metadata().map_err(io_err(path))?.len() == 0 {
        return Ok(SegmentBytes::Owned(AlignedVec::new()));
    }
    // SAFETY: the mapping is read-only and the file is a sealed segment, which nothing writes
    // or truncates (see above); a concurrent delete (retention) unlinks the name, not the
    // mapped pages. Records are read through `next_record`, which bounds-checks every length.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))?;
    Ok(SegmentBytes::Mapped(map))
}

/// One valid record found by a scan.
struct Scanned {
    seq: u64,
    payload: std::ops::Range<usize>,
}

/// What [`next_record`] found at an offset.
enum Next {
    /// A valid record; the next one starts at `end`.
    Record(Scanned, usize),
    /// Not enough bytes for the record its header announces (or for a header).
    Short,
    /// A complete record that fails its checks.
    Bad,
}

/// Reads the record at `at`, checking its length, CRC and archive.
fn next_record<R: Record>(buf: &[u8], at: usize) -> Next {
    if at + RECORD_HEADER > buf.len() {
        return Next::Short;
    }
    let len = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(buf[at + 4..at + 8].try_into().expect("4 bytes"));
    let seq = u64::from_le_bytes(buf[at + 8..at + 16].try_into().expect("8 bytes"));
    if len == 0 || len > MAX_PAYLOAD {
        return Next::Bad;
    }
    let end = at + padded(len);
    if end > buf.len() {
        return Next::Short;
    }
    let payload = at + RECORD_HEADER..at + RECORD_HEADER + len;
    let mut check = crc32c::crc32c(&seq.to_le_bytes());
    check = crc32c::crc32c_append(check, &buf[payload.clone()]);
    if check != crc || !R::validate(&buf[payload.clone()]) {
        return Next::Bad;
    }
    Next::Record(Scanned { seq, payload }, end)
}

fn check_header<R: Record>(buf: &[u8], path: &Path) -> Result<(), JournalError> {
    if buf.len() < HEADER || &buf[..8] != R::MAGIC {
        return Err(JournalError::NotASegment { path: path.to_path_buf() });
    }
    Ok(())
}

/// Walks a segment's records; returns them and the offset where validity ends.
fn scan<R: Record>(buf: &[u8], path: &Path) -> Result<(Vec<Scanned>, usize, u64), JournalError> {
    check_header::<R>(buf, path)?;
    let mut records = Vec::new();
    let mut at = HEADER;
    let mut torn_with_header = 0;
    while at + RECORD_HEADER <= buf.len() {
        match next_record::<R>(buf, at) {
            Next::Record(r, end) => {
                records.push(r);
                at = end;
            }
            Next::Short | Next::Bad => {
                torn_with_header = 1;
                break;
            }
        }
    }
    Ok((records, at, torn_with_header))
}

/// Appends records to a journal. Single writer (the input journal's is the journal stage).
#[derive(Debug)]
pub struct JournalWriter<R: Record = Event> {
    config: JournalConfig,
    file: BufWriter<File>,
    path: PathBuf,
    segment_len: u64,
    next_seq: u64,
    last_sync: Instant,
    dirty: bool,
    scratch: AlignedVec<ALIGN>,
    appended: u64,
    errors: u64,
    first_error: Option<String>,
    kind: PhantomData<fn(&R)>,
}

impl<R: Record> JournalWriter<R> {
    /// Opens (or creates) the journal in `config.dir`, truncating a torn tail.
    pub fn open(config: JournalConfig) -> Result<(Self, Recovery), JournalError> {
        fs::create_dir_all(&config.dir).map_err(io_err(&config.dir))?;
        let segs = segments(&config.dir)?;
        let mut recovery = Recovery { segments: segs.len(), ..Recovery::default() };
        for (i, seg) in segs.iter().enumerate() {
            let buf = open_segment(seg, i + 1 < segs.len())?;
            let (records, valid_end, torn) = scan::<R>(&buf, seg)?;
            recovery.records += records.len() as u64;
            if let Some(last) = records.last() {
                recovery.next_seq = last.seq + 1;
            } else if i == 0 || recovery.next_seq == 0 {
                recovery.next_seq = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
            }
            if valid_end < buf.len() {
                if i + 1 != segs.len() {
                    // Damage inside an older segment is not a torn tail: refuse to guess.
                    return Err(JournalError::Io {
                        path: seg.clone(),
                        source: io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("corrupt record at byte {valid_end} of a sealed segment"),
                        ),
                    });
                }
                recovery.truncated_bytes = (buf.len() - valid_end) as u64;
                recovery.truncated_records = torn;
                let f = OpenOptions::new().write(true).open(seg).map_err(io_err(seg))?;
                f.set_len(valid_end as u64).map_err(io_err(seg))?;
                f.sync_all().map_err(io_err(seg))?;
            }
        }
        let (path, file, segment_len) = match segs.last() {
            Some(last) => {
                let mut f = OpenOptions::new().append(true).open(last).map_err(io_err(last))?;
                let len = f.seek(SeekFrom::End(0)).map_err(io_err(last))?;
                (last.clone(), f, len)
            }
            None => {
                let (p, f) = Self::create_segment(&config.dir, recovery.next_seq)?;
                (p, f, HEADER as u64)
            }
        };
        let writer = Self {
            file: BufWriter::with_capacity(1 << 16, file),
            path,
            segment_len,
            next_seq: recovery.next_seq,
            last_sync: Instant::now(),
            dirty: false,
            scratch: AlignedVec::with_capacity(512),
            appended: 0,
            errors: 0,
            first_error: None,
            config,
            kind: PhantomData,
        };
        Ok((writer, recovery))
    }

    fn create_segment(dir: &Path, first_seq: u64) -> Result<(PathBuf, File), JournalError> {
        let path = dir.join(segment_name(first_seq));
        let mut f = OpenOptions::new().create_new(true).append(true).open(&path).map_err(io_err(&path))?;
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(R::MAGIC);
        header[8..].copy_from_slice(&first_seq.to_le_bytes());
        f.write_all(&header).map_err(io_err(&path))?;
        f.sync_all().map_err(io_err(&path))?;
        // The new file's name must survive a crash too.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok((path, f))
    }

    /// Appends one record; returns its sequence.
    pub fn append_record(&mut self, record: &R) -> Result<u64, JournalError> {
        self.scratch.clear();
        let bytes = record.encode(std::mem::take(&mut self.scratch))?;
        let len = bytes.len();
        let seq = self.next_seq;
        if self.segment_len + padded(len) as u64 > self.config.segment_bytes && self.segment_len > HEADER as u64 {
            self.roll(seq)?;
        }
        let mut crc = crc32c::crc32c(&seq.to_le_bytes());
        crc = crc32c::crc32c_append(crc, &bytes);
        let mut header = [0u8; RECORD_HEADER];
        header[..4].copy_from_slice(&(len as u32).to_le_bytes());
        header[4..8].copy_from_slice(&crc.to_le_bytes());
        header[8..].copy_from_slice(&seq.to_le_bytes());
        let pad = padded(len) - RECORD_HEADER - len;
        let path = &self.path;
        self.file.write_all(&header).map_err(io_err(path))?;
        self.file.write_all(&bytes).map_err(io_err(path))?;
        self.file.write_all(&[0u8; ALIGN][..pad]).map_err(io_err(path))?;
        self.scratch = bytes;
        self.segment_len += padded(len) as u64;
        self.next_seq += 1;
        self.appended += 1;
        self.dirty = true;
        match self.config.durability {
            Durability::EveryRecord => self.sync()?,
            Durability::EveryMs(ms) if self.last_sync.elapsed() >= Duration::from_millis(ms) => self.sync()?,
            _ => {}
        }
        Ok(seq)
    }

    fn roll(&mut self, first_seq: u64) -> Result<(), JournalError> {
        self.sync()?;
        let (path, file) = Self::create_segment(&self.config.dir, first_seq)?;
        self.file = BufWriter::with_capacity(1 << 16, file);
        self.path = path;
        self.segment_len = HEADER as u64;
        Ok(())
    }

    /// Writes out the buffer and `fsync`s (unless the policy is to leave it to the OS, in
    /// which case it only hands the bytes to the OS).
    pub fn sync(&mut self) -> Result<(), JournalError> {
        self.file.flush().map_err(io_err(&self.path))?;
        if self.config.durability != Durability::Os && self.dirty {
            self.file.get_ref().sync_data().map_err(io_err(&self.path))?;
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Hands buffered records to the OS (so tailers see them) and, if the durability policy
    /// is due, `fsync`s: for a writer that goes idle between bursts.
    pub fn flush_idle(&mut self) -> Result<(), JournalError> {
        if !self.dirty {
            return Ok(());
        }
        match self.config.durability {
            Durability::EveryMs(ms) if self.last_sync.elapsed() < Duration::from_millis(ms) => {
                self.file.flush().map_err(io_err(&self.path))
            }
            _ => self.sync(),
        }
    }

    /// The sequence the next append gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends that failed (the journal is then unusable; see [`first_error`](Self::first_error)).
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// The first I/O error, if any.
    pub fn first_error(&self) -> Option<&str> {
        self.first_error.as_deref()
    }
}

impl JournalWriter<Event> {
    /// Appends one event; returns its sequence.
    pub fn append_event(&mut self, event: &Event) -> Result<u64, JournalError> {
        self.append_record(event)
    }
}

impl InputJournal for JournalWriter<Event> {
    fn append(&mut self, _seq: i64, event: &Event, end_of_batch: bool) {
        let result = self.append_event(event).and_then(|_| {
            // Hand each batch to the OS promptly: a process crash then loses nothing.
            if end_of_batch {
                self.file.flush().map_err(io_err(&self.path))
            } else {
                Ok(())
            }
        });
        if let Err(e) = result {
            self.errors += 1;
            if self.first_error.is_none() {
                self.first_error = Some(e.to_string());
            }
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self.sync() {
            self.errors += 1;
            self.first_error.get_or_insert_with(|| e.to_string());
        }
    }

    fn appended(&self) -> u64 {
        self.appended
    }

    fn errors(&self) -> u64 {
        self.errors
    }

    fn first_error(&self) -> Option<String> {
        self.first_error.clone()
    }
}

/// Hands every event of a journal to `f(seq, event)`, in order, one segment in memory at a
/// time, validating each record.
pub fn for_each(dir: &Path, f: impl FnMut(u64, &Event)) -> Result<u64, JournalError> {
    for_each_record(dir, f)
}

/// Hands every record of a journal to `f(seq, record)`, in order, one segment in memory at a
/// time, validating each record.
pub fn for_each_record<R: Record>(dir: &Path, mut f: impl FnMut(u64, &R)) -> Result<u64, JournalError> {
    let mut n = 0;
    let segs = segments(dir)?;
    for (i, seg) in segs.iter().enumerate() {
        let buf = open_segment(seg, i + 1 < segs.len())?;
        let (records, _, _) = scan::<R>(&buf, seg)?;
        for r in records {
            f(r.seq, &R::decode(&buf[r.payload])?);
            n += 1;
        }
    }
    Ok(n)
}

/// Follows a journal as its writer appends to it, across segment rolls: the reader side of
/// the output journal for the Postgres sink and other tailers. It reads only what the writer
/// has handed to the OS; a record still being written (short) is simply not there yet.
#[derive(Debug)]
pub struct Tail {
    dir: PathBuf,
    /// The segment being read and its bytes so far (whole records are consumed from `pos`).
    path: Option<PathBuf>,
    buf: AlignedVec<ALIGN>,
    pos: usize,
    next_seq: u64,
    scratch: Vec<u8>,
}

impl Tail {
    /// A reader that hands out records from `from_seq` on (the next sequence wanted; records
    /// start at 0 and are dense). The directory may not exist yet.
    pub fn open(dir: &Path, from_seq: u64) -> Result<Tail, JournalError> {
        Ok(Tail { dir: dir.to_path_buf(), path: None, buf: AlignedVec::new(), pos: HEADER, next_seq: from_seq, scratch: Vec::new() })
    }

    /// The sequence the next record handed out will have.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The segment holding `seq`: the last one whose first sequence is at most `seq`.
    fn find_segment(&self, seq: u64) -> Result<Option<PathBuf>, JournalError> {
        let segs = segments(&self.dir)?;
        Ok(segs.iter().rev().find(|p| segment_first_seq(p).is_some_and(|first| first <= seq)).or(segs.first()).cloned())
    }

    /// Reads the current segment from the first byte not yet consumed as a whole record (so a
    /// torn tail that the writer truncated and wrote over after a restart is read afresh).
    fn refill(&mut self) -> Result<(), JournalError> {
        let Some(path) = &self.path else { return Ok(()) };
        let keep = self.pos.min(self.buf.len());
        self.buf.resize(keep, 0);
        let mut f = File::open(path).map_err(io_err(path))?;
        f.seek(SeekFrom::Start(keep as u64)).map_err(io_err(path))?;
        self.scratch.clear();
        io::Read::read_to_end(&mut f, &mut self.scratch).map_err(io_err(path))?;
        self.buf.extend_from_slice(&self.scratch);
        Ok(())
    }

    /// Hands up to `max` new records to `f(seq, record)`; `Ok(0)` means nothing new yet.
    pub fn poll<R: Record>(&mut self, max: usize, mut f: impl FnMut(u64, &R)) -> Result<usize, JournalError> {
        if self.path.is_none() {
            match self.find_segment(self.next_seq)? {
                Some(p) => {
                    self.path = Some(p);
                    self.buf.clear();
                    self.pos = HEADER;
                }
                None => return Ok(0),
            }
        }
        let mut handed = 0;
        let mut refilled = false;
        while handed < max {
            if self.buf.len() < HEADER {
                self.refill()?;
                if self.buf.len() < HEADER {
                    return Ok(handed);
                }
            }
            let path = self.path.clone().expect("a segment is open");
            check_header::<R>(&self.buf, &path)?;
            match next_record::<R>(&self.buf, self.pos) {
                Next::Record(r, end) => {
                    self.pos = end;
                    if r.seq < self.next_seq {
                        continue;
                    }
                    f(r.seq, &R::decode(&self.buf[r.payload])?);
                    self.next_seq = r.seq + 1;
                    handed += 1;
                }
                Next::Short | Next::Bad if !refilled => {
                    self.refill()?;
                    refilled = true;
                }
                outcome => {
                    // Nothing more here now. A later segment means this one is sealed: move on
                    // if it ended cleanly, refuse if it ends in damage.
                    let next = segment_after(&self.dir, &path)?;
                    match (next, outcome) {
                        (Some(next), Next::Short) if self.pos == self.buf.len() => {
                            self.path = Some(next);
                            self.buf.clear();
                            self.pos = HEADER;
                            refilled = false;
                        }
                        (Some(_), _) => return Err(JournalError::Corrupt { path, offset: self.pos as u64 }),
                        // The tail is being written (or torn, until the writer reopens and
                        // truncates it): try again at the next poll.
                        (None, _) => return Ok(handed),
                    }
                }
            }
        }
        Ok(handed)
    }
}

/// The last record of a journal (with its sequence), if any: reads only the last segment
/// that holds a record.
pub fn last_record<R: Record>(dir: &Path) -> Result<Option<(u64, R)>, JournalError> {
    for (back, seg) in segments(dir)?.iter().rev().enumerate() {
        let buf = open_segment(seg, back > 0)?;
        let (records, _, _) = scan::<R>(&buf, seg)?;
        if let Some(r) = records.last() {
            return Ok(Some((r.seq, R::decode(&buf[r.payload.clone()])?)));
        }
    }
    Ok(None)
}

/// Hands the records of the last segments to `f`, newest first, until `f` returns false.
pub fn for_each_backwards<R: Record>(dir: &Path, mut f: impl FnMut(u64, &R) -> bool) -> Result<(), JournalError> {
    for (back, seg) in segments(dir)?.iter().rev().enumerate() {
        let buf = open_segment(seg, back > 0)?;
        let (records, _, _) = scan::<R>(&buf, seg)?;
        for r in records.iter().rev() {
            if !f(r.seq, &R::decode(&buf[r.payload.clone()])?) {
                return Ok(());
            }
        }
    }
    Ok(())
}

fn segment_first_seq(path: &Path) -> Option<u64> {
    path.file_stem()?.to_str()?.parse().ok()
}

fn segment_after(dir: &Path, current: &Path) -> Result<Option<PathBuf>, JournalError> {
    Ok(segments(dir)?.into_iter().find(|p| p.as_path() > current))
}

/// Reads every event of a journal, in order, validating each record.
pub fn read_all(dir: &Path) -> Result<Vec<(u64, Event)>, JournalError> {
    let mut out = Vec::new();
    for_each(dir, |seq, e| out.push((seq, *e)))?;
    Ok(out)
}

#[cfg(test)]
mod tests;
