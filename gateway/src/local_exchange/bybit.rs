//! The local exchange's Bybit v5 public side: the WebSockets at `/v5/public/spot` and
//! `/v5/public/linear`, and `GET /v5/market/instruments-info`.
//!
//! A session starts with no topics. `{"op":"subscribe","args":[…],"req_id":…}` is answered
//! `{"success":true,"ret_msg":…,"conn_id":…,"req_id":…,"op":"subscribe"}`, or with
//! `success:false` and Bybit's reason for a topic it does not serve, one already subscribed,
//! or more than 10 topics in one spot request (nothing of a refused request is subscribed).
//! Each `orderbook.{depth}.{symbol}` subscription is followed by a snapshot of the
//! exchange's own book with its current `u`, built under the book lock together with the
//! subscription, so the tape's next delta for that topic continues it exactly (a book the
//! tape has not touched yet sends none: the tape's own first snapshot follows). `unsubscribe`
//! removes topics, `{"op":"ping"}` gets Bybit's pong, and a client that says nothing for
//! [`super::LocalExchangeConfig::pong_timeout`] is disconnected, as Bybit drops silent
//! connections.
//!
//! The private stream (`/v5/private`): `{"op":"auth","args":[apiKey, expires, signature]}`
//! is checked as Bybit does (the desk's key, `expires` in the future, signature = HMAC-SHA256
//! of `GET/realtime{expires}` with the desk's secret); nothing else is answered before it.
//! Then `order` and `execution` (and `position`, accepted, never pushed) can be subscribed,
//! and every change to an order placed through the Bybit REST endpoints is pushed: an
//! `execution` per fill (with its fee, `isMaker` and `execId`, as Bybit sends them), then the
//! order's cumulative state.

use super::tape::{bybit_key, StreamKey, TapeVenue};
use super::{base_quote, lock, step, Outbound, Shared, Subscriber};
use crate::bybit::BybitCategory;
use crate::json::{elements, fields, Value};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Order book depths Bybit serves.
const DEPTHS: [usize; 5] = [1, 50, 200, 500, 1_000];

/// Topics per subscribe request on spot.
const SPOT_MAX_ARGS: usize = 10;

/// The category of a Bybit public WebSocket path (`/v5/public/spot`), if it is one.
pub(super) fn public_category(target: &str) -> Option<BybitCategory> {
    match target.split('?').next().unwrap_or("").trim_end_matches('/') {
        "/v5/public/spot" => Some(BybitCategory::Spot),
        "/v5/public/linear" => Some(BybitCategory::Linear),
        _ => None,
    }
}

/// A JSON string's text, quotes escaped (only our own messages and ids go through here).
fn quoted(s: &str) -> String {
    s.replace(['"', '\\'], "")
}

/// An operation request, as far as the exchange reads it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Request {
    op: String,
    args: Vec<String>,
    req_id: String,
}

fn parse_request(text: &str) -> Option<Request> {
    let mut r = Request::default();
    for (k, v) in fields(text.as_bytes()).ok()?.flatten() {
        match (k, v) {
            (b"op", v) => r.op = v.as_plain_str()?.to_string(),
            (b"req_id", Value::Str(s) | Value::Num(s)) => r.req_id = String::from_utf8_lossy(s).into_owned(),
            (b"args", Value::Arr(a)) => {
                r.args = elements(a).ok()?.flatten().filter_map(|v| v.as_plain_str().map(str::to_string)).collect();
            }
            _ => {}
        }
    }
    (!r.op.is_empty()).then_some(r)
}

fn reply(success: bool, ret_msg: &str, conn_id: &str, req_id: &str, op: &str) -> String {
    format!(
        r#"{{"success":{success},"ret_msg":"{}","conn_id":"{conn_id}","req_id":"{}","op":"{}"}}"#,
        quoted(ret_msg),
        quoted(req_id),
        quoted(op)
    )
}

