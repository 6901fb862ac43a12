//! Pins the size and alignment of every hot-path type: a change here changes journals,
//! ring slots and cache behaviour, so it must be on purpose.

use sapphire_core::engine::{Output, StageMsg};
use sapphire_core::event::*;
use sapphire_core::fixed::{Money, Price, Quantity};
use sapphire_core::order::{Intent, Order};
use std::mem::{align_of, size_of};

#[test]
fn hot_path_layouts() {
    let cases: &[(&str, usize, usize, usize)] = &[
        ("Price", size_of::<Price>(), align_of::<Price>(), 8),
        ("Quantity", size_of::<Quantity>(), align_of::<Quantity>(), 8),
        ("Money", size_of::<Money>(), align_of::<Money>(), 8),
        ("Quote", size_of::<Quote>(), align_of::<Quote>(), 56),
        ("Trade", size_of::<Trade>(), align_of::<Trade>(), 48),
        ("BookDelta", size_of::<BookDelta>(), align_of::<BookDelta>(), 64),
        ("Signal", size_of::<Signal>(), align_of::<Signal>(), 48),
        ("ExecReport", size_of::<ExecReport>(), align_of::<ExecReport>(), 72),
        ("Timer", size_of::<Timer>(), align_of::<Timer>(), 24),
        ("Control", size_of::<Control>(), align_of::<Control>(), 40),
        ("Event", size_of::<Event>(), align_of::<Event>(), 80),
        ("Intent", size_of::<Intent>(), align_of::<Intent>(), 40),
        ("Order", size_of::<Order>(), align_of::<Order>(), 64),
    ];
    for &(name, size, align, want) in cases {
        assert_eq!(size, want, "size_of::<{name}>()");
        assert_eq!(align, 8, "align_of::<{name}>()");
    }
    for (name, size) in [
        ("Quote", size_of::<Quote>()),
        ("Trade", size_of::<Trade>()),
        ("BookDelta", size_of::<BookDelta>()),
        ("Signal", size_of::<Signal>()),
    ] {
        assert!(size <= 64, "{name} must fit one cache line");
    }
    // Messages between split stages and outputs stay small enough to copy cheaply.
    // Split stages copy this per hop: 904 bytes is 15 cache lines, about 20 ns. (840 → 904
    // for one agent's PnL at timers, for the API's per-agent margin.)
    assert_eq!(size_of::<StageMsg>(), 912, "StageMsg");
    assert!(size_of::<Output>() <= 128, "Output is {}", size_of::<Output>());
}
