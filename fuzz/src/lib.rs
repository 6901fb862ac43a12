//! What the fuzz targets share: a small instrument registry, the checks every event a feed
//! emits must pass, and an independent reader of the journal's record format (the reference
//! the journal readers are held to).

use sapphire_core::book::OrderBook;
use sapphire_core::event::{Event, DELTA_RESYNC};
use sapphire_core::fixed::{Money, Price, Quantity};
use sapphire_core::instrument::{InstrumentRegistry, InstrumentSpec, MarketType};

/// The symbols every market-data target knows.
pub const SYMBOLS: [&str; 2] = ["BTCUSDT", "ETHUSDT"];

/// A registry of [`SYMBOLS`] on `venue`.
pub fn registry(venue: &str, market: MarketType) -> InstrumentRegistry {
    let mut reg = InstrumentRegistry::new();
    for symbol in SYMBOLS {
        reg.intern(InstrumentSpec {
            venue,
            symbol,
            market,
            tick_size: Price::parse("0.01").expect("a price"),
            lot_size: Quantity::parse("0.001").expect("a quantity"),
            min_notional: Money::from_units(5),
        })
        .expect("two distinct symbols");
    }
    reg
}

/// The latest event time a feed may emit (`i64::MAX` ns).
const MAX_TS_NS: u64 = i64::MAX as u64;

/// The core's books, fed every event a feed emits, checked after each frame.
#[derive(Debug)]
pub struct CoreBooks {
    /// One per instrument of the registry.
    pub books: Vec<OrderBook>,
}

impl CoreBooks {
    /// Books for `n` instruments.
    pub fn new(n: usize) -> Self {
        Self { books: (0..n).map(|_| OrderBook::default()).collect() }
    }

    /// Checks one emitted event (what a feed may hand the core) and applies book deltas.
    pub fn take(&mut self, e: &Event) {
        match e {
            Event::BookDelta(d) => {
                let book = self.books.get_mut(d.instrument.index()).expect("a delta for a registered instrument");
                if d.flags & DELTA_RESYNC == 0 {
                    // An empty venue message still moves the sequence: one no-op level (price 0, qty 0).
                    assert!(d.price.raw > 0 || d.qty.raw == 0, "a level with a non-positive price: {d:?}");
                    assert!(d.qty.raw >= 0, "a level with a negative quantity: {d:?}");
                }
                assert!(d.ts_event <= MAX_TS_NS, "event time past i64::MAX ns: {d:?}");
                book.apply_delta(d);
            }
            Event::Quote(q) => {
                assert!((q.instrument.index()) < self.books.len(), "a quote for an unknown instrument: {q:?}");
                assert!(q.bid_price.raw >= 0 && q.ask_price.raw >= 0, "a negative quote: {q:?}");
                assert!(q.bid_qty.raw >= 0 && q.ask_qty.raw >= 0, "a negative quote size: {q:?}");
                if q.bid_price.raw > 0 && q.ask_price.raw > 0 {
                    assert!(q.bid_price <= q.ask_price, "a crossed quote: {q:?}");
                }
                assert!(q.ts_event <= MAX_TS_NS, "event time past i64::MAX ns: {q:?}");
            }
            Event::Trade(t) => {
                assert!((t.instrument.index()) < self.books.len(), "a trade for an unknown instrument: {t:?}");
                assert!(t.price.raw > 0, "a trade at a non-positive price: {t:?}");
                assert!(t.qty.raw >= 0, "a trade of negative size: {t:?}");
                assert!(t.ts_event <= MAX_TS_NS, "event time past i64::MAX ns: {t:?}");
            }
            other => panic!("a market feed emitted {other:?}"),
        }
    }

    /// No book is crossed.
    pub fn check_uncrossed(&self) {
        for b in &self.books {
            if let (Some(bid), Some(ask)) = (b.best_bid(), b.best_ask()) {
                assert!(bid.price < ask.price, "crossed book: bid {bid:?} ask {ask:?}");
            }
        }
    }
}