/// Answers one client message: the replies to send, in order.
fn on_message(text: &str, category: BybitCategory, streams: &Mutex<HashSet<StreamKey>>, shared: &Shared, conn_id: &str) -> Vec<String> {
    let Some(r) = parse_request(text) else {
        return vec![reply(false, "error:request is not a JSON object with an op", conn_id, "", "")];
    };
    match r.op.as_str() {
        "ping" => {
            shared.bump(|s| s.pings += 1);
            vec![reply(true, "pong", conn_id, &r.req_id, "ping")]
        }
        "subscribe" => subscribe(&r, category, streams, shared, conn_id),
        "unsubscribe" => {
            let mut set = lock(streams);
            for key in r.args.iter().filter_map(|t| bybit_key(t)) {
                set.remove(&key);
            }
            vec![reply(true, "", conn_id, &r.req_id, "unsubscribe")]
        }
        op => vec![reply(false, &format!("error:unsupported op {op}"), conn_id, &r.req_id, op)],
    }
}

fn subscribe(r: &Request, category: BybitCategory, streams: &Mutex<HashSet<StreamKey>>, shared: &Shared, conn_id: &str) -> Vec<String> {
    let refuse = |msg: String| vec![reply(false, &msg, conn_id, &r.req_id, "subscribe")];
    if category == BybitCategory::Spot && r.args.len() > SPOT_MAX_ARGS {
        return refuse(format!("error:args size >{SPOT_MAX_ARGS}"));
    }
    // Every topic is checked before any is subscribed.
    let mut keys = Vec::with_capacity(r.args.len());
    for topic in &r.args {
        let depth = topic.strip_prefix("orderbook.").and_then(|rest| rest.split('.').next()).and_then(|d| d.parse::<usize>().ok());
        let served = bybit_key(topic).filter(|k| {
            shared.symbols.iter().any(|s| s.eq_ignore_ascii_case(&k.symbol))
                && (k.channel != "orderbook" || depth.is_some_and(|d| DEPTHS.contains(&d)))
        });
        let Some(key) = served else {
            return refuse(format!("error:handler not found,topic:{topic}"));
        };
        if lock(streams).contains(&key) || keys.iter().any(|(k, _, _)| *k == key) {
            return refuse(format!("error:already subscribed,topic:{topic}"));
        }
        let symbol = topic.rsplit('.').next().unwrap_or_default().to_string();
        keys.push((key, depth, symbol));
    }
    let ack = reply(true, if category == BybitCategory::Spot { "subscribe" } else { "" }, conn_id, &r.req_id, "subscribe");
    let mut out = vec![ack];
    // The book lock is held while the topics are added, so the market cannot move a book
    // between its snapshot and the subscription: the next delta continues the snapshot.
    let books = lock(&shared.books);
    let mut set = lock(streams);
    let now_ms = sapphire_core::latency::unix_nanos() / 1_000_000;
    for (key, depth, symbol) in keys {
        if let Some(depth) = depth {
            if let Some(book) = books.get(&symbol.to_ascii_uppercase()).filter(|b| !b.is_blank()) {
                out.push(book.bybit_snapshot_json(depth, &symbol, now_ms));
            }
        }
        set.insert(key);
    }
    out
}

