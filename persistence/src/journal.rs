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
//! Segments roll at a configured size and are named by their first sequence. Readers map
//! sealed segments read-only and read the last one (which a writer may still extend or
//! truncate) into an aligned buffer; either way each archive is used in place, after
//! validating its bytes (they came from disk).
//!
//! # Torn tails and damage
//! Every reader ([`for_each_record`], [`for_each_record_from`], [`Tail`], [`last_record`],
//! [`for_each_backwards`]) checks each record's length, CRC and archive, and that sequences
//! are dense: consecutive within a segment, the first equal to the header's `first_seq`,
//! which equals the file name, and each segment starting where the previous one ended. (The
//! first segment may start past 0: retention prunes the oldest.)
//!
//! The writer's open checks every record of the last segment — the only one a crash can leave
//! torn — and, of each sealed segment, what makes it fit the others: its header, a length that
//! is a whole number of records, and its first and last records (CRC, archive, and sequences
//! running on from the previous segment). Sealed segments are never written again, and every
//! reader checks each record it reads, so a restart costs the same however long the journal
//! is; a sealed segment that fails the quick check is read in full, to name its damage.
//!
//! A *torn tail* is only what a crash can leave at the end of the last segment: fewer bytes
//! than a record header, a record whose header announces more bytes than the file has, zeros
//! (a power loss that kept the file's length but not its data), or one last record failing
//! its checks with nothing but zeros after it; or a header cut short while a segment was being
//! created. Opening the journal cuts it and reports it in [`Recovery`]; readers stop before it.
//!
//! Anything else — a bad record with data after it, a sequence repeated or skipped, a missing
//! or renumbered segment, a torn-looking end of a sealed segment — is *damage*:
//! [`JournalError::Corrupt`] names the segment, the byte offset and the last good sequence, and
//! nothing is changed. [`repair`] (`sapphire journal repair`) moves the damaged part into a
//! quarantine folder inside the journal directory and cuts the segment at its last good record.
//! The append path does none of this work: checks cost only at open and read.
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
    /// Damage that no crash leaves (see [`Damage`]): the journal is refused as it is, never
    /// silently shortened; `sapphire journal repair` moves the damaged part aside.
    #[error("{0}")]
    Corrupt(Box<Damage>),
}

/// Where a journal is damaged and how: what [`JournalError::Corrupt`] reports and
/// [`repair`] acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The segment file.
    pub segment: PathBuf,
    /// The byte of that file where the damage starts (the end of the last good record, or
    /// the header: then the whole segment is suspect).
    pub offset: u64,
    /// What is wrong there.
    pub problem: Problem,
    /// The sequence of the last good record before the damage (`None`: none is readable).
    pub last_good_seq: Option<u64>,
}

/// What is wrong at a [`Damage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A whole record fails its length, CRC or archive check and more data follows it (a
    /// crash leaves at most an incomplete last record).
    BadRecord,
    /// A record has a valid CRC but not the sequence after its predecessor's.
    Sequence {
        /// The sequence that must come next.
        expected: u64,
        /// The one found.
        found: u64,
    },
    /// The header's first sequence disagrees with the file name.
    HeaderSeq {
        /// The file name's.
        named: u64,
        /// The header's.
        header: u64,
    },
    /// A segment does not start where the previous one ended: one is missing or misplaced.
    SegmentStart {
        /// Where the previous segment ended.
        expected: u64,
        /// Where this one starts.
        found: u64,
    },
    /// A segment with later segments after it ends in an incomplete record or zeros.
    SealedTail,
    /// A later segment's header is not one of this journal's (cut short or overwritten).
    Header,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::BadRecord => {
                f.write_str("a record fails its length, CRC or content check and more data follows it (not a torn tail)")
            }
            Problem::Sequence { expected, found } => {
                write!(f, "record sequence out of order: expected {expected}, found {found} (a record repeated, lost or overwritten)")
            }
            Problem::HeaderSeq { named, header } => {
                write!(f, "the segment header says it starts at sequence {header}, its file name says {named}")
            }
            Problem::SegmentStart { expected, found } => write!(
                f,
                "the segment starts at sequence {found}, expected {expected} where the previous segment ends: a segment is missing or out of place"
            ),
            Problem::SealedTail => f.write_str("a segment with later segments after it ends in an incomplete record"),
            Problem::Header => f.write_str("the segment header is not this journal's (cut short or overwritten)"),
        }
    }
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dir = self.segment.parent().unwrap_or(Path::new("."));
        let last = match self.last_good_seq {
            Some(seq) => seq.to_string(),
            None => "none".to_string(),
        };
        write!(
            f,
            "journal damaged: {} at byte {}: {}; last good record: {last}. Nothing was changed. \
             Stop, take a copy of {}, then `sapphire journal repair {}` moves the damaged part aside \
             (docs/runbook.md, \"The journal reports corruption\")",
            self.segment.display(),
            self.offset,
            self.problem,
            dir.display(),
            dir.display()
        )
    }
}

