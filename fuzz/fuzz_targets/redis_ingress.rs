//! What arrives from Redis: signed operator control (`control:in`), remote agents' signals
//! (`signals:in`), tick messages and output messages (rkyv archives). Never panics; a control
//! message is taken only when its HMAC-SHA256 over the timestamp and archive is the token's,
//! it is fresh (after the last one taken, within 30 s of now) and it is a control event; a
//! signed message with any byte changed is refused; a signal is taken only within its ranges.
#![no_main]

use arbitrary::Arbitrary;
use hmac::Mac;
use libfuzzer_sys::fuzz_target;
use sapphire_core::event::{Control, ControlKind, Event};
use sapphire_persistence::bus::{decode_output_message, parse_remote_signal, parse_tick, sign_control, verify_control};

#[derive(Arbitrary, Debug)]
struct Input {
    token: Vec<u8>,
    now: u64,
    last: u64,
    payload: Vec<u8>,
    ts: u64,
    kind: u8,
    value: i64,
    flip_at: u16,
    flip: u8,
}

fn mac(token: &[u8], body: &[u8]) -> Vec<u8> {
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(token).expect("any key length");
    m.update(body);
    m.finalize().into_bytes().to_vec()
}

fuzz_target!(|input: Input| {
    let token: &[u8] = if input.token.is_empty() { b"operator-token" } else { &input.token };
    let names = vec!["BTCUSDT".to_string(), "ETHUSDT".to_string()];
    let p = &input.payload;

    // Anything on control:in.
    if let Ok((ts, event)) = verify_control(p, token, input.now, input.last) {
        let (body, tag) = p.split_at(p.len() - 32);
        assert_eq!(tag, &mac(token, body)[..], "control taken with a MAC that is not the token's");
        assert!(ts > input.last && ts.abs_diff(input.now) <= 30_000_000_000, "stale control taken: ts {ts}");
        assert!(matches!(event, Event::Control(_)), "a non-control event taken as control: {event:?}");
    }

    // A message signed with the token: taken when fresh; with any byte changed, refused.
    let kind = match input.kind % 6 {
        0 => ControlKind::Halt,
        1 => ControlKind::Resume,
        2 => ControlKind::Kill,
        3 => ControlKind::SetLimit,
        4 => ControlKind::PauseAgent,
        _ => ControlKind::ResumeAgent,
    };
    let event = Event::Control(Control { ts_event: input.ts, ts_recv: input.ts, kind, value: input.value, ..Control::default() });
    let signed = sign_control(&event, input.ts, token).expect("sign");
    let fresh = input.ts > input.last && input.ts.abs_diff(input.now) <= 30_000_000_000;
    assert_eq!(verify_control(&signed, token, input.now, input.last).is_ok(), fresh);
    if let Ok((_, got)) = verify_control(&signed, token, input.now, input.last) {
        assert_eq!(got, event);
    }
    let mut tampered = signed.clone();
    let i = usize::from(input.flip_at) % tampered.len();
    tampered[i] ^= input.flip.max(1);
    assert!(verify_control(&tampered, token, input.now, input.last).is_err(), "a tampered control message was taken (byte {i})");
    let mut other = token.to_vec();
    other.push(b'x');
    assert!(verify_control(&signed, &other, input.now, input.last).is_err(), "a message signed with another token was taken");

    // signals:in, ticks, outputs.
    if let Ok(s) = parse_remote_signal(p, &names, input.now) {
        assert!((-10_000..=10_000).contains(&s.strength_bps) && s.confidence_bps <= 10_000, "{s:?}");
        assert!(s.instrument.index() < names.len() && s.ttl_ns > 0 && s.ttl_ns <= 3_600_000_000_000, "{s:?}");
    }
    if let Ok((id, _)) = parse_tick(p, &names) {
        assert!(id.index() < names.len());
    }
    let _ = decode_output_message(p);
});
