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
            JournalWriter::open(JournalConfig { segment_bytes: 16 * 1024, durability: Durability::Os, ..JournalConfig::new(&d) }).unwrap();
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
    let (mut w, rec) = JournalWriter::open(JournalConfig::new(&d)).unwrap();
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
            let (mut w, _) = JournalWriter::open(JournalConfig::new(&d)).unwrap();
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
        let (w, rec) = JournalWriter::open(JournalConfig::new(&d)).unwrap();
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
        let (mut w, _) = JournalWriter::open(JournalConfig::new(&d)).unwrap();
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
    let (_, rec) = JournalWriter::open(JournalConfig::new(&d)).unwrap();
    assert_eq!((rec.records, rec.truncated_records), (4, 1));
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn garbage_is_not_a_segment() {
    let d = dir("garbage");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join(segment_name(0)), b"hello, this is not a journal").unwrap();
    assert!(matches!(JournalWriter::open(JournalConfig::new(&d)), Err(JournalError::NotASegment { .. })));
    let _ = fs::remove_dir_all(&d);
}