impl From<Damage> for JournalError {
    fn from(d: Damage) -> Self {
        JournalError::Corrupt(Box::new(d))
    }
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
        // Files only: the quarantine folder `repair` fills is not part of the journal.
        Ok(entries) => entries
            .filter_map(|e| e.ok().filter(|e| e.file_type().is_ok_and(|t| t.is_file())).map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect(),
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

/// Reads a whole segment into an aligned buffer (straight into it: one copy, not two).
fn load(path: &Path) -> Result<AlignedVec<ALIGN>, JournalError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len() as usize;
    // One byte more than the file, so the read that finds its end needs no new allocation.
    let mut buf = AlignedVec::<ALIGN>::with_capacity(len + 1);
    buf.extend_from_reader(&mut file).map_err(io_err(path))?;
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
fn next_record<R: Record>(buf: &[u8], at: usize, validate: bool) -> Next {
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
    // The CRC covers the sequence and then the payload, which follows it in the record: one
    // pass over both (the same value as appending the payload to the sequence's CRC).
    let check = record_crc(&buf[at + 8..payload.end]);
    if check != crc || (validate && !R::validate(&buf[payload.clone()])) {
        return Next::Bad;
    }
    Next::Record(Scanned { seq, payload }, end)
}

/// CRC-32C of a record's sequence and payload: the value `crc32c::crc32c` gives. With SSE 4.2
/// (every x86-64 server CPU of the last decade) one plain loop takes eight bytes an
/// instruction: records are about 100 bytes, too short for the crate's three-way interleaved
/// path to pay for its setup (100 instructions a record against about 30). Elsewhere, the crate.
#[inline]
pub(crate) fn record_crc(bytes: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.2") {
            #[allow(unsafe_code)]
            // SAFETY: the CPU has SSE 4.2, checked just above.
            return unsafe { crc32c_sse42(bytes) };
        }
    }
    crc32c::crc32c(bytes)
}

/// CRC-32C (Castagnoli, reflected; initial value and final XOR all ones) through the CPU's
/// `crc32` instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
#[allow(unsafe_code)]
unsafe fn crc32c_sse42(bytes: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let mut words = bytes.chunks_exact(8);
    let mut crc = u64::from(u32::MAX);
    for w in &mut words {
        crc = _mm_crc32_u64(crc, u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]));
    }
    let mut crc = crc as u32;
    for &b in words.remainder() {
        crc = _mm_crc32_u8(crc, b);
    }
    !crc
}

