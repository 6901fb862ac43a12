//! The journal readers over arbitrary bytes: up to three segment files of anything, named by
//! a sequence the input picks (often the one their header claims). Every reader (the walk,
//! the tail follower, last-record, backwards) never panics, hands out only records whose CRC
//! holds, and agrees with the others; opening for writing cuts only a torn tail, and a damaged
//! journal is refused, then repaired, then opens and takes appends.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sapphire_fuzz::{journal_check, scratch_dir};

#[derive(Arbitrary, Debug)]
struct Segment {
    name_from_header: bool,
    name: u8,
    bytes: Vec<u8>,
}

fuzz_target!(|segs: Vec<Segment>| {
    let dir = scratch_dir("journal-bytes");
    for seg in segs.iter().take(3) {
        let header_seq = seg.bytes.get(8..16).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        let first = match (seg.name_from_header, header_seq) {
            (true, Some(s)) => s,
            _ => u64::from(seg.name % 8),
        };
        std::fs::write(dir.join(format!("{first:020}.seg")), &seg.bytes).expect("write a segment");
    }
    journal_check::check(&dir);
    let _ = std::fs::remove_dir_all(&dir);
});
