use super::*;
use sapphire_core::event::{BookDelta, Quote, Side, Timer, Trade};
use sapphire_core::fixed::{Price, Quantity};
use sapphire_core::instrument::InstrumentId;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sapphire-journal-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

fn events(n: u64) -> Vec<Event> {
    (0..n)
        .map(|i| match i % 3 {
            0 => Event::Quote(Quote {
                ts_event: i,
                ts_recv: i + 1,
                instrument: InstrumentId(1),
                bid_price: Price::from_units(100),
                ask_price: Price::from_units(101),
                bid_qty: Quantity::from_raw(i as i64),
                ask_qty: Quantity::from_units(2),
                _pad: 0,
            }),
            1 => Event::Trade(Trade {
                ts_event: i,
                ts_recv: i,
                instrument: InstrumentId(2),
                aggressor: Side::Sell,
                price: Price::from_raw(-5),
                qty: Quantity::from_units(1),
                trade_id: i,
                _pad: [0; 3],
            }),
            _ => Event::BookDelta(BookDelta {
                ts_event: i,
                side: Side::Sell,
                price: Price::from_units(7),
                qty: Quantity::ZERO,
                first_update_id: i,
                last_update_id: i,
                prev_update_id: i - 1,
                flags: 4,
                ..Default::default()
            }),
        })
        .collect()
}

#[test]
fn round_trips_and_rolls_segments() {
    let d = dir("roll");
    let evs = events(1_000);
    {
        let (mut w, rec) =
            JournalWriter::<Event>::open(JournalConfig { segment_bytes: 16 * 1024, durability: Durability::Os, ..JournalConfig::new(&d) })
                .unwrap();
        assert_eq!(rec, Recovery { segments: 0, ..Default::default() });
        for e in &evs {
            w.append_event(e).unwrap();
        }
        w.sync().unwrap();
    }
    assert!(segments(&d).unwrap().len() > 3, "segments rolled");
    let back = read_all(&d).unwrap();
    assert_eq!(back.len(), evs.len());
    assert!(back.iter().enumerate().all(|(i, (seq, e))| *seq == i as u64 && *e == evs[i]));
    // Reopening continues the sequence.
    let (mut w, rec) = JournalWriter::<Event>::open(JournalConfig::new(&d)).unwrap();
    assert_eq!((rec.records, rec.next_seq, rec.truncated_bytes), (1_000, 1_000, 0));
    assert_eq!(w.append_event(&Event::Timer(Timer::default())).unwrap(), 1_000);
    w.sync().unwrap();
    assert_eq!(read_all(&d).unwrap().len(), 1_001);
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn a_torn_tail_is_truncated_and_reported() {
    for cut in [1usize, 7, 16, 20, 40] {
        let d = dir(&format!("torn{cut}"));
        {
            let (mut w, _) = JournalWriter::<Event>::open(JournalConfig::new(&d)).unwrap();
            for e in events(10) {
                w.append_event(&e).unwrap();
            }
            w.sync().unwrap();
        }
        let seg = segments(&d).unwrap().pop().unwrap();
        let len = fs::metadata(&seg).unwrap().len();
        // A crash mid-write: the last record is cut `cut` bytes short.
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - cut as u64).unwrap();
        drop(f);
        let (w, rec) = JournalWriter::<Event>::open(JournalConfig::new(&d)).unwrap();
        assert_eq!(rec.records, 9, "cut {cut}");
        assert_eq!(rec.next_seq, 9);
        assert!(rec.truncated_bytes > 0 && rec.truncated_bytes < 96, "cut {cut}: {rec:?}");
        assert_eq!(w.next_seq(), 9);
        assert_eq!(read_all(&d).unwrap().len(), 9);
        let _ = fs::remove_dir_all(&d);
    }
}

#[test]
fn a_flipped_bit_in_the_last_record_fails_its_crc() {
    let d = dir("crc");
    {
        let (mut w, _) = JournalWriter::<Event>::open(JournalConfig::new(&d)).unwrap();
        for e in events(5) {
            w.append_event(&e).unwrap();
        }
        w.sync().unwrap();
    }
    let seg = segments(&d).unwrap().pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes[n - 20] ^= 0x40;
    fs::write(&seg, &bytes).unwrap();
    let (_, rec) = JournalWriter::<Event>::open(JournalConfig::new(&d)).unwrap();
    assert_eq!((rec.records, rec.truncated_records), (4, 1));
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn garbage_is_not_a_segment() {
    let d = dir("garbage");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join(segment_name(0)), b"hello, this is not a journal").unwrap();
    assert!(matches!(JournalWriter::<Event>::open(JournalConfig::new(&d)), Err(JournalError::NotASegment { .. })));
    let _ = fs::remove_dir_all(&d);
}

