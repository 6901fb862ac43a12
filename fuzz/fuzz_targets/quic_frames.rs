//! What a remote agent can send over QUIC: frame headers, agent frames (hello, signal) as rkyv
//! archives validated in place, and what the agent side reads (core frames, snapshot
//! datagrams). The hello check is the ingress's own (`authenticate_hello`): a hello is taken
//! only from a configured external agent presenting exactly its token; nothing else
//! authenticates. Input: the first bytes pick the configured token, the rest is a frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rkyv::util::AlignedVec;
use sapphire_gateway::quic::frames::{self, AgentFrame, HEADER_LEN, MAX_AGENT_FRAME, MAX_CORE_FRAME};
use sapphire_gateway::quic::server::authenticate_hello;
use sapphire_gateway::quic::{is_external_agent, AgentToken};

const AGENT: u16 = 9;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else { return };
    // The configured token: some of the input (or a fixed one), so the fuzzer can aim at it.
    let (token_bytes, frame) = data.split_at(usize::from(split % 16).min(data.len()));
    let token_text = String::from_utf8_lossy(token_bytes);
    let configured_text = if AgentToken::new(&token_text).is_ok() { token_text.as_ref() } else { "s3cret" };
    let configured = AgentToken::new(configured_text).expect("a token");
    let mut tokens = vec![None; usize::from(AGENT) + 2];
    tokens[usize::from(AGENT)] = Some(configured.clone());
    // An internal agent id with a token configured must still be refused.
    tokens[0] = Some(configured.clone());

    // As read off the stream: a header, then that many bytes.
    let mut aligned = AlignedVec::<16>::new();
    if let Some(h) = frame.get(..HEADER_LEN).and_then(|h| <&[u8; HEADER_LEN]>::try_from(h).ok()) {
        if let Ok((len, _version)) = frames::parse_header(h, MAX_AGENT_FRAME) {
            assert!(len <= MAX_AGENT_FRAME, "a frame over the limit was taken: {len}");
            if let Some(body) = frame.get(HEADER_LEN..HEADER_LEN + len) {
                aligned.extend_from_slice(body);
            }
        }
        let _ = frames::parse_header(h, MAX_CORE_FRAME);
    }
    // And the raw bytes as an archive.
    let mut raw = AlignedVec::<16>::new();
    raw.extend_from_slice(frame);
    for buf in [&aligned, &raw] {
        if let Ok(id) = authenticate_hello(&tokens, buf) {
            let hello = rkyv::from_bytes::<AgentFrame, rkyv::rancor::Error>(buf).expect("an accepted hello deserializes");
            let AgentFrame::Hello { agent, token } = hello else { panic!("a non-hello authenticated: {hello:?}") };
            assert_eq!(agent, id);
            assert!(is_external_agent(id), "internal agent {id} authenticated");
            assert!(tokens[usize::from(id)].as_ref().is_some_and(|t| t.matches(&token)), "agent {id} authenticated with a wrong token");
            assert_eq!(token, configured_text, "authenticated with a token that is not byte for byte the configured one");
        }
        let _ = frames::access_agent(buf);
        let _ = frames::decode_core(buf);
    }
    let _ = frames::decode_snapshot(frame);

    // A hello built from the input: accepted exactly when its token is the configured one.
    let presented = String::from_utf8_lossy(frame).into_owned();
    let encoded = frames::encode_agent(&AgentFrame::Hello { agent: AGENT, token: presented.clone() });
    let mut buf = AlignedVec::<16>::new();
    buf.extend_from_slice(&encoded[HEADER_LEN..]);
    let accepted = authenticate_hello(&tokens, &buf).is_ok();
    assert_eq!(accepted, configured.matches(&presented), "hello with {presented:?}");
});
