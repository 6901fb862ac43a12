//! Crash recovery: a run that dies mid-write, recovered from its journal, is in exactly the
//! state of a run that never died, and carries on identically without repeating an id.

mod common;

use sapphire_core::engine::{Engine, EngineConfig, EngineOutput, Output};
use sapphire_core::journal::InputJournal;
use sapphire_core::order::{Order, OrderAction};
use sapphire_persistence::journal::{for_each_record, segments, JournalConfig, JournalWriter};
use sapphire_persistence::recovery::{check_instruments, recover, RecoveryError};
use std::io::Write;

#[test]
fn recovered_state_equals_the_uninterrupted_run() {
    let dir = std::env::temp_dir().join(format!("sapphire-recovery-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (instruments, events) = common::scripted_events(21, 40_000);
    let crash_at = events.len() * 3 / 5;
    let config = EngineConfig::default();

    // The first run journals every event (as the journal stage does) and trades on it.
    let mut live = Engine::new(&config, &instruments);
    let mut live_out: Vec<Output> = Vec::new();
    {
        let (mut journal, _) = JournalWriter::<sapphire_core::event::Event>::open(JournalConfig::new(&dir)).unwrap();
        // As `run` does before the first append: the list the records' instrument ids index.
        check_instruments(&dir, &instruments).unwrap();
        for (seq, e) in events[..crash_at].iter().enumerate() {
            journal.append(seq as i64, e, true);
            live.process(seq as i64, e, &mut Vec::<Order>::new(), &mut live_out);
        }
        journal.flush();
    }
    // kill -9 mid-write: half a record at the end of the segment.
    let seg = segments(&dir).unwrap().pop().unwrap();
    std::fs::OpenOptions::new().append(true).open(&seg).unwrap().write_all(&[0x50, 0, 0, 0, 0xde, 0xad]).unwrap();
    let positions_open = (0..instruments.len())
        .any(|i| live.stages.risk.risk.portfolio().net_position(sapphire_core::instrument::InstrumentId(i as u32)).raw != 0);
    assert!(positions_open, "the crash happens with open paper positions");

    // Restart: open (truncating the torn tail), then recover.
    let (_, report) = JournalWriter::<sapphire_core::event::Event>::open(JournalConfig::new(&dir)).unwrap();
    assert_eq!(report.records, crash_at as u64);
    assert!(report.truncated_bytes > 0);
    let recovered = recover(&dir, &config, &instruments, None, |_| {}).unwrap();
    assert_eq!(recovered.events, crash_at as u64);
    assert_eq!(recovered.next_seq, crash_at as u64);
    assert!(recovered.orders_not_resent > 0);
    assert_eq!(
        format!("{:?}", recovered.stages),
        format!("{:?}", live.stages),
        "books, positions, PnL, risk state, open orders and router match"
    );

    // Both carry on over the same new events: the same outputs, no id twice.
    let mut resumed = Engine::from_stages(recovered.stages);
    let (mut a, mut b): (Vec<Output>, Vec<Output>) = (Vec::new(), Vec::new());
    for (i, e) in events[crash_at..].iter().enumerate() {
        let seq = (crash_at + i) as i64;
        live.process(seq, e, &mut Vec::<Order>::new(), &mut a);
        resumed.process(seq, e, &mut Vec::<Order>::new(), &mut b);
    }
    assert!(a == b, "the recovered engine behaves exactly as the uninterrupted one");
    let ids: Vec<u64> = live_out
        .iter()
        .chain(&b)
        .filter_map(|o| match o.output {
            EngineOutput::Order(o) if o.action == OrderAction::New => Some(o.client_order_id),
            _ => None,
        })
        .collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert!(ids.len() > 10);
    assert_eq!(unique.len(), ids.len(), "no client order id is issued twice across the restart");

    // A journal is only recovered with the instruments it was written for.
    let err = check_instruments(&dir, &instruments[..1]).unwrap_err();
    assert!(matches!(err, RecoveryError::Instruments { .. }), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn recovery_writes_the_outputs_a_crash_kept_from_the_output_journal() {
    let root = std::env::temp_dir().join(format!("sapphire-recovery-outputs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (input, output) = (root.join("input"), root.join("output"));
    let (instruments, events) = common::scripted_events(5, 20_000);
    let config = EngineConfig::default();
    let mut live = Engine::new(&config, &instruments);
    let mut live_out: Vec<Output> = Vec::new();
    {
        let (mut journal, _) = JournalWriter::<sapphire_core::event::Event>::open(JournalConfig::new(&input)).unwrap();
        check_instruments(&input, &instruments).unwrap();
        for (seq, e) in events.iter().enumerate() {
            journal.append(seq as i64, e, true);
            live.process(seq as i64, e, &mut Vec::<Order>::new(), &mut live_out);
        }
        journal.flush();
    }
    // The crash came while the edge was writing the outputs of one event: find an event with
    // several outputs well before the end, and keep only the first of them.
    let cut =
        (live_out.len() * 2 / 3..live_out.len() - 1).find(|&i| live_out[i].seq == live_out[i + 1].seq).expect("an event with two outputs");
    assert!(live_out.len() - cut > 20, "outputs are missing after the crash");
    {
        let (mut out, _) = JournalWriter::<Output>::open(JournalConfig::new(&output)).unwrap();
        for o in &live_out[..=cut] {
            out.append_record(o).unwrap();
        }
        out.sync().unwrap();
    }
    let (mut out, _) = JournalWriter::<Output>::open(JournalConfig::new(&output)).unwrap();
    let recovered = recover(&input, &config, &instruments, Some((&output, &mut out)), |_| {}).unwrap();
    assert_eq!(recovered.outputs_regenerated as usize, live_out.len() - cut - 1);
    drop(out);
    let mut journaled = Vec::new();
    for_each_record::<Output>(&output, |seq, o| journaled.push((seq, *o))).unwrap();
    assert!(journaled.iter().enumerate().all(|(i, (seq, _))| *seq == i as u64), "record sequences stay dense");
    assert!(
        journaled.iter().map(|(_, o)| *o).eq(live_out.iter().copied()),
        "the output journal equals the uninterrupted run's outputs, each once"
    );
    // Recovering again adds nothing.
    let (mut out, _) = JournalWriter::<Output>::open(JournalConfig::new(&output)).unwrap();
    assert_eq!(recover(&input, &config, &instruments, Some((&output, &mut out)), |_| {}).unwrap().outputs_regenerated, 0);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn an_input_journal_without_its_instrument_list_is_refused() {
    let root = std::env::temp_dir().join(format!("sapphire-recovery-instruments-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (input, output) = (root.join("input"), root.join("output"));
    let (instruments, events) = common::scripted_events(3, 500);
    let config = EngineConfig::default();
    // A new journal (no record yet) gets its list.
    drop(JournalWriter::<sapphire_core::event::Event>::open(JournalConfig::new(&input)).unwrap());
    check_instruments(&input, &instruments).unwrap();
    assert!(input.join("instruments.txt").exists());
    {
        let (mut journal, _) = JournalWriter::<sapphire_core::event::Event>::open(JournalConfig::new(&input)).unwrap();
        for (seq, e) in events.iter().enumerate() {
            journal.append(seq as i64, e, true);
        }
        journal.flush();
    }
    recover(&input, &config, &instruments, None, |_| {}).unwrap();
    // The list deleted: recovery refuses instead of writing this run's list over the gap.
    std::fs::remove_file(input.join("instruments.txt")).unwrap();
    let err = recover(&input, &config, &instruments, None, |_| {}).unwrap_err();
    assert!(matches!(err, RecoveryError::InstrumentsMissing { .. }), "{err}");
    assert!(err.to_string().contains("instruments.txt") && err.to_string().contains("missing"), "{err}");
    assert!(!input.join("instruments.txt").exists(), "nothing was written in its place");
    // A list that does not match is refused too.
    std::fs::write(input.join("instruments.txt"), "synthetic DOGEUSDT\n").unwrap();
    let err = recover(&input, &config, &instruments, None, |_| {}).unwrap_err();
    assert!(matches!(err, RecoveryError::Instruments { .. }), "{err}");
    // A replay's output journal gets its list written after its records: that stays allowed.
    {
        let (mut out, _) = JournalWriter::<Output>::open(JournalConfig::new(&output)).unwrap();
        out.append_record(&Output::default()).unwrap();
        out.sync().unwrap();
    }
    check_instruments(&output, &instruments).unwrap();
    let _ = std::fs::remove_dir_all(&root);
}