fn outputs(n: u64) -> Vec<Output> {
    use sapphire_core::engine::EngineOutput;
    use sapphire_core::order::Order;
    use sapphire_core::portfolio::PnlSummary;
    (0..n)
        .map(|i| Output {
            seq: i as i64,
            output: match i % 2 {
                0 => EngineOutput::Order(Order {
                    client_order_id: i,
                    price: Price::from_raw(123_456_789_012),
                    qty: Quantity::from_units(3),
                    ..Order::default()
                }),
                _ => EngineOutput::Pnl {
                    ts_event: i,
                    total: PnlSummary { equity: sapphire_core::fixed::Money::from_raw(i as i64), ..PnlSummary::default() },
                },
            },
        })
        .collect()
}

#[test]
fn output_journal_round_trips_and_is_not_an_input_journal() {
    let d = dir("outputs");
    let outs = outputs(500);
    {
        let (mut w, _) =
            JournalWriter::<Output>::open(JournalConfig { segment_bytes: 8 * 1024, durability: Durability::Os, ..JournalConfig::new(&d) })
                .unwrap();
        for o in &outs {
            w.append_record(o).unwrap();
        }
        w.sync().unwrap();
    }
    assert!(segments(&d).unwrap().len() > 2, "segments rolled");
    let mut back = Vec::new();
    assert_eq!(for_each_record::<Output>(&d, |seq, o| back.push((seq, *o))).unwrap(), 500);
    assert_eq!(back.iter().map(|(_, o)| *o).collect::<Vec<_>>(), outs);
    assert!(back.iter().enumerate().all(|(i, (seq, _))| *seq == i as u64));
    // The magic keeps one kind of journal from being read as the other.
    assert!(matches!(JournalWriter::<Event>::open(JournalConfig::new(&d)), Err(JournalError::NotASegment { .. })));
    assert!(matches!(for_each(&d, |_, _| {}), Err(JournalError::NotASegment { .. })));
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn tail_follows_the_writer_across_rolls_from_any_sequence() {
    let d = dir("tail");
    let outs = outputs(1_000);
    let config = JournalConfig { segment_bytes: 4 * 1024, durability: Durability::Os, ..JournalConfig::new(&d) };
    // Nothing written yet: the tail waits, and does not create the directory.
    let mut tail = Tail::open(&d, 0).unwrap();
    assert_eq!(tail.poll::<Output>(10, |_, _| panic!("nothing to read")).unwrap(), 0);
    let (mut w, _) = JournalWriter::<Output>::open(config).unwrap();
    let mut got: Vec<(u64, Output)> = Vec::new();
    for chunk in outs.chunks(97) {
        for o in chunk {
            w.append_record(o).unwrap();
        }
        w.sync().unwrap();
        // Small polls: several calls per chunk, some ending mid-segment.
        while tail.poll::<Output>(13, |seq, o| got.push((seq, *o))).unwrap() > 0 {}
    }
    assert!(segments(&d).unwrap().len() > 5);
    assert_eq!(got.len(), 1_000);
    assert!(got.iter().enumerate().all(|(i, (seq, o))| *seq == i as u64 && *o == outs[i]));
    assert_eq!(tail.next_seq(), 1_000);
    // A tail started mid-way (a sink's stored cursor) hands out exactly the rest.
    let mut late = Tail::open(&d, 640).unwrap();
    let mut rest = Vec::new();
    while late.poll::<Output>(100, |seq, _| rest.push(seq)).unwrap() > 0 {}
    assert_eq!(rest, (640..1_000).collect::<Vec<_>>());
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn tail_waits_at_a_torn_tail_and_reads_what_the_restarted_writer_wrote_over_it() {
    let d = dir("tail-torn");
    let outs = outputs(60);
    let config = JournalConfig { durability: Durability::Os, ..JournalConfig::new(&d) };
    {
        let (mut w, _) = JournalWriter::<Output>::open(config.clone()).unwrap();
        for o in &outs[..40] {
            w.append_record(o).unwrap();
        }
        w.sync().unwrap();
    }
    // A crash mid-write: half a record at the end (its header whole, with the length every
    // record of the kind has).
    let seg = segments(&d).unwrap().pop().unwrap();
    let len: [u8; 4] = fs::read(&seg).unwrap()[HEADER..HEADER + 4].try_into().unwrap();
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[&len[..], &[1, 2, 3, 4], &40u64.to_le_bytes(), &[9, 9, 9]].concat()).unwrap();
    drop(f);
    let mut tail = Tail::open(&d, 0).unwrap();
    let mut got = Vec::new();
    while tail.poll::<Output>(16, |seq, o| got.push((seq, *o))).unwrap() > 0 {}
    assert_eq!(got.len(), 40, "the torn record is not handed out");
    // The writer restarts: it cuts the torn tail and appends over it.
    let (mut w, rec) = JournalWriter::<Output>::open(config).unwrap();
    assert!(rec.truncated_bytes > 0);
    for o in &outs[40..] {
        w.append_record(o).unwrap();
    }
    w.sync().unwrap();
    while tail.poll::<Output>(16, |seq, o| got.push((seq, *o))).unwrap() > 0 {}
    assert_eq!(got.len(), 60);
    assert!(got.iter().enumerate().all(|(i, (seq, o))| *seq == i as u64 && *o == outs[i]));
    let _ = fs::remove_dir_all(&d);
}

/// A journal of `n` events in segments of at most `segment_bytes`; returns its segments.
fn write_events(d: &Path, n: u64, segment_bytes: u64) -> Vec<PathBuf> {
    let (mut w, _) =
        JournalWriter::<Event>::open(JournalConfig { segment_bytes, durability: Durability::Os, ..JournalConfig::new(d) }).unwrap();
    for e in events(n) {
        w.append_event(&e).unwrap();
    }
    w.sync().unwrap();
    segments(d).unwrap()
}

/// The framed size of one record (events archive to a fixed size).
fn record_size(seg: &Path) -> usize {
    let bytes = fs::read(seg).unwrap();
    padded(u32::from_le_bytes(bytes[HEADER..HEADER + 4].try_into().unwrap()) as usize)
}

/// Deterministic noise (xorshift), so a failing case can be run again.
fn noise(n: usize, mut x: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn damage_inside_the_active_segment_is_refused_and_nothing_is_cut() {
    type Damage = fn(&mut Vec<u8>, usize);
    // Each case damages the file around record 500 of 1,000 (one segment, the active one).
    let cases: [(&str, Damage); 5] = [
        ("one flipped byte", |b, at| b[at + 40] ^= 0x01),
        ("20 flipped bytes", |b, at| b[at + 3..at + 23].iter_mut().for_each(|x| *x ^= 0xa5)),
        ("a zeroed 4 KB block", |b, at| b[at..at + 4096].fill(0)),
        ("an overwritten sequence number", |b, at| b[at + 8..at + 16].copy_from_slice(&7u64.to_le_bytes())),
        ("a header followed by random bytes", |b, _| {
            let n = b.len() - HEADER;
            b[HEADER..].copy_from_slice(&noise(n, 0x9e37_79b9_7f4a_7c15));
        }),
    ];
    for (i, (what, damage)) in cases.iter().enumerate() {
        let d = dir(&format!("damage{i}"));
        let seg = write_events(&d, 1_000, 64 << 20).pop().unwrap();
        let size = record_size(&seg);
        let at = HEADER + 500 * size;
        let mut bytes = fs::read(&seg).unwrap();
        damage(&mut bytes, at);
        fs::write(&seg, &bytes).unwrap();
        let (start, last_good) = if i == 4 { (HEADER, "none".to_string()) } else { (at, "499".to_string()) };
        let err = JournalWriter::<Event>::open(JournalConfig::new(&d)).expect_err(what).to_string();
        assert!(err.contains("00000000000000000000.seg"), "{what}: names the segment: {err}");
        assert!(err.contains(&format!("byte {start}")), "{what}: names the offset {start}: {err}");
        assert!(err.contains(&format!("last good record: {last_good}")), "{what}: names the last good sequence: {err}");
        assert!(err.contains("sapphire journal repair"), "{what}: names the repair: {err}");
        assert_eq!(fs::read(&seg).unwrap(), bytes, "{what}: the segment is left as it was");
        // Every reader refuses it too, rather than stopping early without a word.
        assert!(read_all(&d).is_err(), "{what}: read_all");
        assert!(last_record::<Event>(&d).is_err(), "{what}: last_record");
        assert!(for_each_backwards::<Event>(&d, |_, _| true).is_err(), "{what}: for_each_backwards");
        let mut tail = Tail::open(&d, 0).unwrap();
        let polled = (0..3).try_for_each(|_| tail.poll::<Event>(10_000, |_, _| {}).map(|_| ()));
        assert!(polled.is_err(), "{what}: Tail::poll");
        let _ = fs::remove_dir_all(&d);
    }
}

#[test]
fn crash_leftovers_are_torn_tails_and_are_cut() {
    // What a crash (or a power loss) can leave after the last whole record.
    let cases: [(&str, &[u8]); 4] = [
        ("a partial record header", &[0x60, 0, 0, 0, 1, 2]),
        ("a whole header, part of the payload", &[0x50, 0, 0, 0, 1, 2, 3, 4, 10, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9, 9, 9]),
        ("zeros (file length extended, data not written)", &[0; 4096]),
        ("one zero byte", &[0]),
    ];
    for (i, (what, tail)) in cases.iter().enumerate() {
        let d = dir(&format!("leftover{i}"));
        let seg = write_events(&d, 10, 64 << 20).pop().unwrap();
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new().append(true).open(&seg).unwrap().write_all(tail).unwrap();
        let (_, rec) = JournalWriter::<Event>::open(JournalConfig::new(&d)).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!((rec.records, rec.next_seq, rec.truncated_bytes), (10, 10, tail.len() as u64), "{what}");
        assert_eq!(fs::metadata(&seg).unwrap().len(), len, "{what}: cut back to the last whole record");
        let _ = fs::remove_dir_all(&d);
    }
}

#[test]
fn a_missing_middle_segment_is_refused_everywhere() {
    let d = dir("missing");
    let segs = write_events(&d, 1_000, 16 * 1024);
    assert!(segs.len() > 4);
    fs::remove_file(&segs[2]).unwrap();
    let err = JournalWriter::<Event>::open(JournalConfig::new(&d)).unwrap_err().to_string();
    let expected = segment_first_seq(&segs[2]).unwrap();
    let found = segment_first_seq(&segs[3]).unwrap();
    assert!(err.contains(&segment_name(found)) && err.contains(&format!("expected {expected}")), "{err}");
    assert!(read_all(&d).is_err());
    assert!(for_each_backwards::<Event>(&d, |_, _| true).is_err());
    let mut tail = Tail::open(&d, 0).unwrap();
    assert!((0..3).try_for_each(|_| tail.poll::<Event>(10_000, |_, _| {}).map(|_| ())).is_err(), "Tail::poll");
    // A sink that starts past the hole still reads what follows it.
    let mut late = Tail::open(&d, found).unwrap();
    assert!(late.poll::<Event>(10, |_, _| {}).unwrap() > 0);
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn a_journal_may_start_past_zero_and_hold_a_header_only_segment() {
    // Retention prunes the oldest segments: what remains starts later, and that is fine.
    let d = dir("pruned");
    let segs = write_events(&d, 1_000, 16 * 1024);
    fs::remove_file(&segs[0]).unwrap();
    let first = segment_first_seq(&segs[1]).unwrap();
    let back = read_all(&d).unwrap();
    assert_eq!(back.first().map(|(s, _)| *s), Some(first));
    assert_eq!(back.len() as u64, 1_000 - first);
    let (w, rec) = JournalWriter::<Event>::open(JournalConfig::new(&d)).unwrap();
    assert_eq!((rec.records, rec.next_seq), (1_000 - first, 1_000));
    drop(w);
    let _ = fs::remove_dir_all(&d);
    // A journal opened and closed without an append has a header-only segment.
    let d = dir("header-only");
    drop(JournalWriter::<Event>::open(JournalConfig::new(&d)).unwrap());
    let (_, rec) = JournalWriter::<Event>::open(JournalConfig::new(&d)).unwrap();
    assert_eq!((rec.segments, rec.records, rec.truncated_bytes), (1, 0, 0));
    assert!(read_all(&d).unwrap().is_empty());
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn a_repeated_record_is_refused() {
    let d = dir("repeat");
    let seg = write_events(&d, 100, 64 << 20).pop().unwrap();
    let size = record_size(&seg);
    let mut bytes = fs::read(&seg).unwrap();
    // Record 40 written twice: both copies pass their CRC.
    let at = HEADER + 40 * size;
    let copy = bytes[at..at + size].to_vec();
    bytes.splice(at..at, copy);
    fs::write(&seg, &bytes).unwrap();
    let err = JournalWriter::<Event>::open(JournalConfig::new(&d)).unwrap_err().to_string();
    assert!(err.contains(&format!("byte {}", at + size)) && err.contains("expected 41, found 40"), "{err}");
    assert!(read_all(&d).is_err());
    assert!(last_record::<Event>(&d).is_err());
    // A tail hands out what comes before the damage, then refuses to go on.
    let mut tail = Tail::open(&d, 0).unwrap();
    assert_eq!(tail.poll::<Event>(10_000, |_, _| {}).unwrap(), 41);
    let err = tail.poll::<Event>(10_000, |_, _| panic!("nothing past the damage")).unwrap_err();
    assert!(matches!(&err, JournalError::Corrupt(d) if d.last_good_seq == Some(40)), "{err}");
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn a_changed_header_first_seq_is_refused() {
    let d = dir("header-seq");
    let segs = write_events(&d, 1_000, 16 * 1024);
    let mut bytes = fs::read(&segs[1]).unwrap();
    let named = segment_first_seq(&segs[1]).unwrap();
    bytes[8..16].copy_from_slice(&(named + 1).to_le_bytes());
    fs::write(&segs[1], &bytes).unwrap();
    let err = JournalWriter::<Event>::open(JournalConfig::new(&d)).unwrap_err().to_string();
    assert!(err.contains(&segment_name(named)) && err.contains("header"), "{err}");
    assert!(read_all(&d).is_err());
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn a_segment_header_cut_short_by_a_crash_during_a_roll_is_completed() {
    for (i, header) in [&b""[..], &b"SAPJ"[..], &[0u8; 9][..]].iter().enumerate() {
        let d = dir(&format!("roll-crash{i}"));
        let segs = write_events(&d, 1_000, 16 * 1024);
        // The writer created the next segment and died before its header was written.
        let new = d.join(segment_name(1_000));
        fs::write(&new, header).unwrap();
        assert_eq!(read_all(&d).unwrap().len(), 1_000, "case {i}: readers see an empty last segment");
        let (mut w, rec) = JournalWriter::<Event>::open(JournalConfig::new(&d)).unwrap_or_else(|e| panic!("case {i}: {e}"));
        assert_eq!((rec.segments, rec.records, rec.next_seq), (segs.len() + 1, 1_000, 1_000), "case {i}");
        assert_eq!(fs::read(&new).unwrap(), segment_header::<Event>(1_000), "case {i}: the header is whole again");
        assert_eq!(w.append_event(&Event::Timer(Timer::default())).unwrap(), 1_000);
        w.sync().unwrap();
        assert_eq!(read_all(&d).unwrap().len(), 1_001, "case {i}");
        let _ = fs::remove_dir_all(&d);
    }
}

#[test]
fn a_last_record_failing_its_crc_with_only_zeros_after_it_is_a_torn_tail() {
    // A power loss can keep a file's length but not every block of its last record.
    let d = dir("power-loss");
    let seg = write_events(&d, 10, 64 << 20).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes[n - 30..].fill(0);
    bytes.extend_from_slice(&[0; 4000]);
    fs::write(&seg, &bytes).unwrap();
    let (_, rec) = JournalWriter::<Event>::open(JournalConfig::new(&d)).unwrap();
    assert_eq!((rec.records, rec.truncated_records, rec.truncated_bytes), (9, 1, 4096));
    // The same record with data after it is damage.
    let d2 = dir("power-loss-then-data");
    let seg = write_events(&d2, 10, 64 << 20).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes[n - 30..n - 20].iter_mut().for_each(|b| *b ^= 0xff);
    fs::write(&seg, &bytes).unwrap();
    let (_, rec) = JournalWriter::<Event>::open(JournalConfig::new(&d2)).unwrap();
    assert_eq!(rec.records, 9, "the last record alone, damaged, is still a torn tail");
    let seg = write_events(&d2, 0, 64 << 20).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes[n - 96 - 30..n - 96 - 20].iter_mut().for_each(|b| *b ^= 0xff);
    fs::write(&seg, &bytes).unwrap();
    assert!(JournalWriter::<Event>::open(JournalConfig::new(&d2)).is_err(), "a bad record followed by a good one is damage");
    let _ = fs::remove_dir_all(&d);
    let _ = fs::remove_dir_all(&d2);
}

#[test]
fn repair_moves_the_damaged_part_aside_and_the_journal_opens_again() {
    let d = dir("repair");
    let seg = write_events(&d, 1_000, 64 << 20).pop().unwrap();
    let size = record_size(&seg);
    let at = HEADER + 500 * size;
    let mut bytes = fs::read(&seg).unwrap();
    bytes[at + 40] ^= 0x01;
    fs::write(&seg, &bytes).unwrap();

    // A dry run says what it would do and changes nothing.
    let plan = repair::<Event>(&d, true).unwrap();
    assert_eq!(plan.damage.as_ref().map(|x| (x.offset, x.problem.clone())), Some((at as u64, Problem::BadRecord)));
    assert_eq!((plan.records_kept, plan.last_good_seq, plan.next_seq), (500, Some(499), 500));
    assert_eq!(plan.moved.len(), 1);
    assert_eq!(fs::read(&seg).unwrap(), bytes);
    assert!(!d.join(QUARANTINE_DIR).exists());

    let done = repair::<Event>(&d, false).unwrap();
    assert_eq!(done.moved, plan.moved);
    let moved = &done.moved[0];
    assert_eq!((moved.from.as_path(), moved.offset, moved.bytes), (seg.as_path(), at as u64, (bytes.len() - at) as u64));
    assert!(moved.to.starts_with(d.join(QUARANTINE_DIR)));
    assert_eq!(fs::read(&moved.to).unwrap(), &bytes[at..], "the damaged bytes are kept, not deleted");
    assert_eq!(fs::read(&seg).unwrap(), &bytes[..at], "the segment ends with its last good record");
    // The journal opens, reads and appends again; the quarantine is not part of it.
    assert_eq!(read_all(&d).unwrap().len(), 500);
    let (mut w, rec) = JournalWriter::<Event>::open(JournalConfig::new(&d)).unwrap();
    assert_eq!((rec.records, rec.next_seq, rec.truncated_bytes), (500, 500, 0));
    assert_eq!(w.append_event(&Event::Timer(Timer::default())).unwrap(), 500);
    w.sync().unwrap();
    drop(w);
    let clean = repair::<Event>(&d, false).unwrap();
    assert_eq!((clean.damage, clean.moved.len(), clean.records_kept), (None, 0, 501), "a clean journal is left alone");

    // Damage after the same record again gets a quarantine folder of its own.
    OpenOptions::new().append(true).open(&seg).unwrap().write_all(&noise(300, 7)).unwrap();
    let again = repair::<Event>(&d, false).unwrap();
    assert_ne!(again.quarantine, done.quarantine);
    assert_eq!(fs::read(&again.moved[0].to).unwrap(), noise(300, 7));
    assert_eq!(read_all(&d).unwrap().len(), 501);
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn repair_moves_every_segment_after_a_missing_or_renumbered_one() {
    let d = dir("repair-segments");
    let segs = write_events(&d, 1_000, 16 * 1024);
    fs::remove_file(&segs[2]).unwrap();
    let done = repair::<Event>(&d, false).unwrap();
    let missing = segment_first_seq(&segs[2]).unwrap();
    assert_eq!(
        done.damage.map(|x| x.problem),
        Some(Problem::SegmentStart { expected: missing, found: segment_first_seq(&segs[3]).unwrap() })
    );
    assert_eq!((done.records_kept, done.last_good_seq, done.next_seq), (missing, Some(missing - 1), missing));
    assert_eq!(
        done.moved.iter().map(|m| (m.from.clone(), m.offset)).collect::<Vec<_>>(),
        segs[3..].iter().map(|p| (p.clone(), 0)).collect::<Vec<_>>()
    );
    assert!(done.moved.iter().all(|m| m.to.exists() && !m.from.exists()));
    assert_eq!(segments(&d).unwrap(), segs[..2]);
    assert_eq!(JournalWriter::<Event>::open(JournalConfig::new(&d)).unwrap().1.next_seq, missing);
    let _ = fs::remove_dir_all(&d);

    // A header that disagrees with its name: that segment and the later ones move.
    let d = dir("repair-header");
    let segs = write_events(&d, 1_000, 16 * 1024);
    let mut bytes = fs::read(&segs[1]).unwrap();
    bytes[8] ^= 0x10;
    fs::write(&segs[1], &bytes).unwrap();
    let done = repair::<Event>(&d, false).unwrap();
    assert!(matches!(done.damage.map(|x| x.problem), Some(Problem::HeaderSeq { .. })));
    assert_eq!(done.moved.len(), segs.len() - 1);
    assert_eq!(read_all(&d).unwrap().len() as u64, segment_first_seq(&segs[1]).unwrap());
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn opening_checks_sealed_segments_by_their_ends_and_readers_check_every_record() {
    let d = dir("quick-open");
    let segs = write_events(&d, 2_000, 16 * 1024);
    assert!(segs.len() > 5);
    let size = record_size(&segs[0]);
    // A flipped bit inside a sealed segment: opening (header, length, first and last records)
    // does not read it; every reader that reaches it refuses it, naming it.
    let mut bytes = fs::read(&segs[1]).unwrap();
    let at = HEADER + 3 * size;
    bytes[at + 40] ^= 0x01;
    fs::write(&segs[1], &bytes).unwrap();
    let (_, rec) = JournalWriter::<Event>::open(JournalConfig::new(&d)).unwrap();
    assert_eq!((rec.records, rec.next_seq), (2_000, 2_000), "counted from the segments' lengths");
    let err = read_all(&d).unwrap_err().to_string();
    assert!(err.contains(&segment_name(segment_first_seq(&segs[1]).unwrap())) && err.contains(&format!("byte {at}")), "{err}");
    // Reading from a later sequence does not touch the damaged segment.
    let from = segment_first_seq(&segs[3]).unwrap() + 5;
    let mut got = Vec::new();
    assert_eq!(for_each_record_from::<Event>(&d, from, |seq, _| got.push(seq)).unwrap(), 2_000 - from);
    assert_eq!(got, (from..2_000).collect::<Vec<_>>());
    assert!(for_each_record_from::<Event>(&d, 0, |_, _| {}).is_err(), "from the start it meets the damage");
    let _ = fs::remove_dir_all(&d);

    // A sealed segment cut short (or its last record damaged) fails the quick check: the full
    // scan names the damage, and opening refuses.
    let d = dir("quick-open-cut");
    let segs = write_events(&d, 2_000, 16 * 1024);
    let bytes = fs::read(&segs[2]).unwrap();
    fs::write(&segs[2], &bytes[..bytes.len() - 10]).unwrap();
    let err = JournalWriter::<Event>::open(JournalConfig::new(&d)).unwrap_err().to_string();
    assert!(err.contains(&segment_name(segment_first_seq(&segs[2]).unwrap())) && err.contains("incomplete record"), "{err}");
    let d2 = dir("quick-open-last");
    let segs = write_events(&d2, 2_000, 16 * 1024);
    let mut bytes = fs::read(&segs[2]).unwrap();
    let n = bytes.len();
    bytes[n - size + 20] ^= 0x01;
    fs::write(&segs[2], &bytes).unwrap();
    assert!(JournalWriter::<Event>::open(JournalConfig::new(&d2)).is_err(), "a damaged last record of a sealed segment");
    assert_eq!(first_seq(&d2).unwrap(), Some(0));
    let _ = fs::remove_dir_all(&d);
    let _ = fs::remove_dir_all(&d2);
}

#[test]
fn record_at_and_last_seq_quick_agree_with_the_full_readers() {
    let d = dir("record-at");
    assert_eq!(last_seq_quick::<Event>(&d).unwrap(), None);
    let evs = events(700);
    write_events(&d, 700, 8 * 1024);
    assert!(segments(&d).unwrap().len() > 3);
    for seq in [0, 1, 63, 64, 65, 350, 698, 699] {
        let got = record_at::<Event>(&d, seq).unwrap().expect("held");
        assert_eq!(format!("{got:?}"), format!("{:?}", evs[seq as usize]), "record {seq}");
    }
    assert!(record_at::<Event>(&d, 700).unwrap().is_none(), "not written yet");
    assert_eq!(last_seq_quick::<Event>(&d).unwrap(), Some(699));
    assert_eq!(last_record::<Event>(&d).unwrap().map(|(s, _)| s), Some(699));
    // A record being written (half of one appended) is passed over, and a flipped byte makes
    // the record unreadable rather than wrong.
    let last = segments(&d).unwrap().pop().unwrap();
    let size = record_size(&last);
    let mut f = OpenOptions::new().append(true).open(&last).unwrap();
    f.write_all(&vec![7u8; size / 2]).unwrap();
    drop(f);
    assert_eq!(last_seq_quick::<Event>(&d).unwrap(), Some(699));
    let mut bytes = fs::read(&last).unwrap();
    let end = bytes.len() - size / 2 - 1;
    bytes[end - 20] ^= 1;
    fs::write(&last, &bytes).unwrap();
    assert!(record_at::<Event>(&d, 699).unwrap().is_none());
    assert_eq!(last_seq_quick::<Event>(&d).unwrap(), Some(698));
    // An empty last segment: the journal ends where it begins.
    let d2 = dir("record-at-empty");
    write_events(&d2, 200, 4 * 1024);
    let next = segments(&d2).unwrap().last().map(|p| segment_first_seq(p).unwrap()).unwrap();
    let (mut w, _) =
        JournalWriter::<Event>::open(JournalConfig { segment_bytes: 4 * 1024, durability: Durability::Os, ..JournalConfig::new(&d2) })
            .unwrap();
    w.sync().unwrap();
    drop(w);
    assert_eq!(last_seq_quick::<Event>(&d2).unwrap().map(|s| s + 1), last_record::<Event>(&d2).unwrap().map(|(s, _)| s + 1));
    assert!(next > 0);
}

#[test]
fn a_sealed_journal_ends_in_an_empty_segment_and_reopens_where_it_was() {
    let d = dir("sealed");
    let (mut w, _) = JournalWriter::<Event>::open(JournalConfig { durability: Durability::Os, ..JournalConfig::new(&d) }).unwrap();
    for e in events(300) {
        w.append_event(&e).unwrap();
    }
    w.seal().unwrap();
    // Sealing twice adds nothing: the last segment is already empty.
    w.seal().unwrap();
    drop(w);
    let segs = segments(&d).unwrap();
    assert_eq!(segs.len(), 2, "{segs:?}");
    assert_eq!(fs::metadata(&segs[1]).unwrap().len(), HEADER as u64, "a header and no record");
    assert_eq!(segment_first_seq(&segs[1]), Some(300));
    let mut seen = 0;
    for_each(&d, |seq, _| {
        assert_eq!(seq, seen);
        seen += 1;
    })
    .unwrap();
    assert_eq!(seen, 300);
    let (mut w, rec) = JournalWriter::<Event>::open(JournalConfig::new(&d)).unwrap();
    assert_eq!((rec.records, rec.next_seq), (300, 300));
    assert_eq!(w.append_event(&Event::Timer(Timer::default())).unwrap(), 300);
}

mod crc {
    use super::super::record_crc;
    use proptest::prelude::*;

    #[test]
    fn the_record_crc_is_crc32c() {
        // RFC 3720's check value, and the crate's value for every short length.
        assert_eq!(record_crc(b"123456789"), 0xe306_9283);
        let bytes: Vec<u8> = (0..300u32).map(|i| (i * 151 + 7) as u8).collect();
        for end in 0..bytes.len() {
            for start in 0..9.min(end + 1) {
                assert_eq!(record_crc(&bytes[start..end]), crc32c::crc32c(&bytes[start..end]), "{start}..{end}");
            }
        }
    }

    proptest! {
        #[test]
        fn the_record_crc_equals_the_crates_for_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2_048)) {
            prop_assert_eq!(record_crc(&bytes), crc32c::crc32c(&bytes));
        }
    }
}
