//! Conformance of request signing against the venues' own vectors in
//! `../shared/data/exchange/{binance,bybit}/signing_vectors.json` (documentation examples and
//! other implementations' reference values; see SOURCES.md there): the real signing code of
//! `sapphire_gateway::venue::sign` must reproduce every verifiable signature, and a payload
//! given before percent-encoding must encode to the documented payload.
//! Usage: cargo run --example signing_conformance -- ../shared/data/exchange

use sapphire_gateway::venue::sign::{binance_signature, bybit_signature, hmac_sha256_hex, Query};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;

fn text<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

fn main() -> ExitCode {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "../shared/data/exchange".into()));
    let (mut passed, mut failed, mut skipped) = (0u32, 0u32, 0u32);
    let mut check = |name: &str, ok: bool, detail: String| {
        if ok {
            passed += 1;
            println!("  ok    {name}");
        } else {
            failed += 1;
            println!("  FAIL  {name}: {detail}");
        }
    };
    for venue in ["binance", "bybit"] {
        let path = dir.join(venue).join("signing_vectors.json");
        let Ok(raw) = std::fs::read_to_string(&path) else {
            println!("signing conformance: {} absent, skipped", path.display());
            continue;
        };
        let doc: Value = match serde_json::from_str(&raw) {
            Ok(d) => d,
            Err(e) => {
                check(&format!("{venue} vectors file"), false, e.to_string());
                continue;
            }
        };
        println!("{venue}: {}", path.display());
        for v in doc["vectors"].as_array().into_iter().flatten() {
            let name = format!("{venue}/{}", text(v, "name").unwrap_or("?"));
            let (Some(secret), Some(want)) = (text(v, "secret"), text(v, "signature")) else {
                // Vectors without a usable secret cannot be checked (the docs' redacted ones).
                skipped += 1;
                println!("  skip  {name}: no secret to verify with ({})", text(v, "note").unwrap_or("unverifiable"));
                continue;
            };
            match venue {
                "binance" => {
                    let payload = text(v, "payload").unwrap_or_default();
                    let got = binance_signature(secret, payload);
                    check(&name, got == want, format!("signed {payload:?} to {got}, expected {want}"));
                    if let Some(before) = text(v, "payload_before_encoding") {
                        // Build the query the way the client does: each value percent-encoded.
                        let mut q = Query::new();
                        for pair in before.split('&') {
                            let (k, val) = pair.split_once('=').unwrap_or((pair, ""));
                            q.push(k, val);
                        }
                        let encoded = q.as_str().to_string();
                        check(&format!("{name} (encoding)"), encoded == payload, format!("encoded to {encoded:?}"));
                    }
                    if let (Some(query), Some(body)) = (text(v, "query_string"), text(v, "request_body")) {
                        // Query and body concatenated without a separator, as Binance documents.
                        let got = binance_signature(secret, &format!("{query}{body}"));
                        check(&format!("{name} (query+body)"), got == want, format!("got {got}"));
                    }
                }
                _ => {
                    if let (Some(ts), Some(key), Some(window), Some(payload)) =
                        (text(v, "timestamp"), text(v, "api_key"), text(v, "recv_window"), text(v, "payload"))
                    {
                        let (Ok(ts), Ok(window)) = (ts.parse::<u64>(), window.parse::<u64>()) else {
                            check(&name, false, "timestamp or recv_window is not a number".into());
                            continue;
                        };
                        let got = bybit_signature(secret, ts, key, window, payload);
                        check(&name, got == want, format!("got {got}, expected {want}"));
                    } else if let Some(string) = text(v, "string_to_sign") {
                        let got = hmac_sha256_hex(secret.as_bytes(), string.as_bytes());
                        check(&name, got == want, format!("got {got}, expected {want}"));
                    } else {
                        skipped += 1;
                        println!("  skip  {name}: no inputs this checker knows");
                    }
                }
            }
        }
    }
    println!("signing conformance: {passed} passed, {failed} failed, {skipped} skipped (unverifiable)");
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
