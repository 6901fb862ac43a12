//! The journal [`Tail`] following a writer, under loom: every interleaving (up to a
//! preemption bound, 3 unless LOOM_MAX_PREEMPTIONS says otherwise) of the tail's file-system
//! steps (listing segments, reading the current one) with a writer's: a segment header, each
//! record written in two pieces (so the tail meets half-written records), a roll to a second
//! segment. The tail hands out every record exactly once, in order, as written, and never
//! takes a record being written for damage. Run: `scripts/loom.sh` (RUSTFLAGS="--cfg
//! sapphire_loom" cargo test -p sapphire-persistence --release --test loom_tail).
#![cfg(sapphire_loom)]

use loom::thread;
use sapphire_core::event::{Event, Timer};
use sapphire_persistence::journal::{loom_io, segments, Durability, JournalConfig, JournalWriter, Tail};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

fn event(i: u64) -> Event {
    Event::Timer(Timer { ts_event: i, ts_recv: i, ..Timer::default() })
}

/// A real journal of `n` records, in segments of `segment_bytes`: its segments' names and bytes.
fn journal(n: u64, segment_bytes: u64) -> Vec<(String, Vec<u8>)> {
    let dir = std::env::temp_dir().join(format!("sapphire-loom-tail-src-{}-{segment_bytes}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut w, _) =
        JournalWriter::<Event>::open(JournalConfig { dir: dir.clone(), segment_bytes, durability: Durability::Os }).expect("open");
    for i in 0..n {
        w.append_event(&event(i)).expect("append");
    }
    w.sync().expect("sync");
    drop(w);
    let segs = segments(&dir).expect("segments");
    let out = segs.iter().map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(p).expect("read"))).collect();
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// The framed length of one record.
fn record_len() -> usize {
    let segs = journal(1, 1 << 20);
    segs[0].1.len() - 16
}

fn append(path: &Path, bytes: &[u8]) {
    loom_io::point();
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("open for append");
    f.write_all(bytes).expect("write");
}

static RUN: AtomicUsize = AtomicUsize::new(0);

#[test]
fn tail_follows_a_writer_through_torn_records_and_a_roll() {
    const N: u64 = 3;
    let record = record_len();
    let segs = journal(N, 16 + 2 * record as u64);
    assert_eq!(segs.len(), 2, "two segments: two records, then one");
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(move || {
        let dir: PathBuf =
            std::env::temp_dir().join(format!("sapphire-loom-tail-{}-{}", std::process::id(), RUN.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&dir).expect("dir");
        let writer = {
            let (dir, segs) = (dir.clone(), segs.clone());
            thread::spawn(move || {
                for (name, bytes) in &segs {
                    let path = dir.join(name);
                    // The header, then each record in two pieces.
                    append(&path, &bytes[..16]);
                    for record in bytes[16..].chunks(record) {
                        append(&path, &record[..24]);
                        append(&path, &record[24..]);
                    }
                }
            })
        };
        let mut tail = Tail::open(&dir, 0).expect("tail");
        let mut seen = Vec::new();
        while seen.len() < N as usize {
            match tail.poll::<Event>(8, |seq, e| seen.push((seq, *e))) {
                Ok(0) => thread::yield_now(),
                Ok(_) => {}
                Err(e) => panic!("the tail took a record being written for damage: {e}"),
            }
        }
        writer.join().unwrap();
        assert_eq!(tail.poll::<Event>(8, |seq, e| seen.push((seq, *e))).expect("poll"), 0, "more than was written");
        let want: Vec<(u64, Event)> = (0..N).map(|i| (i, event(i))).collect();
        assert_eq!(seen, want, "lost, repeated or changed");
        let _ = std::fs::remove_dir_all(&dir);
    });
    let runs = RUN.load(Ordering::Relaxed);
    eprintln!("loom: {runs} interleavings of the tail and the writer");
    assert!(runs > 100, "the model explored only {runs} interleavings");
}