/// One client of `/v5/public/{category}` until it leaves, is dropped by a fault, or the
/// exchange stops.
pub(super) async fn public_session(
    mut ws: WebSocketStream<TcpStream>,
    id: u64,
    category: BybitCategory,
    shared: &Arc<Shared>,
    mut shutdown: broadcast::Receiver<()>,
) {
    let conn_id = format!("sapphire-local-{id}");
    let streams = Arc::new(Mutex::new(HashSet::new()));
    let (tx, mut rx) = mpsc::channel(4_096);
    lock(&shared.subscribers).push(Subscriber { id, venue: TapeVenue::Bybit, streams: Arc::clone(&streams), tx });
    let idle = shared.config.pong_timeout;
    let mut heard = Instant::now();
    'session: loop {
        tokio::select! {
            _ = shutdown.recv() => {
                let _ = ws.close(None).await;
                break;
            }
            out = rx.recv() => match out {
                Some(Outbound::Frame(f)) => {
                    if ws.send(Message::Text(f.raw.clone())).await.is_err() {
                        break;
                    }
                }
                Some(Outbound::Garbage) => {
                    if ws.send(Message::text("{\"topic\":\"garbage")).await.is_err() {
                        break;
                    }
                }
                // Gone without a close frame, as a network drop looks.
                Some(Outbound::Drop) | None => break,
                Some(Outbound::Stall(d)) => {
                    tokio::time::sleep(d).await;
                    heard = Instant::now();
                }
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    heard = Instant::now();
                    let replies = on_message(t.as_str(), category, &streams, shared, &conn_id);
                    shared.subscribed.notify_waiters();
                    for r in replies {
                        if ws.send(Message::text(r)).await.is_err() {
                            break 'session;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => heard = Instant::now(),
            },
            _ = tokio::time::sleep_until(heard + idle) => {
                let _ = ws.close(None).await;
                break;
            }
        }
    }
    lock(&shared.subscribers).retain(|s| s.id != id);
    shared.subscribed.notify_waiters();
}

/// True for the private stream's path.
pub(super) fn is_private(target: &str) -> bool {
    target.split('?').next().unwrap_or("").trim_end_matches('/') == "/v5/private"
}

/// Checks an `auth` request's arguments: `Err` carries Bybit's refusal message.
fn check_auth(args: &[String], api_key: &str, secret: &str, now_ms: u64) -> Result<(), &'static str> {
    let [key, expires, signature] = args else { return Err("Params Error") };
    if key != api_key {
        return Err("Invalid apikey");
    }
    let Ok(expires_ms) = expires.parse::<u64>() else { return Err("Params Error") };
    if expires_ms <= now_ms {
        return Err("Params Error: auth expired");
    }
    let payload = format!("GET/realtime{expires_ms}");
    if !crate::venue::sign::verify_hmac_sha256_hex(secret.as_bytes(), payload.as_bytes(), signature) {
        return Err("Signature Error");
    }
    Ok(())
}

/// Reads an `auth` request's `args` (the key, `expires` as a number, the signature).
fn auth_args(text: &str) -> Option<(String, Vec<String>)> {
    let (mut op, mut req_id, mut args) = (None, String::new(), Vec::new());
    for (k, v) in fields(text.as_bytes()).ok()?.flatten() {
        match (k, v) {
            (b"op", v) => op = v.as_plain_str().map(str::to_string),
            (b"req_id", Value::Str(s) | Value::Num(s)) => req_id = String::from_utf8_lossy(s).into_owned(),
            (b"args", Value::Arr(a)) => {
                args = elements(a)
                    .ok()?
                    .flatten()
                    .filter_map(|v| match v {
                        Value::Str(s) | Value::Num(s) => Some(String::from_utf8_lossy(s).into_owned()),
                        _ => None,
                    })
                    .collect();
            }
            _ => {}
        }
    }
    (op.as_deref() == Some("auth")).then_some((req_id, args))
}