/// Splits fuzz input into frames at newlines (a seed is a recording's frames, one a line).
pub fn frames(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&b| b == b'\n')
}

/// The journal's framing, read independently of the journal module: `len crc seq payload pad`.
pub mod journal_ref {
    /// Bytes of a segment header.
    pub const HEADER: usize = 16;
    const RECORD_HEADER: usize = 16;
    const ALIGN: usize = 16;

    /// A record whose length, CRC and sequence check out, read from `buf` at `at`:
    /// `(seq, payload range, end)`.
    pub fn record_at(buf: &[u8], at: usize) -> Option<(u64, std::ops::Range<usize>, usize)> {
        let head = buf.get(at..at.checked_add(RECORD_HEADER)?)?;
        let len = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
        let crc = u32::from_le_bytes(head[4..8].try_into().ok()?);
        let seq = u64::from_le_bytes(head[8..16].try_into().ok()?);
        if len == 0 || len > 4_096 {
            return None;
        }
        let end = at + (RECORD_HEADER + len).div_ceil(ALIGN) * ALIGN;
        let payload = at + RECORD_HEADER..at + RECORD_HEADER + len;
        if end > buf.len() {
            return None;
        }
        let mut check = crc32c::crc32c(&seq.to_le_bytes());
        check = crc32c::crc32c_append(check, &buf[payload.clone()]);
        (check == crc).then_some((seq, payload, end))
    }

    /// Every record of a segment whose CRC holds, in order, up to the first that does not.
    pub fn crc_valid_records(buf: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = HEADER;
        while let Some((seq, payload, end)) = record_at(buf, at) {
            out.push((seq, buf[payload].to_vec()));
            at = end;
        }
        out
    }
}

