//! The ring (claim, publish, gating, close; several producers and consumers) and the market
//! board's seqlock under loom: every interleaving of small models (up to a preemption bound,
//! 3 unless LOOM_MAX_PREEMPTIONS says otherwise), with loom's own atomics and cells swapped in
//! (`--cfg loom`, core/src/sync.rs), so a lost, torn (a racing read of a slot) or duplicated
//! event fails the model. Run: `scripts/loom.sh` (RUSTFLAGS="--cfg loom" cargo test
//! -p sapphire-core --release --test loom).
#![cfg(loom)]

use loom::thread;
use sapphire_core::board::{MarketBoard, Top};
use sapphire_core::fixed::{Price, Quantity};
use sapphire_core::instrument::InstrumentId;
use sapphire_core::ring::{ring, Consumer, Poll};

fn model(f: impl Fn() + Sync + Send + 'static) {
    model_bounded(3, f);
}

/// A model explored up to `bound` preemptions (unless LOOM_MAX_PREEMPTIONS says otherwise).
fn model_bounded(bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(bound);
    }
    // Consumers poll until the ring is closed: the spinning costs branches.
    b.max_branches = 100_000;
    b.check(f);
}

/// Reads until the ring is closed and drained: every event with its sequence.
fn drain(mut c: Consumer<(u64, u64)>) -> Vec<(i64, (u64, u64))> {
    let mut seen = Vec::new();
    loop {
        match c.poll(4, |v, seq, _| seen.push((seq, *v))) {
            Poll::Closed => return seen,
            Poll::Empty => thread::yield_now(),
            Poll::Handled(_) => {}
        }
    }
}

/// Every consumer saw every event once, in sequence order, as written.
fn check(seen: &[(i64, (u64, u64))], written: &[(u64, u64)]) {
    let seqs: Vec<i64> = seen.iter().map(|s| s.0).collect();
    assert_eq!(seqs, (0..written.len() as i64).collect::<Vec<_>>(), "lost, duplicated or out of order: {seen:?}");
    let mut values: Vec<(u64, u64)> = seen.iter().map(|s| s.1).collect();
    values.sort_unstable();
    let mut want = written.to_vec();
    want.sort_unstable();
    assert_eq!(values, want, "an event not as written: {seen:?}");
}

#[test]
fn ring_two_producers_claim_distinct_slots() {
    model(|| {
        // Two producers race for the claim cursor; the consumer sees both, once each, whole.
        // (Two consumers as well took over 10 minutes: the wrap model below has them.)
        let (p, cs) = ring::<(u64, u64)>(2, 1);
        let readers: Vec<_> = cs.into_iter().map(|c| thread::spawn(move || drain(c))).collect();
        let writers: Vec<_> = (1..=2u64)
            .map(|id| {
                let mut p = p.clone();
                thread::spawn(move || {
                    let mut v = (id, id * 100);
                    while let Err(back) = p.try_publish(v) {
                        v = back;
                        thread::yield_now();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        p.close();
        for r in readers {
            check(&r.join().unwrap(), &[(1, 100), (2, 200)]);
        }
    });
}

#[test]
fn ring_wraps_only_past_the_slowest_consumer() {
    model(|| {
        // Two slots, three events, two consumers that each poll twice (no spinning: spinning
        // consumers with a waiting producer ran past 7 minutes): the third claim succeeds only
        // once both consumers released slot 0, and never overwrites a slot either still reads
        // (loom fails the model on such a race).
        let (mut p, cs) = ring::<(u64, u64)>(2, 2);
        let readers: Vec<_> = cs
            .into_iter()
            .map(|mut c| {
                thread::spawn(move || {
                    let mut seen = Vec::new();
                    for _ in 0..2 {
                        c.poll(4, |v, seq, _| seen.push((seq, *v)));
                        thread::yield_now();
                    }
                    seen
                })
            })
            .collect();
        let mut accepted = Vec::new();
        for v in [(1, 11), (2, 22), (3, 33)] {
            if let Ok(seq) = p.try_publish(v) {
                assert_eq!(seq, accepted.len() as i64, "sequences are claimed in order");
                accepted.push(v);
            }
            thread::yield_now();
        }
        assert!(accepted.len() >= 2, "two slots were free");
        for r in readers {
            let seen = r.join().unwrap();
            // A prefix of what was published, in order, once each, as written.
            assert!(seen.len() <= accepted.len());
            check(&seen, &accepted[..seen.len()]);
        }
    });
}

#[test]
fn ring_poll_while_leaves_refused_events_in_place() {
    model(|| {
        let (mut p, mut cs) = ring::<(u64, u64)>(2, 1);
        let mut c = cs.pop().unwrap();
        let reader = thread::spawn(move || {
            // Refuse each event the first time it is offered (the journal gate's pattern).
            let mut seen: Vec<(i64, (u64, u64))> = Vec::new();
            let mut offered = -1i64;
            loop {
                let r = c.poll_while(4, |v, seq| {
                    if offered < seq {
                        offered = seq;
                        return false;
                    }
                    seen.push((seq, *v));
                    true
                });
                match r {
                    Poll::Closed => return seen,
                    Poll::Empty | Poll::Handled(0) => thread::yield_now(),
                    Poll::Handled(_) => {}
                }
            }
        });
        let written = [(1, 1), (2, 2), (3, 3)];
        for v in written {
            let mut v = v;
            while let Err(back) = p.try_publish(v) {
                v = back;
                thread::yield_now();
            }
        }
        p.close();
        check(&reader.join().unwrap(), &written);
    });
}

fn top(i: i64) -> Top {
    // Every field derives from i: a torn read mixes two of them.
    Top {
        bid: Price::from_raw(i),
        bid_qty: Quantity::from_raw(2 * i),
        ask: Price::from_raw(i + 1),
        ask_qty: Quantity::from_raw(3 * i),
        last_trade: Price::from_raw(4 * i),
        ts_event: i as u64,
        updates: 0,
        in_sync: i % 2 == 0,
    }
}

#[test]
fn board_readers_never_see_a_torn_top() {
    model(|| {
        let board = loom::sync::Arc::new(MarketBoard::new(1));
        board.publish(InstrumentId(0), &top(1));
        let writer = {
            let board = board.clone();
            thread::spawn(move || board.publish(InstrumentId(0), &top(2)))
        };
        // One read racing the second write: the first top or the second, whole.
        let t = board.read(InstrumentId(0)).expect("published");
        let i = t.bid.raw;
        assert!((1..=2).contains(&i), "a value never written: {t:?}");
        assert_eq!(Top { updates: 0, ..t }, top(i), "torn");
        assert_eq!(t.updates, i as u64, "the update count does not match the top");
        writer.join().unwrap();
        let last = board.read(InstrumentId(0)).unwrap();
        assert_eq!((last.bid.raw, last.updates), (2, 2));
    });
}