/// One client of `/v5/private` until it leaves, is dropped, or the exchange stops.
pub(super) async fn private_session(
    mut ws: WebSocketStream<TcpStream>,
    id: u64,
    shared: &Arc<Shared>,
    mut shutdown: broadcast::Receiver<()>,
) {
    let conn_id = format!("sapphire-private-{id}");
    let mut events = shared.desk.bybit_events.subscribe();
    let mut authed = false;
    let mut topics: HashSet<&'static str> = HashSet::new();
    let idle = shared.config.pong_timeout;
    let mut heard = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.recv() => {
                let _ = ws.close(None).await;
                break;
            }
            // Gone without a close frame, as a network drop looks.
            _ = shared.desk.drop_private.notified() => break,
            e = events.recv() => match e {
                Ok((topic, text)) if authed && topics.contains(topic) => {
                    if ws.send(Message::text(text.to_string())).await.is_err() {
                        break;
                    }
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    heard = Instant::now();
                    let text = t.as_str();
                    let answer = if let Some((req_id, args)) = auth_args(text) {
                        let (key, secret) = shared.desk.credentials();
                        let now_ms = sapphire_core::latency::unix_nanos() / 1_000_000;
                        let result = check_auth(&args, &key, &secret, now_ms);
                        authed = result.is_ok();
                        reply(result.is_ok(), result.err().unwrap_or(""), &conn_id, &req_id, "auth")
                    } else {
                        match parse_request(text) {
                            Some(r) if r.op == "ping" => format!(
                                r#"{{"req_id":"{}","op":"pong","args":["{}"],"conn_id":"{conn_id}"}}"#,
                                quoted(&r.req_id),
                                sapphire_core::latency::unix_nanos() / 1_000_000
                            ),
                            Some(r) if !authed => reply(false, "Request not authorized", &conn_id, &r.req_id, &r.op),
                            Some(r) if r.op == "subscribe" => {
                                let known: Option<Vec<&'static str>> = r
                                    .args
                                    .iter()
                                    .map(|t| ["order", "execution", "position"].into_iter().find(|k| k == t))
                                    .collect();
                                match known {
                                    Some(k) => {
                                        topics.extend(k);
                                        reply(true, "", &conn_id, &r.req_id, "subscribe")
                                    }
                                    None => reply(false, "error:handler not found", &conn_id, &r.req_id, "subscribe"),
                                }
                            }
                            Some(r) => reply(false, &format!("error:unsupported op {}", r.op), &conn_id, &r.req_id, &r.op),
                            None => reply(false, "error:request is not a JSON object with an op", &conn_id, "", ""),
                        }
                    };
                    if ws.send(Message::text(answer)).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => heard = Instant::now(),
            },
            _ = tokio::time::sleep_until(heard + idle) => {
                let _ = ws.close(None).await;
                break;
            }
        }
    }
}

/// `GET /v5/market/instruments-info?category=spot|linear[&symbol=…]` for the symbols served,
/// filters from the decimals the tape's books use.
/// `GET /v5/market/tickers?category=spot|linear` for every symbol served, in Bybit's wire
/// format, from the recording's trades (the whole recording stands for the 24 h).
pub(super) fn tickers(shared: &Shared, category: Option<&str>) -> String {
    let now_ms = sapphire_core::latency::unix_nanos() / 1_000_000;
    let Some(category) = category.filter(|c| matches!(*c, "spot" | "linear")) else {
        return format!(
            r#"{{"retCode":10001,"retMsg":"params error: category is invalid","result":{{}},"retExtInfo":{{}},"time":{now_ms}}}"#
        );
    };
    let list: Vec<String> = shared
        .tickers
        .iter()
        .map(|d| {
            let pct = if d.open > 0.0 { (d.last - d.open) / d.open } else { 0.0 };
            format!(
                r#"{{"symbol":"{}","lastPrice":"{:.8}","prevPrice24h":"{:.8}","price24hPcnt":"{pct:.6}","highPrice24h":"{:.8}","lowPrice24h":"{:.8}","volume24h":"{:.8}","turnover24h":"{:.8}"}}"#,
                d.symbol, d.last, d.open, d.high, d.low, d.volume, d.quote_volume
            )
        })
        .collect();
    format!(
        r#"{{"retCode":0,"retMsg":"OK","result":{{"category":"{category}","list":[{}]}},"retExtInfo":{{}},"time":{now_ms}}}"#,
        list.join(",")
    )
}

