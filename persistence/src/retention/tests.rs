use super::*;
use crate::journal::{for_each_record, for_each_record_from, Durability, JournalConfig, JournalWriter};
use sapphire_core::engine::{Engine, EngineConfig, EngineOutput};
use sapphire_core::event::Timer;
use sapphire_core::portfolio::PnlSummary;

fn base(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sapphire-retention-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

fn timer(i: u64) -> Event {
    Event::Timer(Timer { ts_event: i, ..Timer::default() })
}

/// An output of inbound event `seq`.
fn output(seq: u64) -> Output {
    Output { seq: seq as i64, output: EngineOutput::Pnl { ts_event: seq, total: PnlSummary::default() } }
}

/// A core's data directory: `events` input events, one output for every event up to
/// `outputs_to` (inclusive), small segments so there are many.
fn data(name: &str, events: u64, outputs_to: u64) -> (PathBuf, Dirs) {
    let root = base(name);
    let dirs = Dirs::under(&root);
    let small = |d: &Path| JournalConfig { segment_bytes: 4 * 1024, durability: Durability::Os, ..JournalConfig::new(d) };
    let (mut input, _) = JournalWriter::<Event>::open(small(&dirs.input)).unwrap();
    for i in 0..events {
        input.append_event(&timer(i)).unwrap();
    }
    input.sync().unwrap();
    fs::write(dirs.input.join(INSTRUMENTS_FILE), "binance BTCUSDT\n").unwrap();
    let (mut out, _) = JournalWriter::<Output>::open(small(&dirs.output)).unwrap();
    for i in 0..=outputs_to {
        out.append_record(&output(i)).unwrap();
    }
    out.sync().unwrap();
    (root, dirs)
}

fn fingerprints() -> Fingerprints {
    Fingerprints::new(&EngineConfig::default(), &[])
}

fn write_snapshot(dirs: &Dirs, seq: u64) -> PathBuf {
    let stages = Engine::new(&EngineConfig::default(), &[]).stages;
    snapshot::write(&dirs.snapshots, seq, &snapshot::encode(seq, seq, fingerprints(), &stages).unwrap()).unwrap()
}

fn full() -> SnapshotCheck {
    SnapshotCheck::Full(fingerprints())
}

fn all_events(dir: &Path) -> Vec<(u64, u64)> {
    let mut v = Vec::new();
    for_each_record::<Event>(dir, |seq, e| v.push((seq, e.ts_event()))).unwrap();
    v
}

const NOW_AND_FOREVER: Duration = Duration::ZERO;

#[test]
fn without_a_usable_snapshot_nothing_goes() {
    let (_root, dirs) = data("none", 2_000, 1_999);
    let plan = super::plan(&dirs, &full(), None, NOW_AND_FOREVER, SystemTime::now()).unwrap();
    assert!(plan.segments.is_empty(), "{plan:?}");
    assert!(plan.held.iter().any(|h| h.contains("no usable snapshot")), "{:?}", plan.held);
    // A snapshot of an event the journal does not hold, or whose later outputs are not
    // written yet, is not usable either.
    write_snapshot(&dirs, 5_000);
    write_snapshot(&dirs, 1_999);
    let plan = super::plan(&dirs, &full(), None, NOW_AND_FOREVER, SystemTime::now()).unwrap();
    assert!(plan.segments.is_empty(), "{plan:?}");
    assert!(plan.held.iter().any(|h| h.contains("does not hold its event")), "{:?}", plan.held);
    assert!(plan.held.iter().any(|h| h.contains("no output of a later event")), "{:?}", plan.held);
}

#[tokio::test]
async fn input_segments_before_the_snapshot_are_archived_deleted_and_fetched_back_unchanged() {
    let (root, dirs) = data("input", 2_000, 1_999);
    let before = all_events(&dirs.input);
    let segs_before = segments(&dirs.input).unwrap();
    assert!(segs_before.len() > 10, "small segments: {}", segs_before.len());
    write_snapshot(&dirs, 1_200);
    let plan = super::plan(&dirs, &full(), None, NOW_AND_FOREVER, SystemTime::now()).unwrap();
    assert_eq!(plan.snapshot, Some(1_200));
    assert!(!plan.segments.is_empty());
    // Only input (no sink known), only segments wholly at or before the snapshot's event, and
    // every one of those.
    assert!(plan.segments.iter().all(|s| s.journal == INPUT && s.end_seq <= 1_201), "{plan:?}");
    let kept_first = segs_before.iter().filter_map(|p| segment_first_seq(p)).find(|&f| f > 1_201).unwrap();
    let planned_end = plan.segments.last().unwrap().end_seq;
    assert!(planned_end <= 1_201 && kept_first > 1_201);
    assert!(plan.held.iter().any(|h| h.contains("no sink is known")));

    let archive = Archive::open(root.join("archive").to_str().unwrap(), "a").unwrap();
    let done = apply(&plan, &dirs, &archive).await.unwrap();
    assert_eq!(done.input_segments as usize, plan.segments.len());
    assert_eq!(done.output_segments, 0);
    assert_eq!(done.bytes, plan.bytes());
    for seg in &plan.segments {
        assert!(!seg.path.exists(), "{} deleted", seg.path.display());
        let copy = root.join("archive/a/input").join(seg.path.file_name().unwrap());
        assert_eq!(fs::metadata(&copy).unwrap().len(), seg.bytes, "{} archived whole", copy.display());
    }
    assert!(root.join("archive/a/input/instruments.txt").exists());
    // The journal opens and reads from where recovery starts: the event after the snapshot.
    let (w, rec) = JournalWriter::<Event>::open(JournalConfig::new(&dirs.input)).unwrap();
    assert_eq!(rec.next_seq, 2_000);
    drop(w);
    let mut after = Vec::new();
    for_each_record_from::<Event>(&dirs.input, 1_201, |seq, _| after.push(seq)).unwrap();
    assert_eq!(after, (1_201..2_000).collect::<Vec<_>>());
    // A second pass finds nothing more to do.
    let again = super::plan(&dirs, &full(), None, NOW_AND_FOREVER, SystemTime::now()).unwrap();
    assert!(again.segments.is_empty(), "{again:?}");

    // Fetched back into a copy of the journal: every event, as it was.
    let restored = root.join("restored");
    fs::create_dir_all(&restored).unwrap();
    for p in segments(&dirs.input).unwrap() {
        fs::copy(&p, restored.join(p.file_name().unwrap())).unwrap();
    }
    let fetched = fetch(&archive, INPUT, &restored).await.unwrap();
    assert_eq!(fetched, plan.segments.len());
    assert_eq!(all_events(&restored), before);
    assert!(restored.join(INSTRUMENTS_FILE).exists());
    // Into an empty folder: everything archived, nothing else.
    let only = root.join("only-archived");
    assert_eq!(fetch(&archive, INPUT, &only).await.unwrap(), plan.segments.len());
    assert_eq!(all_events(&only), before[..planned_end as usize].to_vec());
}

#[test]
fn a_damaged_newest_snapshot_falls_back_to_the_one_before() {
    let (_root, dirs) = data("damaged", 2_000, 1_999);
    write_snapshot(&dirs, 800);
    let newest = write_snapshot(&dirs, 1_500);
    let mut bytes = fs::read(&newest).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    fs::write(&newest, bytes).unwrap();
    let plan = super::plan(&dirs, &full(), None, NOW_AND_FOREVER, SystemTime::now()).unwrap();
    assert_eq!(plan.snapshot, Some(800));
    assert!(plan.segments.iter().all(|s| s.end_seq <= 801));
    assert!(plan.held.iter().any(|h| h.contains("checksum")), "{:?}", plan.held);
    // Checked by checksums only (journal prune), the same.
    let by_hand = super::plan(&dirs, &SnapshotCheck::Checksums, None, NOW_AND_FOREVER, SystemTime::now()).unwrap();
    assert_eq!(by_hand.snapshot, Some(800));
    // Written for another engine configuration: the core's retention does not count on it
    // (recovery would not use it), a checksum-only check does.
    let other = EngineConfig { order_id_epoch: 2, ..EngineConfig::default() };
    let foreign = SnapshotCheck::Full(Fingerprints::new(&other, &[]));
    let plan = super::plan(&dirs, &foreign, None, NOW_AND_FOREVER, SystemTime::now()).unwrap();
    assert_eq!(plan.snapshot, None, "{:?}", plan.held);
}

#[test]
fn the_sink_holds_back_what_it_has_not_committed() {
    let (_root, dirs) = data("sink", 2_000, 1_999);
    write_snapshot(&dirs, 1_500);
    // The sink has committed outputs 0..300 only: the snapshot's outputs are not all in
    // Postgres, so the input stays; output segments wholly before 300 may go.
    let plan = super::plan(&dirs, &full(), Some(300), NOW_AND_FOREVER, SystemTime::now()).unwrap();
    assert_eq!(plan.snapshot, None);
    assert!(plan.held.iter().any(|h| h.contains("has not committed")), "{:?}", plan.held);
    assert!(!plan.segments.is_empty());
    assert!(plan.segments.iter().all(|s| s.journal == OUTPUT && s.end_seq <= 300), "{plan:?}");
    // Caught up past the snapshot's outputs: input up to the snapshot, output up to the cursor.
    let plan = super::plan(&dirs, &full(), Some(1_800), NOW_AND_FOREVER, SystemTime::now()).unwrap();
    assert_eq!(plan.snapshot, Some(1_500));
    assert!(plan.segments.iter().any(|s| s.journal == INPUT));
    assert!(plan.segments.iter().filter(|s| s.journal == OUTPUT).all(|s| s.end_seq <= 1_800));
    assert!(plan.segments.iter().filter(|s| s.journal == OUTPUT).count() > 1);
    // Output written to recently stays for keep_output.
    let plan = super::plan(&dirs, &full(), Some(1_800), Duration::from_secs(3600), SystemTime::now()).unwrap();
    assert!(plan.segments.iter().all(|s| s.journal == INPUT), "{plan:?}");
    let later = SystemTime::now() + Duration::from_secs(7200);
    let plan = super::plan(&dirs, &full(), Some(1_800), Duration::from_secs(3600), later).unwrap();
    assert!(plan.segments.iter().any(|s| s.journal == OUTPUT));
}

#[tokio::test]
async fn a_copy_left_by_a_crash_is_not_copied_again_and_a_short_one_is_replaced() {
    let (root, dirs) = data("crash", 2_000, 1_999);
    write_snapshot(&dirs, 1_500);
    let plan = super::plan(&dirs, &full(), None, NOW_AND_FOREVER, SystemTime::now()).unwrap();
    let archive = Archive::open(&format!("file://{}", root.join("archive").display()), "a").unwrap();
    // A crash after copying the first segment and half of the second, before any delete.
    let folder = root.join("archive/a/input");
    fs::create_dir_all(&folder).unwrap();
    let (first, second) = (&plan.segments[0], &plan.segments[1]);
    fs::copy(&first.path, folder.join(first.path.file_name().unwrap())).unwrap();
    let half = fs::read(&second.path).unwrap();
    fs::write(folder.join(second.path.file_name().unwrap()), &half[..half.len() / 2]).unwrap();
    apply(&plan, &dirs, &archive).await.unwrap();
    assert_eq!(fs::metadata(folder.join(second.path.file_name().unwrap())).unwrap().len(), second.bytes);
    let restored = root.join("restored");
    fetch(&archive, INPUT, &restored).await.unwrap();
    for seg in &plan.segments {
        assert!(restored.join(seg.path.file_name().unwrap()).exists());
    }
}

#[tokio::test]
async fn another_file_under_the_name_is_never_overwritten_and_a_failed_copy_deletes_nothing() {
    let (root, dirs) = data("clash", 2_000, 1_999);
    write_snapshot(&dirs, 1_500);
    let plan = super::plan(&dirs, &full(), None, NOW_AND_FOREVER, SystemTime::now()).unwrap();
    assert!(plan.segments.len() >= 2, "{plan:?}");
    let local_before: Vec<Vec<u8>> = plan.segments.iter().map(|s| fs::read(&s.path).unwrap()).collect();
    // Another core's segment of the same name and size already in the shard's folder.
    let folder = root.join("archive/a/input");
    fs::create_dir_all(&folder).unwrap();
    let first = &plan.segments[0];
    let theirs: Vec<u8> = local_before[0].iter().map(|b| b ^ 0x5a).collect();
    fs::write(folder.join(first.path.file_name().unwrap()), &theirs).unwrap();
    let archive = Archive::open(&format!("file://{}", root.join("archive").display()), "a").unwrap();
    let e = apply(&plan, &dirs, &archive).await.unwrap_err();
    assert!(e.to_string().contains("different file of this name"), "{e}");
    assert_eq!(fs::read(folder.join(first.path.file_name().unwrap())).unwrap(), theirs, "their copy was overwritten");
    for (seg, bytes) in plan.segments.iter().zip(&local_before) {
        assert_eq!(&fs::read(&seg.path).unwrap(), bytes, "{} changed or went", seg.path.display());
    }
    // An archive that cannot be written (its journal folder is a file): nothing is deleted.
    let blocked = root.join("blocked");
    fs::create_dir_all(blocked.join("a")).unwrap();
    fs::write(blocked.join("a/input"), "not a folder").unwrap();
    let archive = Archive::open(blocked.to_str().unwrap(), "a").unwrap();
    assert!(apply(&plan, &dirs, &archive).await.is_err());
    for (seg, bytes) in plan.segments.iter().zip(&local_before) {
        assert_eq!(&fs::read(&seg.path).unwrap(), bytes, "{} changed or went", seg.path.display());
    }
    assert_eq!(all_events(&dirs.input).len(), 2_000);
}

#[test]
fn archive_locations_are_checked() {
    for bad in ["", "s3://bucket/x", "gs://", "http://example.com/x"] {
        let e = Archive::open(bad, "a").unwrap_err();
        assert!(matches!(e, RetentionError::Spec { .. }), "{bad:?}: {e}");
    }
}

#[test]
fn cursor_files_round_trip_and_garbage_is_nothing_known() {
    let root = base("cursor");
    fs::create_dir_all(&root).unwrap();
    let p = root.join("cursor");
    assert_eq!(read_cursor_file(&p), None);
    write_cursor_file(&p, 12_345).unwrap();
    assert_eq!(read_cursor_file(&p), Some(12_345));
    fs::write(&p, "twelve").unwrap();
    assert_eq!(read_cursor_file(&p), None);
}
