//! A valid journal (records of fuzzed events over segments of a fuzzed size) with random
//! damage: bytes flipped or zeroed, files cut short, extended or removed. The readers never
//! panic and never hand out a record whose CRC fails; and damage done in place (flips,
//! zeros) never silently loses a record: opening either keeps every record, reports the cut
//! torn tail, or refuses the journal as damaged (then repair moves the damage aside).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sapphire_core::event::{Event, Timer};
use sapphire_fuzz::{journal_check, scratch_dir};
use sapphire_persistence::journal::{segments, Durability, JournalConfig, JournalWriter};

#[derive(Arbitrary, Debug)]
enum Damage {
    Flip { seg: u8, at: u16, xor: u8 },
    Zero { seg: u8, at: u16, len: u8 },
    Cut { seg: u8, keep: u16 },
    Extend { seg: u8, bytes: Vec<u8> },
    Remove { seg: u8 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    events: Vec<(u64, u64)>,
    segment_records: u8,
    damage: Vec<Damage>,
}

fuzz_target!(|input: Input| {
    let dir = scratch_dir("journal-corrupt");
    let events: Vec<Event> =
        input.events.iter().take(40).map(|&(ts_event, ts_recv)| Event::Timer(Timer { ts_event, ts_recv, ..Timer::default() })).collect();
    // Roll every few records (a Timer record is 64 bytes framed).
    let segment_bytes = 16 + 64 * u64::from(input.segment_records % 6 + 1);
    let config = JournalConfig { dir: dir.clone(), segment_bytes, durability: Durability::Os };
    let (mut w, _) = JournalWriter::<Event>::open(config).expect("a fresh journal");
    for e in &events {
        w.append_event(e).expect("append");
    }
    w.sync().expect("sync");
    drop(w);

    let segs = segments(&dir).expect("segments");
    let mut in_place = true;
    for d in input.damage.iter().take(4) {
        let pick = |seg: u8| &segs[usize::from(seg) % segs.len()];
        match d {
            Damage::Flip { seg, at, xor } => {
                let path = pick(*seg);
                let mut bytes = std::fs::read(path).unwrap_or_default();
                if !bytes.is_empty() {
                    let i = usize::from(*at) % bytes.len();
                    bytes[i] ^= xor;
                    std::fs::write(path, bytes).expect("write");
                }
            }
            Damage::Zero { seg, at, len } => {
                let path = pick(*seg);
                let mut bytes = std::fs::read(path).unwrap_or_default();
                if !bytes.is_empty() {
                    let i = usize::from(*at) % bytes.len();
                    let end = (i + usize::from(*len)).min(bytes.len());
                    bytes[i..end].fill(0);
                    std::fs::write(path, bytes).expect("write");
                }
            }
            Damage::Cut { seg, keep } => {
                in_place = false;
                let path = pick(*seg);
                let bytes = std::fs::read(path).unwrap_or_default();
                std::fs::write(path, &bytes[..usize::from(*keep).min(bytes.len())]).expect("write");
            }
            Damage::Extend { seg, bytes: more } => {
                in_place = false;
                let path = pick(*seg);
                let mut bytes = std::fs::read(path).unwrap_or_default();
                bytes.extend_from_slice(&more[..more.len().min(256)]);
                std::fs::write(path, bytes).expect("write");
            }
            Damage::Remove { seg } => {
                in_place = false;
                let _ = std::fs::remove_file(pick(*seg));
            }
        }
    }

    let outcome = journal_check::check(&dir);
    // Every record handed out is the one written with that sequence (a forged CRC aside,
    // which `check` already vouched for).
    if in_place {
        match outcome.opened {
            Ok((records, truncated)) => assert!(
                records as usize == events.len() || truncated > 0,
                "in-place damage lost {} of {} records without a word",
                events.len() - records as usize,
                events.len()
            ),
            Err(_) => assert!(outcome.refused || outcome.records.is_empty(), "refused on open but read whole"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
});