pub(super) fn instruments_info(shared: &Shared, category: Option<&str>, symbol: Option<&str>) -> String {
    let now_ms = sapphire_core::latency::unix_nanos() / 1_000_000;
    let category = match category {
        Some("spot") => BybitCategory::Spot,
        Some("linear") => BybitCategory::Linear,
        _ => {
            return format!(
                r#"{{"retCode":10001,"retMsg":"params error: category is invalid","result":{{}},"retExtInfo":{{}},"time":{now_ms}}}"#
            )
        }
    };
    let list: Vec<String> = shared
        .symbols
        .iter()
        .filter(|s| symbol.is_none_or(|w| w.eq_ignore_ascii_case(s)))
        .map(|s| {
            let (base, quote) = base_quote(s);
            let (pd, qd) = shared.decimals.get(s).copied().unwrap_or((2, 3));
            let (t, l) = (step(pd), step(qd));
            match category {
                BybitCategory::Spot => format!(
                    r#"{{"symbol":"{s}","baseCoin":"{base}","quoteCoin":"{quote}","innovation":"0","status":"Trading","marginTrading":"none","lotSizeFilter":{{"basePrecision":"{l}","quotePrecision":"0.00000001","minOrderQty":"{l}","maxOrderQty":"9000","minOrderAmt":"1","maxOrderAmt":"2000000"}},"priceFilter":{{"tickSize":"{t}"}}}}"#
                ),
                BybitCategory::Linear => format!(
                    r#"{{"symbol":"{s}","contractType":"LinearPerpetual","status":"Trading","baseCoin":"{base}","quoteCoin":"{quote}","priceScale":"{pd}","priceFilter":{{"minPrice":"{t}","maxPrice":"1999999","tickSize":"{t}"}},"lotSizeFilter":{{"maxOrderQty":"9000","maxMktOrderQty":"9000","minOrderQty":"{l}","qtyStep":"{l}","postOnlyMaxOrderQty":"9000","minNotionalValue":"5"}},"settleCoin":"{quote}"}}"#
                ),
            }
        })
        .collect();
    let cursor = if category == BybitCategory::Linear { r#","nextPageCursor":"""# } else { "" };
    format!(
        r#"{{"retCode":0,"retMsg":"OK","result":{{"category":"{}","list":[{}]{cursor}}},"retExtInfo":{{}},"time":{now_ms}}}"#,
        category.as_str(),
        list.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_requests() {
        assert_eq!(public_category("/v5/public/spot"), Some(BybitCategory::Spot));
        assert_eq!(public_category("/v5/public/linear?x=1"), Some(BybitCategory::Linear));
        assert_eq!(public_category("/v5/public/inverse"), None);
        assert_eq!(
            parse_request(r#"{"req_id":"a1","op":"subscribe","args":["orderbook.50.BTCUSDT","publicTrade.BTCUSDT"]}"#),
            Some(Request {
                op: "subscribe".into(),
                args: vec!["orderbook.50.BTCUSDT".into(), "publicTrade.BTCUSDT".into()],
                req_id: "a1".into()
            })
        );
        assert_eq!(parse_request("garbage"), None);
        let sig = crate::venue::sign::hmac_sha256_hex(b"s", b"GET/realtime2000");
        let args = |k: &str, e: &str, sig: &str| vec![k.to_string(), e.to_string(), sig.to_string()];
        assert_eq!(check_auth(&args("k", "2000", &sig), "k", "s", 1_000), Ok(()));
        assert_eq!(check_auth(&args("x", "2000", &sig), "k", "s", 1_000), Err("Invalid apikey"));
        assert_eq!(check_auth(&args("k", "2000", &sig), "k", "s", 3_000), Err("Params Error: auth expired"));
        assert_eq!(check_auth(&args("k", "2000", "00"), "k", "s", 1_000), Err("Signature Error"));
        assert_eq!(auth_args(r#"{"req_id":"a","op":"auth","args":["k",2000,"ff"]}"#), Some(("a".to_string(), args("k", "2000", "ff"))));
        assert_eq!(parse_request(r#"{"args":[]}"#), None);
        assert_eq!(
            reply(true, "pong", "c-1", "p\"7", "ping"),
            r#"{"success":true,"ret_msg":"pong","conn_id":"c-1","req_id":"p7","op":"ping"}"#
        );
    }
}