/// True when the bytes from `at` (where the last good record ends) are what a crash can leave
/// in the segment being written: fewer bytes than a record header; zeros only (a power loss
/// that kept the file's new length but not its data); or one last record, cut short or failing
/// its checks, with only zeros after it (the writer's next record, as far as it got). Anything
/// else — above all a bad record with data after it — is damage. `record_len` is the framed
/// length of the segment's earlier records (every record of a kind has the same), if any.
fn is_torn_tail(buf: &[u8], at: usize, record_len: Option<usize>) -> bool {
    let rest = buf.get(at..).unwrap_or_default();
    if rest.len() < RECORD_HEADER || rest.iter().all(|&b| b == 0) {
        return true;
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    if len == 0 || len > MAX_PAYLOAD || record_len.is_some_and(|n| n != padded(len)) {
        return false;
    }
    rest.get(padded(len)..).is_none_or(|after| after.iter().all(|&b| b == 0))
}

/// Where a walk over a journal stands between segments.
#[derive(Debug, Clone, Copy, Default)]
struct Position {
    /// The sequence the next segment must start at (`None` before the first segment read:
    /// a journal may start past 0 once its oldest segments are pruned).
    next_seq: Option<u64>,
    /// The last good record so far.
    last_good: Option<u64>,
}

/// How a segment ends after its last good record.
#[derive(Debug)]
enum SegmentEnd {
    /// The last good record ends the file.
    Clean,
    /// What a crash leaves (see [`is_torn_tail`]); only ever the journal's last segment.
    Torn,
    /// Damage: the journal must not be read past it.
    Damaged(Damage),
}

/// What [`scan`] found in a segment.
#[derive(Debug)]
struct SegmentScan {
    /// The first sequence its name (and header) gives.
    first_seq: u64,
    /// Good records.
    records: u64,
    /// Where the good records end (0 when the header itself is a torn tail).
    valid_end: usize,
    /// Where the walk stands after the good records.
    position: Position,
    end: SegmentEnd,
}

impl SegmentScan {
    fn refuse_damage(self) -> Result<Self, JournalError> {
        match self.end {
            SegmentEnd::Damaged(d) => Err(d.into()),
            _ => Ok(self),
        }
    }
}

/// Walks a segment's records: framing, CRC and archive of each, the header against the file
/// name, and sequences running on from `at` with no gap or repeat; hands each good record to
/// `each`. `last`: the journal's last segment, the only one a crash can leave torn.
/// `kind_known`: an earlier segment showed the journal's kind, so a bad header here is damage
/// rather than a directory of something else. `validate`: check each archive too (false when
/// `each` decodes every record, which validates it, so that it is not checked twice).
fn scan<R: Record>(
    buf: &[u8],
    path: &Path,
    last: bool,
    kind_known: bool,
    at: Position,
    validate: bool,
    mut each: impl FnMut(&Scanned) -> Result<(), JournalError>,
) -> Result<SegmentScan, JournalError> {
    let named = segment_first_seq(path).ok_or_else(|| JournalError::NotASegment { path: path.to_path_buf() })?;
    let damage = |offset: usize, problem: Problem, last_good_seq: Option<u64>| Damage {
        segment: path.to_path_buf(),
        offset: offset as u64,
        problem,
        last_good_seq,
    };
    let mut out = SegmentScan { first_seq: named, records: 0, valid_end: 0, position: at, end: SegmentEnd::Clean };
    out.position.next_seq = Some(named);
    let header_ok = buf.len() >= HEADER && &buf[..8] == R::MAGIC;
    if header_ok {
        let header = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
        if header != named {
            out.end = SegmentEnd::Damaged(damage(8, Problem::HeaderSeq { named, header }, at.last_good));
            return Ok(out);
        }
    } else {
        // A crash while the writer created the segment leaves its header cut short.
        let mut expected = [0u8; HEADER];
        expected[..8].copy_from_slice(R::MAGIC);
        expected[8..].copy_from_slice(&named.to_le_bytes());
        let torn = last && buf.len() < HEADER && (buf == &expected[..buf.len()] || buf.iter().all(|&b| b == 0));
        if !torn {
            if kind_known {
                out.end = SegmentEnd::Damaged(damage(0, Problem::Header, at.last_good));
                return Ok(out);
            }
            return Err(JournalError::NotASegment { path: path.to_path_buf() });
        }
    }
    if let Some(expected) = at.next_seq {
        if named != expected {
            out.end = SegmentEnd::Damaged(damage(0, Problem::SegmentStart { expected, found: named }, at.last_good));
            return Ok(out);
        }
    }
    if !header_ok {
        out.end = SegmentEnd::Torn;
        return Ok(out);
    }
    let mut pos = HEADER;
    let mut next = named;
    let mut record_len = None;
    while pos < buf.len() {
        match next_record::<R>(buf, pos, validate) {
            Next::Record(r, end) => {
                if r.seq != next {
                    let problem = Problem::Sequence { expected: next, found: r.seq };
                    out.end = SegmentEnd::Damaged(damage(pos, problem, out.position.last_good));
                    break;
                }
                each(&r)?;
                record_len = Some(end - pos);
                pos = end;
                next = next.wrapping_add(1);
                out.records += 1;
                out.position.last_good = Some(r.seq);
            }
            Next::Short | Next::Bad => {
                out.end = match (last, is_torn_tail(buf, pos, record_len)) {
                    (true, true) => SegmentEnd::Torn,
                    (false, true) => SegmentEnd::Damaged(damage(pos, Problem::SealedTail, out.position.last_good)),
                    (_, false) => SegmentEnd::Damaged(damage(pos, Problem::BadRecord, out.position.last_good)),
                };
                break;
            }
        }
    }
    out.valid_end = pos;
    out.position.next_seq = Some(next);
    Ok(out)
}

/// The writer's check of a sealed segment at open (see the module docs): its header, a length
/// that is a whole number of records, and its first and last records, which must carry the
/// sequences the length implies, the first running on from `at`. `None` when any of it fails:
/// the caller then scans the segment in full, which names the damage.
fn quick_scan<R: Record>(buf: &[u8], path: &Path, at: Position) -> Option<SegmentScan> {
    let named = segment_first_seq(path)?;
    if buf.len() < HEADER || &buf[..8] != R::MAGIC || buf[8..16] != named.to_le_bytes() {
        return None;
    }
    if at.next_seq.is_some_and(|expected| expected != named) {
        return None;
    }
    let done = |records: u64, last_good: Option<u64>| SegmentScan {
        first_seq: named,
        records,
        valid_end: buf.len(),
        position: Position { next_seq: Some(named + records), last_good },
        end: SegmentEnd::Clean,
    };
    if buf.len() == HEADER {
        return Some(done(0, at.last_good));
    }
    let Next::Record(first, end) = next_record::<R>(buf, HEADER, true) else { return None };
    let size = end - HEADER;
    if first.seq != named || (buf.len() - HEADER) % size != 0 {
        return None;
    }
    let records = ((buf.len() - HEADER) / size) as u64;
    let Next::Record(last, _) = next_record::<R>(buf, buf.len() - size, true) else { return None };
    (last.seq == named + records - 1).then(|| done(records, Some(last.seq)))
}

/// The framed header a segment starting at `first_seq` begins with.
fn segment_header<R: Record>(first_seq: u64) -> [u8; HEADER] {
    let mut header = [0u8; HEADER];
    header[..8].copy_from_slice(R::MAGIC);
    header[8..].copy_from_slice(&first_seq.to_le_bytes());
    header
}

/// Cuts a torn tail off the last segment (and completes a header a crash cut short).
fn cut_torn_tail<R: Record>(seg: &Path, valid_end: usize, first_seq: u64) -> Result<(), JournalError> {
    let mut f = OpenOptions::new().write(true).open(seg).map_err(io_err(seg))?;
    if valid_end < HEADER {
        f.set_len(0).map_err(io_err(seg))?;
        f.write_all(&segment_header::<R>(first_seq)).map_err(io_err(seg))?;
    } else {
        f.set_len(valid_end as u64).map_err(io_err(seg))?;
    }
    f.sync_all().map_err(io_err(seg))
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
    /// The input journal's view: the last ring sequence appended, and the last one handed to
    /// the OS (what the journal gate releases up to).
    last_seq: Option<i64>,
    written: Option<i64>,
    kind: PhantomData<fn(&R)>,
}

impl<R: Record> JournalWriter<R> {
    /// Opens (or creates) the journal in `config.dir`, checking every record and that sequences
    /// run on without a gap or repeat across all segments. A torn tail (what a crash leaves:
    /// see the module docs) is cut and reported in [`Recovery`]; damage anywhere is refused
    /// with [`JournalError::Corrupt`] and nothing is changed.
    pub fn open(config: JournalConfig) -> Result<(Self, Recovery), JournalError> {
        fs::create_dir_all(&config.dir).map_err(io_err(&config.dir))?;
        let segs = segments(&config.dir)?;
        let mut recovery = Recovery { segments: segs.len(), ..Recovery::default() };
        let mut at = Position::default();
        for (i, seg) in segs.iter().enumerate() {
            let last = i + 1 == segs.len();
            let buf = open_segment(seg, !last)?;
            let quick = if last { None } else { quick_scan::<R>(&buf, seg, at) };
            let scanned = match quick {
                Some(s) => s,
                None => scan::<R>(&buf, seg, last, i > 0, at, true, |_| Ok(()))?.refuse_damage()?,
            };
            recovery.records += scanned.records;
            if let SegmentEnd::Torn = scanned.end {
                let cut = &buf[scanned.valid_end..];
                recovery.truncated_bytes = cut.len() as u64;
                recovery.truncated_records = u64::from(cut.len() >= RECORD_HEADER && cut.iter().any(|&b| b != 0));
                drop(buf);
                cut_torn_tail::<R>(seg, scanned.valid_end, scanned.first_seq)?;
            }
            at = scanned.position;
        }
        recovery.next_seq = at.next_seq.unwrap_or(0);
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
            last_seq: None,
            written: None,
            config,
            kind: PhantomData,
        };
        Ok((writer, recovery))
    }

    fn create_segment(dir: &Path, first_seq: u64) -> Result<(PathBuf, File), JournalError> {
        let path = dir.join(segment_name(first_seq));
        let mut f = OpenOptions::new().create_new(true).append(true).open(&path).map_err(io_err(&path))?;
        f.write_all(&segment_header::<R>(first_seq)).map_err(io_err(&path))?;
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

    /// Seals the segment being written: it is synced and a new, empty one starts, so readers
    /// map every record in place instead of reading the last segment into memory (the one a
    /// writer may still change). For a journal written once and then only read (a capture).
    pub fn seal(&mut self) -> Result<(), JournalError> {
        if self.segment_len > HEADER as u64 {
            self.roll(self.next_seq)?;
        }
        self.sync()
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
    fn append(&mut self, seq: i64, event: &Event, end_of_batch: bool) {
        if self.first_error.is_some() {
            // Sticky: after a failed write the file may end in a partial record; appending
            // more would leave a hole in the record the engine is replayed from.
            self.errors += 1;
            return;
        }
        let result = self.append_event(event).and_then(|_| {
            // Hand each batch to the OS promptly: a process crash then loses nothing.
            if end_of_batch {
                self.file.flush().map_err(io_err(&self.path))
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => {
                self.last_seq = Some(seq);
                if end_of_batch {
                    self.written = Some(seq);
                }
            }
            Err(e) => {
                self.errors += 1;
                self.first_error = Some(e.to_string());
            }
        }
    }

    fn flush(&mut self) {
        if self.first_error.is_some() {
            return;
        }
        match self.sync() {
            Ok(()) => self.written = self.last_seq,
            Err(e) => {
                self.errors += 1;
                self.first_error = Some(e.to_string());
            }
        }
    }

    fn written(&self) -> Option<i64> {
        self.written
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
/// time, validating each record and the continuity of sequences. A torn tail at the end (a
/// record being written, or left by a crash) ends the walk; damage is an error, after the
/// records before it were handed out.
pub fn for_each_record<R: Record>(dir: &Path, mut f: impl FnMut(u64, &R)) -> Result<u64, JournalError> {
    let mut n = 0;
    let segs = segments(dir)?;
    let mut at = Position::default();
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        let buf = open_segment(seg, !last)?;
        // Decoding validates the archive: the scan checks only the CRC and the sequence.
        let scanned = scan::<R>(&buf, seg, last, i > 0, at, false, |r| {
            f(r.seq, &R::decode(&buf[r.payload.clone()])?);
            n += 1;
            Ok(())
        })?;
        at = scanned.refuse_damage()?.position;
    }
    Ok(n)
}

/// Hands the records of a journal from sequence `from` on to `f(seq, record)`, in order,
/// reading only the segments that hold them (recovery after a snapshot); checks as
/// [`for_each_record`] does. Returns how many it handed out.
pub fn for_each_record_from<R: Record>(dir: &Path, from: u64, mut f: impl FnMut(u64, &R)) -> Result<u64, JournalError> {
    let mut n = 0;
    let segs = segments(dir)?;
    // The segment holding `from`: the last one that starts at or before it.
    let start = segs.iter().rposition(|p| segment_first_seq(p).is_some_and(|first| first <= from)).unwrap_or(0);
    let mut at = Position::default();
    for (i, seg) in segs.iter().enumerate().skip(start) {
        let last = i + 1 == segs.len();
        let buf = open_segment(seg, !last)?;
        // Records before `from` are skipped, not decoded: the scan validates them.
        let scanned = scan::<R>(&buf, seg, last, i > start, at, true, |r| {
            if r.seq >= from {
                f(r.seq, &R::decode(&buf[r.payload.clone()])?);
                n += 1;
            }
            Ok(())
        })?;
        at = scanned.refuse_damage()?.position;
    }
    Ok(n)
}

/// The sequence the journal in `dir` starts at (its first segment's), if it has a segment:
/// past 0 once retention has pruned its oldest segments.
pub fn first_seq(dir: &Path) -> Result<Option<u64>, JournalError> {
    Ok(segments(dir)?.first().and_then(|p| segment_first_seq(p)))
}

/// Follows a journal as its writer appends to it, across segment rolls: the reader side of
/// the output journal for the Postgres sink and other tailers. It reads only what the writer
/// has handed to the OS; a record still being written (short) is simply not there yet. Damage
/// (a bad record with data after it, a sequence out of order, a segment missing) is an error.
#[derive(Debug)]
pub struct Tail {
    dir: PathBuf,
    /// The segment being read and its bytes so far (whole records are consumed from `pos`).
    path: Option<PathBuf>,
    buf: AlignedVec<ALIGN>,
    pos: usize,
    next_seq: u64,
    /// The sequence the current segment's next record must have; `None` until its header is read.
    expect: Option<u64>,
    /// Where the previous segment read ended: the current one must start there.
    segment_start: Option<u64>,
    /// The last good record read.
    last_good: Option<u64>,
    /// The framed length of the current segment's records.
    record_len: Option<usize>,
    scratch: Vec<u8>,
}

impl Tail {
    /// A reader that hands out records from `from_seq` on (the next sequence wanted; records
    /// start at 0 and are dense). The directory may not exist yet.
    pub fn open(dir: &Path, from_seq: u64) -> Result<Tail, JournalError> {
        Ok(Tail {
            dir: dir.to_path_buf(),
            path: None,
            buf: AlignedVec::new(),
            pos: HEADER,
            next_seq: from_seq,
            expect: None,
            segment_start: None,
            last_good: None,
            record_len: None,
            scratch: Vec::new(),
        })
    }

    /// The sequence the next record handed out will have.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The bytes after the last whole record of the segment being read, as of the last poll —
    /// a record still being written, or a torn tail a crash left (the writer cuts it when it
    /// reopens): the segment, the offset and how many bytes.
    pub fn unread(&self) -> Option<(&Path, u64, u64)> {
        let path = self.path.as_deref()?;
        (self.buf.len() > self.pos).then(|| (path, self.pos as u64, (self.buf.len() - self.pos) as u64))
    }

    /// The segment holding `seq`: the last one whose first sequence is at most `seq`.
    fn find_segment(&self, seq: u64) -> Result<Option<PathBuf>, JournalError> {
        io_point();
        let segs = segments(&self.dir)?;
        Ok(segs.iter().rev().find(|p| segment_first_seq(p).is_some_and(|first| first <= seq)).or(segs.first()).cloned())
    }

    fn start_segment(&mut self, path: PathBuf) {
        self.path = Some(path);
        self.buf.clear();
        self.pos = HEADER;
        self.expect = None;
        self.record_len = None;
    }

    /// Reads the current segment from the first byte not yet consumed as a whole record (so a
    /// torn tail that the writer truncated and wrote over after a restart is read afresh).
    fn refill(&mut self) -> Result<(), JournalError> {
        let Some(path) = &self.path else { return Ok(()) };
        io_point();
        let keep = self.pos.min(self.buf.len());
        self.buf.resize(keep, 0);
        let mut f = File::open(path).map_err(io_err(path))?;
        f.seek(SeekFrom::Start(keep as u64)).map_err(io_err(path))?;
        self.scratch.clear();
        io::Read::read_to_end(&mut f, &mut self.scratch).map_err(io_err(path))?;
        self.buf.extend_from_slice(&self.scratch);
        Ok(())
    }

    fn damage(&self, path: &Path, offset: usize, problem: Problem) -> JournalError {
        Damage { segment: path.to_path_buf(), offset: offset as u64, problem, last_good_seq: self.last_good }.into()
    }

    /// Checks the current segment's header (at least `HEADER` bytes are read) against its name
    /// and the previous segment; returns its first sequence.
    fn check_header<R: Record>(&self, path: &Path) -> Result<u64, JournalError> {
        let named = segment_first_seq(path).ok_or_else(|| JournalError::NotASegment { path: path.to_path_buf() })?;
        if &self.buf[..8] != R::MAGIC {
            return match self.segment_start {
                Some(_) => Err(self.damage(path, 0, Problem::Header)),
                None => Err(JournalError::NotASegment { path: path.to_path_buf() }),
            };
        }
        let header = u64::from_le_bytes(self.buf[8..16].try_into().expect("8 bytes"));
        if header != named {
            return Err(self.damage(path, 8, Problem::HeaderSeq { named, header }));
        }
        match self.segment_start {
            Some(expected) if expected != named => Err(self.damage(path, 0, Problem::SegmentStart { expected, found: named })),
            _ => Ok(named),
        }
    }

    /// Hands up to `max` new records to `f(seq, record)`; `Ok(0)` means nothing new yet.
    /// Damage is an error from the call that meets it first thing: records before it are
    /// handed out by an `Ok` call, so a caller that drops a failed call's batch loses nothing.
    pub fn poll<R: Record>(&mut self, max: usize, mut f: impl FnMut(u64, &R)) -> Result<usize, JournalError> {
        if self.path.is_none() {
            match self.find_segment(self.next_seq)? {
                Some(p) => self.start_segment(p),
                None => return Ok(0),
            }
        }
        let mut handed = 0;
        let mut refilled = false;
        let mut sealed_read = false;
        while handed < max {
            let path = self.path.clone().expect("a segment is open");
            let expect = match self.expect {
                Some(seq) => seq,
                None => {
                    if self.buf.len() < HEADER {
                        self.refill()?;
                    }
                    if self.buf.len() < HEADER {
                        // The writer is creating the segment, unless a later one exists.
                        if segment_after(&self.dir, &path)?.is_none() {
                            return Ok(handed);
                        }
                        self.refill()?;
                        if self.buf.len() < HEADER {
                            return refuse(handed, self.damage(&path, 0, Problem::Header));
                        }
                    }
                    let first = match self.check_header::<R>(&path) {
                        Ok(first) => first,
                        Err(e) => return refuse(handed, e),
                    };
                    self.expect = Some(first);
                    first
                }
            };
            match next_record::<R>(&self.buf, self.pos, true) {
                Next::Record(r, end) => {
                    if r.seq != expect {
                        return refuse(handed, self.damage(&path, self.pos, Problem::Sequence { expected: expect, found: r.seq }));
                    }
                    self.record_len = Some(end - self.pos);
                    self.pos = end;
                    self.expect = Some(expect.wrapping_add(1));
                    self.last_good = Some(r.seq);
                    if r.seq < self.next_seq {
                        continue;
                    }
                    f(r.seq, &R::decode(&self.buf[r.payload])?);
                    self.next_seq = r.seq.wrapping_add(1);
                    handed += 1;
                }
                Next::Short | Next::Bad if !refilled => {
                    self.refill()?;
                    refilled = true;
                }
                Next::Short | Next::Bad => {
                    let Some(next) = segment_after(&self.dir, &path)? else {
                        // The segment being written: a record in progress, or a torn tail
                        // until the writer reopens and cuts it. Try again at the next poll.
                        if is_torn_tail(&self.buf, self.pos, self.record_len) {
                            return Ok(handed);
                        }
                        return refuse(handed, self.damage(&path, self.pos, Problem::BadRecord));
                    };
                    // A later segment exists, so this one is sealed; the writer handed all of
                    // it to the OS before creating the next, so one more read sees it whole.
                    if !sealed_read {
                        self.refill()?;
                        sealed_read = true;
                        continue;
                    }
                    if self.pos == self.buf.len() {
                        self.segment_start = Some(expect);
                        self.start_segment(next);
                        refilled = false;
                        sealed_read = false;
                        continue;
                    }
                    let problem = if is_torn_tail(&self.buf, self.pos, self.record_len) { Problem::SealedTail } else { Problem::BadRecord };
                    return refuse(handed, self.damage(&path, self.pos, problem));
                }
            }
        }
        Ok(handed)
    }
}

/// What a poll that met damage returns: the records it handed out first, if any (the next
/// poll meets the damage again at once, before handing out anything).
fn refuse(handed: usize, damage: JournalError) -> Result<usize, JournalError> {
    if handed > 0 {
        Ok(handed)
    } else {
        Err(damage)
    }
}

/// Checks that `older` (just scanned) ends where `newer` (scanned before it, walking
/// backwards) starts.
fn check_link(older: &SegmentScan, newer: Option<(&Path, u64)>) -> Result<(), JournalError> {
    match (older.position.next_seq, newer) {
        (Some(expected), Some((path, found))) if expected != found => Err(Damage {
            segment: path.to_path_buf(),
            offset: 0,
            problem: Problem::SegmentStart { expected, found },
            last_good_seq: older.position.last_good,
        }
        .into()),
        _ => Ok(()),
    }
}

/// The last record of a journal (with its sequence), if any: reads only the last segment
/// that holds a record (and the empty ones after it), checking them as it goes.
pub fn last_record<R: Record>(dir: &Path) -> Result<Option<(u64, R)>, JournalError> {
    let mut newer: Option<(PathBuf, u64)> = None;
    for (back, seg) in segments(dir)?.iter().rev().enumerate() {
        let buf = open_segment(seg, back > 0)?;
        let mut last = None;
        let scanned = scan::<R>(&buf, seg, back == 0, false, Position::default(), true, |r| {
            last = Some((r.seq, r.payload.clone()));
            Ok(())
        })?
        .refuse_damage()?;
        check_link(&scanned, newer.as_ref().map(|(p, s)| (p.as_path(), *s)))?;
        if let Some((seq, payload)) = last {
            return Ok(Some((seq, R::decode(&buf[payload])?)));
        }
        newer = Some((seg.clone(), scanned.first_seq));
    }
    Ok(None)
}

/// The record with sequence `seq`, read alone: every record of a segment has the same framed
/// length, so it sits at a known offset (the segment's first record gives the length). Checks
/// its length, CRC, sequence and archive. `None` when the journal does not hold it (yet), or
/// the bytes there fail a check (a record being written, a torn tail): callers that must be
/// sure read the journal with [`for_each_record_from`]. Costs two small reads, however large
/// the segment (retention asks this every few seconds).
pub fn record_at<R: Record>(dir: &Path, seq: u64) -> Result<Option<R>, JournalError> {
    let segs = segments(dir)?;
    let Some(seg) = segs.iter().rev().find(|p| segment_first_seq(p).is_some_and(|f| f <= seq)) else { return Ok(None) };
    let first = segment_first_seq(seg).unwrap_or(0);
    let mut file = File::open(seg).map_err(io_err(seg))?;
    let file_len = file.metadata().map_err(io_err(seg))?.len();
    let Some(record_len) = framed_len(&mut file, seg, file_len)? else { return Ok(None) };
    let Some(at) = (seq - first).checked_mul(record_len).and_then(|o| o.checked_add(HEADER as u64)) else { return Ok(None) };
    if at.saturating_add(record_len) > file_len {
        return Ok(None);
    }
    let mut bytes = vec![0u8; record_len as usize];
    file.seek(SeekFrom::Start(at)).map_err(io_err(seg))?;
    io::Read::read_exact(&mut file, &mut bytes).map_err(io_err(seg))?;
    let mut buf = AlignedVec::<ALIGN>::with_capacity(bytes.len());
    buf.extend_from_slice(&bytes);
    match next_record::<R>(&buf, 0, true) {
        Next::Record(r, _) if r.seq == seq => Ok(Some(R::decode(&buf[r.payload])?)),
        _ => Ok(None),
    }
}

/// The framed length of a segment's records, from its first record's header (`None`: no record).
fn framed_len(file: &mut File, path: &Path, file_len: u64) -> Result<Option<u64>, JournalError> {
    if file_len < (HEADER + RECORD_HEADER) as u64 {
        return Ok(None);
    }
    let mut head = [0u8; 4];
    file.seek(SeekFrom::Start(HEADER as u64)).map_err(io_err(path))?;
    io::Read::read_exact(file, &mut head).map_err(io_err(path))?;
    let len = u32::from_le_bytes(head) as usize;
    Ok((len > 0 && len <= MAX_PAYLOAD).then(|| padded(len) as u64))
}

/// The sequence of the journal's last whole record, found from file lengths and read back
/// with [`record_at`] (stepping back over a record being written): `None` when it holds
/// none, or when the end does not read back (callers then hold off). Cheap, like [`record_at`].
pub fn last_seq_quick<R: Record>(dir: &Path) -> Result<Option<u64>, JournalError> {
    let segs = segments(dir)?;
    for (back, seg) in segs.iter().rev().enumerate() {
        let Some(first) = segment_first_seq(seg) else { continue };
        if back > 0 {
            // A sealed segment before an empty last one: it ends where the next begins.
            let next = segs.get(segs.len() - back).and_then(|p| segment_first_seq(p)).unwrap_or(first);
            return Ok(next.checked_sub(1).filter(|&s| s >= first));
        }
        let mut file = File::open(seg).map_err(io_err(seg))?;
        let file_len = file.metadata().map_err(io_err(seg))?.len();
        let Some(record_len) = framed_len(&mut file, seg, file_len)? else { continue };
        let whole = (file_len - HEADER as u64) / record_len;
        for k in (whole.saturating_sub(2)..whole).rev() {
            if record_at::<R>(dir, first + k)?.is_some() {
                return Ok(Some(first + k));
            }
        }
        return Ok(None);
    }
    Ok(None)
}

/// Hands the records of the last segments to `f`, newest first, until `f` returns false;
/// checks each segment it reads, and that it ends where the next one starts.
pub fn for_each_backwards<R: Record>(dir: &Path, mut f: impl FnMut(u64, &R) -> bool) -> Result<(), JournalError> {
    let mut newer: Option<(PathBuf, u64)> = None;
    let mut records = Vec::new();
    for (back, seg) in segments(dir)?.iter().rev().enumerate() {
        let buf = open_segment(seg, back > 0)?;
        records.clear();
        let scanned = scan::<R>(&buf, seg, back == 0, false, Position::default(), true, |r| {
            records.push((r.seq, r.payload.clone()));
            Ok(())
        })?
        .refuse_damage()?;
        check_link(&scanned, newer.as_ref().map(|(p, s)| (p.as_path(), *s)))?;
        for (seq, payload) in records.iter().rev() {
            if !f(*seq, &R::decode(&buf[payload.clone()])?) {
                return Ok(());
            }
        }
        newer = Some((seg.clone(), scanned.first_seq));
    }
    Ok(())
}

/// The folder inside a journal directory where [`repair`] moves damaged bytes (segment
/// listings never look inside it).
pub const QUARANTINE_DIR: &str = "quarantine";

/// A file [`repair`] moved into quarantine (or, in a dry run, would move).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// The segment the bytes came from.
    pub from: PathBuf,
    /// Where in it they started (0: the whole segment moved).
    pub offset: u64,
    /// How many bytes.
    pub bytes: u64,
    /// Where they are now.
    pub to: PathBuf,
}

/// What [`repair`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    /// The first damage; `None` when the journal is clean (then nothing was changed).
    pub damage: Option<Damage>,
    /// Good records the journal holds after the repair.
    pub records_kept: u64,
    /// The last of them.
    pub last_good_seq: Option<u64>,
    /// The sequence the next append gets.
    pub next_seq: u64,
    /// The quarantine folder of this repair.
    pub quarantine: Option<PathBuf>,
    /// What was moved there.
    pub moved: Vec<Moved>,
    /// A torn tail that ends the journal: segment, offset, bytes. Left alone (the writer cuts
    /// it when it opens the journal).
    pub torn_tail: Option<(PathBuf, u64, u64)>,
}

/// Finds the first damage in the journal in `dir` and moves it aside, deleting nothing: the
/// damaged segment's bytes from the damage on are copied into a new folder under
/// [`QUARANTINE_DIR`] and cut from the segment (which then ends with its last good record),
/// and every later segment is moved there whole. A clean journal (a torn tail is not damage)
/// is left as it is. With `dry_run`, only reports what it would do. The journal's writer must
/// be stopped.
pub fn repair<R: Record>(dir: &Path, dry_run: bool) -> Result<Repaired, JournalError> {
    let segs = segments(dir)?;
    let mut out =
        Repaired { damage: None, records_kept: 0, last_good_seq: None, next_seq: 0, quarantine: None, moved: Vec::new(), torn_tail: None };
    let mut at = Position::default();
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        let buf = open_segment(seg, !last)?;
        let scanned = scan::<R>(&buf, seg, last, i > 0, at, true, |_| Ok(()))?;
        out.records_kept += scanned.records;
        let damage = match scanned.end {
            SegmentEnd::Clean => None,
            SegmentEnd::Torn => {
                out.torn_tail = Some((seg.clone(), scanned.valid_end as u64, (buf.len() - scanned.valid_end) as u64));
                None
            }
            SegmentEnd::Damaged(d) => Some(d),
        };
        let Some(damage) = damage else {
            at = scanned.position;
            continue;
        };
        // Damage in the header leaves nothing of the segment to trust: it moves whole.
        let whole = scanned.valid_end < HEADER;
        if !whole {
            at = scanned.position;
        }
        let quarantine = unused_quarantine(dir, at.last_good);
        let name = |p: &Path| p.file_name().map(PathBuf::from).unwrap_or_default();
        let cut = (!whole).then(|| Moved {
            from: seg.clone(),
            offset: scanned.valid_end as u64,
            bytes: (buf.len() - scanned.valid_end) as u64,
            to: quarantine.join(format!("{}.from-byte-{}", name(seg).display(), scanned.valid_end)),
        });
        let first_moved = if whole { i } else { i + 1 };
        let mut whole_moves = Vec::new();
        for p in &segs[first_moved..] {
            let bytes = fs::metadata(p).map_err(io_err(p))?.len();
            whole_moves.push(Moved { from: p.clone(), offset: 0, bytes, to: quarantine.join(name(p)) });
        }
        if !dry_run {
            fs::create_dir_all(&quarantine).map_err(io_err(&quarantine))?;
            // Copy first and make it durable, then move and cut: a crash part-way leaves
            // bytes in two places, never in none.
            if let Some(cut) = &cut {
                let mut f = OpenOptions::new().write(true).create_new(true).open(&cut.to).map_err(io_err(&cut.to))?;
                f.write_all(&buf[scanned.valid_end..]).map_err(io_err(&cut.to))?;
                f.sync_all().map_err(io_err(&cut.to))?;
            }
            drop(buf);
            for m in &whole_moves {
                fs::rename(&m.from, &m.to).map_err(io_err(&m.from))?;
            }
            sync_dir(&quarantine)?;
            if let Some(cut) = &cut {
                let f = OpenOptions::new().write(true).open(&cut.from).map_err(io_err(&cut.from))?;
                f.set_len(cut.offset).map_err(io_err(&cut.from))?;
                f.sync_all().map_err(io_err(&cut.from))?;
            }
            sync_dir(dir)?;
        }
        out.moved = cut.into_iter().chain(whole_moves).collect();
        out.quarantine = Some(quarantine);
        out.damage = Some(damage);
        out.torn_tail = None;
        break;
    }
    out.last_good_seq = at.last_good;
    out.next_seq = at.next_seq.unwrap_or(0);
    Ok(out)
}

/// A quarantine folder name that says where the moved part starts and is not taken yet.
fn unused_quarantine(dir: &Path, last_good: Option<u64>) -> PathBuf {
    let base = dir.join(QUARANTINE_DIR);
    let stem = match last_good {
        Some(seq) => format!("after-seq-{seq:020}"),
        None => "whole-journal".to_string(),
    };
    (1u32..)
        .map(|n| if n == 1 { base.join(&stem) } else { base.join(format!("{stem}-{n}")) })
        .find(|p| !p.exists())
        .expect("some suffix is free")
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// The first sequence of a segment, from its file name (`None`: not a segment's name).
pub fn segment_first_seq(path: &Path) -> Option<u64> {
    path.file_stem()?.to_str()?.parse().ok()
}

fn segment_after(dir: &Path, current: &Path) -> Result<Option<PathBuf>, JournalError> {
    io_point();
    Ok(segments(dir)?.into_iter().find(|p| p.as_path() > current))
}

/// Where [`Tail`] touches the file system. Nothing in a normal build; under
/// `--cfg sapphire_loom` a step of a loom model, so loom runs a concurrent writer between any
/// two of the tail's reads (tests/loom_tail.rs).
#[inline(always)]
fn io_point() {
    #[cfg(sapphire_loom)]
    loom_io::point();
}

/// The loom model's view of the file system: one shared counter every file-system step
/// touches, so loom orders those steps against each other in every way.
#[cfg(sapphire_loom)]
#[doc(hidden)]
pub mod loom_io {
    use loom::sync::atomic::{AtomicUsize, Ordering};

    loom::lazy_static! {
        static ref STEPS: AtomicUsize = AtomicUsize::new(0);
    }

    /// One file-system step (the model's writer calls it before each of its writes).
    pub fn point() {
        STEPS.fetch_add(1, Ordering::SeqCst);
    }
}

/// Reads every event of a journal, in order, validating each record.
pub fn read_all(dir: &Path) -> Result<Vec<(u64, Event)>, JournalError> {
    let mut out = Vec::new();
    for_each(dir, |seq, e| out.push((seq, *e)))?;
    Ok(out)
}

#[cfg(test)]
mod tests;