/// A scratch directory per fuzz process (fuzzing runs one input at a time per process),
/// on tmpfs when there is one (`/dev/shm`): the journal's `fsync`s cost nothing there.
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    let dir = base.join(format!("sapphire-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// The journal readers over one directory, held to each other and to the reference reader.
pub mod journal_check {
    use super::journal_ref;
    use sapphire_core::event::Event;
    use sapphire_persistence::journal::{
        for_each_backwards, for_each_record, last_record, repair, segments, Durability, JournalConfig, JournalError, JournalWriter, Tail,
    };
    use std::collections::BTreeMap;
    use std::path::Path;

    /// What the readers made of a directory.
    #[derive(Debug)]
    pub struct Outcome {
        /// `for_each_record`'s records and whether it ended in an error.
        pub records: Vec<(u64, Event)>,
        /// It ended in an error (damage, not a segment).
        pub refused: bool,
        /// `JournalWriter::open`: `Ok((records, truncated_bytes))` or the error's text.
        pub opened: Result<(u64, u64), String>,
    }

    /// Every record whose CRC holds in any segment, decoded, by sequence (the reference: a
    /// reader may hand out a record only if it is here).
    fn vouched(dir: &Path) -> BTreeMap<u64, Vec<Event>> {
        let mut out: BTreeMap<u64, Vec<Event>> = BTreeMap::new();
        for seg in segments(dir).unwrap_or_default() {
            let bytes = std::fs::read(&seg).unwrap_or_default();
            for (seq, payload) in journal_ref::crc_valid_records(&bytes) {
                let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
                aligned.extend_from_slice(&payload);
                if let Ok(e) = rkyv::from_bytes::<Event, rkyv::rancor::Error>(&aligned) {
                    out.entry(seq).or_default().push(e);
                }
            }
        }
        out
    }

    fn assert_vouched(what: &str, vouched: &BTreeMap<u64, Vec<Event>>, seq: u64, e: &Event) {
        assert!(
            vouched.get(&seq).is_some_and(|v| v.contains(e)),
            "{what} handed out record {seq} ({e:?}), which no record with a valid CRC holds"
        );
    }

    /// Runs every reader over `dir`, then opens it for writing (which cuts a torn tail), then
    /// repairs it if it is damaged and opens it again, and appends one record. Panics when a
    /// reader hands out a record no valid CRC vouches for, when readers disagree, when the
    /// writer's open reports other than what the readers saw, or when a repaired journal does
    /// not open.
    pub fn check(dir: &Path) -> Outcome {
        let vouched = vouched(dir);

        let mut records = Vec::new();
        let walked = for_each_record::<Event>(dir, |seq, e| records.push((seq, *e)));
        for (seq, e) in &records {
            assert_vouched("for_each_record", &vouched, *seq, e);
        }
        let refused = walked.is_err();
        for w in records.windows(2) {
            assert_eq!(w[0].0 + 1, w[1].0, "for_each_record: sequences not dense");
        }

        // The tail follower sees the same records, and stops where the walk stopped.
        let mut tail_records = Vec::new();
        if let Ok(mut tail) = Tail::open(dir, 0) {
            for _ in 0..64 {
                match tail.poll::<Event>(16, |seq, e| tail_records.push((seq, *e))) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        for (seq, e) in &tail_records {
            assert_vouched("Tail::poll", &vouched, *seq, e);
        }
        // The walk starts at the first segment's first sequence; the tail at 0 (which, past
        // pruning, is the first segment's too).
        assert_eq!(tail_records, records, "Tail and for_each_record disagree");

        if let Ok(Some((seq, e))) = last_record::<Event>(dir) {
            assert_vouched("last_record", &vouched, seq, &e);
            if !refused {
                assert_eq!(records.last(), Some(&(seq, e)), "last_record is not the walk's last");
            }
        }
        let mut backwards = Vec::new();
        let _ = for_each_backwards::<Event>(dir, |seq, e| {
            backwards.push((seq, *e));
            backwards.len() < 64
        });
        for (seq, e) in &backwards {
            assert_vouched("for_each_backwards", &vouched, *seq, e);
        }
        let _ = repair::<Event>(dir, true);

        let config = JournalConfig { dir: dir.to_path_buf(), segment_bytes: 4_096, durability: Durability::Os };
        let opened = match JournalWriter::<Event>::open(config.clone()) {
            Ok((w, recovery)) => {
                drop(w);
                // Opening found the records the walk found (it cut only a torn tail).
                assert!(!refused, "the walk refused the journal the writer opened: {recovery:?}");
                assert_eq!(recovery.records as usize, records.len(), "open counted other records than the walk handed out");
                Ok((recovery.records, recovery.truncated_bytes))
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(text) = &opened {
            assert!(refused || records.is_empty() || text.contains("I/O"), "the writer refused a journal the walk read whole: {text}");
        }

        // Damage is moved aside by repair; then the journal opens, keeps what was good before
        // the damage, and takes appends.
        let reopened = match JournalWriter::<Event>::open(config.clone()) {
            Ok(w) => Some(w),
            Err(JournalError::Corrupt(_)) => {
                let repaired = repair::<Event>(dir, false).expect("repair of a damaged journal");
                assert!(repaired.damage.is_some(), "open refused damage that repair does not find");
                Some(JournalWriter::<Event>::open(config.clone()).expect("a repaired journal opens"))
            }
            Err(_) => None,
        };
        if let Some((mut w, recovery)) = reopened {
            let seq = w.append_event(&Event::Timer(Default::default())).expect("append");
            assert_eq!(seq, recovery.next_seq);
            w.sync().expect("sync");
            drop(w);
            let mut after = Vec::new();
            for_each_record::<Event>(dir, |seq, e| after.push((seq, *e))).expect("a journal just written reads back");
            assert_eq!(after.last().map(|r| r.0), Some(seq), "the appended record is not last");
            let kept = &after[..after.len() - 1];
            assert_eq!(kept, &records[..], "the records before the damage are not what the journal kept");
        }
        Outcome { records, refused, opened }
    }
}
