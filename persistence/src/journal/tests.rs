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
    // A crash mid-write: half a record at the end.
    let seg = segments(&d).unwrap().pop().unwrap();
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[0x40, 0, 0, 0, 1, 2, 3, 4, 40, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9]).unwrap();
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
