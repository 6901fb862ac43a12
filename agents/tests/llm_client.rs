//! The LLM client against a local server speaking the OpenAI chat-completions wire format.

mod mock;

use mock::Reply;
use sapphire_agents::llm::answers::TradeAnswer;
use sapphire_agents::llm::{Answer, ChatRequest, LlmClient, LlmError, ProviderConfig, ProviderKind, VertexAuth};
use sapphire_agents::metrics::{AgentCounters, AgentsMetrics, BreakerState, Refusal};
use sapphire_agents::transcript::Transcript;
use sapphire_core::event::AgentId;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

const GOOD: &str = r#"{"strength_bps":2500,"confidence_bps":7000,"ttl_seconds":30,"reasoning":"bids stacking"}"#;

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sapphire-agents-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn provider(base: &str) -> ProviderConfig {
    ProviderConfig {
        base_url: format!("{base}/v1"),
        model: "test-model".into(),
        timeout_ms: 2_000,
        backoff_base_ms: 5,
        backoff_max_ms: 20,
        ..ProviderConfig::named("local", ProviderKind::OpenaiCompatible)
    }
}

fn client(cfg: &ProviderConfig, cache: Duration) -> LlmClient {
    let metrics = Arc::new(AgentsMetrics::default());
    LlmClient::new(cfg, cache, Transcript::disabled(metrics), Arc::new(|| 42)).unwrap()
}

fn counters() -> AgentCounters {
    AgentCounters::new(AgentId(8), "fast_trader")
}

fn req(user: &str) -> ChatRequest<'_> {
    ChatRequest { system: "sys", user, deadline: Duration::from_secs(5) }
}

#[tokio::test]
async fn valid_answer_is_parsed_and_the_request_is_the_openai_wire_format() {
    let (base, mock) = mock::start().await;
    let dir = temp_dir("key");
    std::fs::write(dir.join("key"), "k-test\n").unwrap();
    let mut cfg = provider(&base);
    cfg.api_key_file = Some(dir.join("key"));
    cfg.input_usd_per_million = "2.00".into();
    cfg.output_usd_per_million = "10".into();
    cfg.max_tokens = 300;
    let path = dir.join("transcript.jsonl");
    let metrics = Arc::new(AgentsMetrics::default());
    let (transcript, writer) = Transcript::open(&path, 16, metrics.clone()).unwrap();
    let c = LlmClient::new(&cfg, Duration::ZERO, transcript, Arc::new(|| 42)).unwrap();
    assert!(!format!("{c:?}").contains("k-test"), "the key is redacted: {c:?}");
    let agent = counters();
    mock.push(Reply::Content(GOOD.into(), 120, 30));

    let a = c.ask::<TradeAnswer>(&agent, &req("symbol=BTCUSDT mid=100")).await.unwrap();
    assert_eq!(a.value, TradeAnswer { strength_bps: 2500, confidence_bps: 7000, ttl_seconds: 30, reasoning: "bids stacking".into() });
    assert!(!a.cached);

    let seen = mock.chats.lock().unwrap()[0].clone();
    assert_eq!(seen.auth.as_deref(), Some("Bearer k-test"));
    let b = &seen.body;
    assert_eq!(b["model"], "test-model");
    assert_eq!(b["messages"][0]["role"], "system");
    assert_eq!(b["messages"][0]["content"], "sys");
    assert_eq!(b["messages"][1]["role"], "user");
    assert_eq!(b["messages"][1]["content"], "symbol=BTCUSDT mid=100");
    assert_eq!(b["response_format"]["type"], "json_schema");
    assert_eq!(b["response_format"]["json_schema"]["name"], "trade_signal");
    assert_eq!(b["response_format"]["json_schema"]["strict"], true);
    assert_eq!(b["response_format"]["json_schema"]["schema"], TradeAnswer::schema());
    assert_eq!(b["max_tokens"], 300);

    // Accounting from `usage`: 120 × $2/1M + 30 × $10/1M = $0.00054.
    assert_eq!(agent.prompt_tokens.load(Relaxed), 120);
    assert_eq!(agent.completion_tokens.load(Relaxed), 30);
    assert_eq!(agent.cost_raw.load(Relaxed), 540_000);
    assert_eq!(agent.llm_calls.load(Relaxed), 1);
    assert_eq!(agent.refused_total(), 0);

    drop(c);
    writer.join().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["record"], "llm_call");
    assert_eq!(line["outcome"], "ok");
    assert_eq!(line["model"], "test-model-0613", "the model that answered");
    assert_eq!(line["prompt"][1]["content"], "symbol=BTCUSDT mid=100");
    assert_eq!(line["answer"], GOOD);
    assert_eq!((line["prompt_tokens"].as_u64(), line["completion_tokens"].as_u64()), (Some(120), Some(30)));
    assert_eq!(sapphire_core::fixed::Money::parse(line["cost_usd"].as_str().unwrap()).unwrap().raw, 540_000);
    assert_eq!(line["agent"], 8);
    assert!(!text.contains("k-test"), "keys never reach the transcript");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bad_answers_are_refused_and_counted_by_reason() {
    let (base, mock) = mock::start().await;
    let c = client(&provider(&base), Duration::ZERO);
    let agent = counters();
    let cases = [
        (Reply::Content("not json at all".into(), 5, 5), Refusal::InvalidJson),
        (Reply::Content("```json\n{}\n```".into(), 5, 5), Refusal::InvalidJson),
        (Reply::Content(r#"{"strength_bps":2500,"confidence_bps":7000,"ttl_seconds":30}"#.into(), 5, 5), Refusal::SchemaViolation),
        (
            Reply::Content(r#"{"strength_bps":0.5,"confidence_bps":7000,"ttl_seconds":30,"reasoning":"x"}"#.into(), 5, 5),
            Refusal::SchemaViolation,
        ),
        (Reply::Content(GOOD.replace("2500", "12000"), 5, 5), Refusal::OutOfRange),
        (Reply::Content(GOOD.replace("7000", "-3"), 5, 5), Refusal::OutOfRange),
        (Reply::Raw(r#"{"error": "not a completion"}"#.into()), Refusal::InvalidJson),
        (Reply::Status(400, r#"{"error":"bad schema"}"#.into()), Refusal::HttpStatus),
        (Reply::Status(401, "no".into()), Refusal::Auth),
    ];
    for (i, (reply, want)) in cases.iter().enumerate() {
        mock.push(reply.clone());
        let e = c.ask::<TradeAnswer>(&agent, &req(&format!("case {i}"))).await.unwrap_err();
        assert_eq!(e.reason, *want, "case {i}: {e:?}");
    }
    assert_eq!(agent.refused(Refusal::InvalidJson), 3);
    assert_eq!(agent.refused(Refusal::SchemaViolation), 2);
    assert_eq!(agent.refused(Refusal::OutOfRange), 2);
    assert_eq!(agent.refused(Refusal::HttpStatus), 1);
    assert_eq!(agent.refused(Refusal::Auth), 1);
    assert_eq!(mock.chat_count(), cases.len(), "4xx are not retried");
    assert_eq!(agent.breaker_state(), BreakerState::Closed, "bad answers are not provider failures");
    // Tokens of refused answers are still billed.
    assert_eq!(agent.prompt_tokens.load(Relaxed), 30);

    // The same outcomes on /metrics, under the issue's names, through prometheus-client.
    assert_eq!(c.metrics().requests("local", "invalid_json"), 3);
    assert_eq!(c.metrics().requests("local", "ok"), 0);
    let metrics = Arc::new(AgentsMetrics { agents: vec![Arc::new(agent)], llm: Arc::clone(c.metrics()), ..AgentsMetrics::default() });
    let text = metrics.render_prometheus();
    for line in [
        "# TYPE llm_requests_total counter",
        "llm_requests_total{provider=\"local\",outcome=\"schema_violation\"} 2",
        "llm_requests_total{provider=\"local\",outcome=\"auth\"} 1",
        "llm_latency_seconds_count{provider=\"local\"} 9",
        "agent_signal_rejected_total{agent_id=\"8\",kind=\"fast_trader\",reason=\"out_of_range\"} 2",
        "agent_signal_rejected_total{agent_id=\"8\",kind=\"fast_trader\",reason=\"sink_full\"} 0",
        "# TYPE llm_cost_usd_total counter",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }
    assert!(!text.contains("_total_total"), "{text}");
}

#[tokio::test]
async fn slow_answers_time_out_and_late_ones_are_refused() {
    let (base, mock) = mock::start().await;
    let mut cfg = provider(&base);
    cfg.timeout_ms = 150;
    cfg.max_retries = 0;
    let c = client(&cfg, Duration::ZERO);
    let agent = counters();
    mock.push(Reply::Slow(Duration::from_millis(1_000), GOOD.into()));
    let t0 = std::time::Instant::now();
    let e = c.ask::<TradeAnswer>(&agent, &req("slow")).await.unwrap_err();
    assert_eq!(e.reason, Refusal::Timeout);
    assert!(t0.elapsed() < Duration::from_millis(900), "the timeout cut it: {:?}", t0.elapsed());

    // Within the timeout but past the agent's deadline: late, never traded.
    mock.push(Reply::Slow(Duration::from_millis(60), GOOD.into()));
    let late = ChatRequest { system: "sys", user: "late", deadline: Duration::from_millis(20) };
    let e = c.ask::<TradeAnswer>(&agent, &late).await.unwrap_err();
    assert_eq!(e.reason, Refusal::Late);
    assert_eq!((agent.refused(Refusal::Timeout), agent.refused(Refusal::Late)), (1, 1));
}

#[tokio::test]
async fn server_errors_retry_then_the_breaker_opens_then_a_probe_closes_it() {
    let (base, mock) = mock::start().await;
    let mut cfg = provider(&base);
    cfg.max_retries = 2;
    cfg.breaker_failures = 3;
    cfg.breaker_cooldown_ms = 200;
    let c = client(&cfg, Duration::ZERO);
    let agent = counters();

    // 429 then success: retried (with backoff), answered.
    mock.push(Reply::Status(429, "slow down".into()));
    mock.push(Reply::Content(GOOD.into(), 1, 1));
    assert!(c.ask::<TradeAnswer>(&agent, &req("a")).await.is_ok());
    assert_eq!(mock.chat_count(), 2);

    // Three 500s: two retries, then the breaker opens.
    *mock.fallback.lock().unwrap() = Some(Reply::Status(500, "boom".into()));
    let e = c.ask::<TradeAnswer>(&agent, &req("b")).await.unwrap_err();
    assert_eq!(e.reason, Refusal::HttpStatus);
    assert_eq!(mock.chat_count(), 5);
    assert_eq!(agent.breaker_state(), BreakerState::Open);
    assert_eq!(agent.llm_calls.load(Relaxed), 5);

    // Open: refused without a request.
    let e = c.ask::<TradeAnswer>(&agent, &req("c")).await.unwrap_err();
    assert_eq!(e.reason, Refusal::BreakerOpen);
    assert_eq!(mock.chat_count(), 5);

    // After the cool-down one probe goes out; it fails and reopens the breaker at once.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let e = c.ask::<TradeAnswer>(&agent, &req("d")).await.unwrap_err();
    assert_eq!(e.reason, Refusal::HttpStatus);
    assert_eq!(mock.chat_count(), 6, "a half-open breaker lets exactly one probe through");
    assert_eq!(agent.breaker_state(), BreakerState::Open);

    // The provider recovers: the next probe succeeds and closes the breaker.
    *mock.fallback.lock().unwrap() = Some(Reply::Content(GOOD.into(), 1, 1));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(c.ask::<TradeAnswer>(&agent, &req("e")).await.is_ok());
    assert_eq!(agent.breaker_state(), BreakerState::Closed);
    assert_eq!(agent.refused(Refusal::BreakerOpen), 1);
    assert_eq!(agent.refused(Refusal::RateLimited), 0, "the 429 was retried, not refused");
}

#[tokio::test]
async fn cached_answers_within_ttl_are_not_requested_again_and_the_bucket_limits() {
    let (base, mock) = mock::start().await;
    *mock.fallback.lock().unwrap() = Some(Reply::Content(GOOD.into(), 7, 3));
    let c = client(&provider(&base), Duration::from_secs(60));
    let agent = counters();
    for _ in 0..3 {
        assert_eq!(c.ask::<TradeAnswer>(&agent, &req("same")).await.unwrap().value.strength_bps, 2500);
    }
    assert_eq!(mock.chat_count(), 1);
    assert_eq!(agent.cache_hits.load(Relaxed), 2);
    assert_eq!(agent.prompt_tokens.load(Relaxed), 7, "cache hits cost nothing");
    assert_eq!((c.metrics().requests("local", "ok"), c.metrics().requests("local", "cached")), (1, 2));
    assert!(c.ask::<TradeAnswer>(&agent, &req("different")).await.unwrap().latency > Duration::ZERO);
    assert_eq!(mock.chat_count(), 2);

    // A short TTL expires.
    let short = client(&provider(&base), Duration::from_millis(50));
    short.ask::<TradeAnswer>(&agent, &req("x")).await.unwrap();
    short.ask::<TradeAnswer>(&agent, &req("x")).await.unwrap();
    assert_eq!(mock.chat_count(), 3);
    tokio::time::sleep(Duration::from_millis(80)).await;
    short.ask::<TradeAnswer>(&agent, &req("x")).await.unwrap();
    assert_eq!(mock.chat_count(), 4);

    // One request a minute, burst 1: the second distinct request is refused locally.
    let mut cfg = provider(&base);
    cfg.requests_per_minute = 1;
    cfg.burst = 1;
    let limited = client(&cfg, Duration::ZERO);
    limited.ask::<TradeAnswer>(&agent, &req("p")).await.unwrap();
    let e = limited.ask::<TradeAnswer>(&agent, &req("q")).await.unwrap_err();
    assert_eq!(e.reason, Refusal::LocalRateLimit);
    assert_eq!(mock.chat_count(), 5);
}

#[tokio::test]
async fn vertex_tokens_come_from_the_metadata_server_or_a_refresh_token() {
    let (base, mock) = mock::start().await;
    *mock.fallback.lock().unwrap() = Some(Reply::Content(GOOD.into(), 1, 1));
    let mut cfg = ProviderConfig {
        base_url: format!("{base}/v1"),
        vertex_auth: VertexAuth::Metadata,
        metadata_token_url: format!("{base}/computeMetadata/v1/instance/service-accounts/default/token"),
        ..ProviderConfig::named("vertex", ProviderKind::Vertex)
    };
    let c = client(&cfg, Duration::ZERO);
    let agent = counters();
    c.ask::<TradeAnswer>(&agent, &req("one")).await.unwrap();
    c.ask::<TradeAnswer>(&agent, &req("two")).await.unwrap();
    {
        let tokens = mock.tokens.lock().unwrap();
        assert_eq!(tokens.len(), 1, "the token is cached until near expiry");
        assert_eq!(tokens[0].0.as_deref(), Some("Google"));
    }
    assert_eq!(mock.chats.lock().unwrap()[0].auth.as_deref(), Some("Bearer ya29.meta"));
    assert_eq!(mock.chats.lock().unwrap()[0].body["model"], "google/gemini-2.0-flash-001");

    // Application default credentials of type authorized_user.
    let dir = temp_dir("adc");
    let adc = dir.join("adc.json");
    std::fs::write(&adc, r#"{"type":"authorized_user","client_id":"cid","client_secret":"cs","refresh_token":"1/refresh"}"#).unwrap();
    cfg.vertex_auth = VertexAuth::Auto;
    cfg.adc_file = Some(adc);
    cfg.oauth_token_url = format!("{base}/token");
    let c = client(&cfg, Duration::ZERO);
    c.ask::<TradeAnswer>(&agent, &req("three")).await.unwrap();
    assert_eq!(mock.chats.lock().unwrap()[2].auth.as_deref(), Some("Bearer ya29.user"));
    let body = mock.tokens.lock().unwrap()[1].1.clone();
    assert!(body.contains("client_id=cid") && body.contains("client_secret=cs"), "{body}");

    // A token endpoint that fails: refused as auth, no chat request.
    cfg.oauth_token_url = format!("{base}/nope");
    let c = client(&cfg, Duration::ZERO);
    let e = c.ask::<TradeAnswer>(&agent, &req("four")).await.unwrap_err();
    assert_eq!(e.reason, Refusal::Auth);
    assert_eq!(mock.chat_count(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_credentials_and_bad_prices_are_start_up_errors() {
    let metrics = Arc::new(AgentsMetrics::default());
    let cfg = ProviderConfig { api_key_env: "SAPPHIRE_TEST_NO_SUCH_KEY".into(), ..ProviderConfig::named("grok", ProviderKind::Xai) };
    let e = LlmClient::new(&cfg, Duration::ZERO, Transcript::disabled(metrics.clone()), Arc::new(|| 0)).unwrap_err();
    assert!(matches!(e, LlmError::Auth { .. }));
    assert!(e.to_string().contains("SAPPHIRE_TEST_NO_SUCH_KEY"), "{e}");
    let cfg = ProviderConfig { input_usd_per_million: "cheap".into(), ..ProviderConfig::named("l", ProviderKind::OpenaiCompatible) };
    let e = LlmClient::new(&cfg, Duration::ZERO, Transcript::disabled(metrics.clone()), Arc::new(|| 0)).unwrap_err();
    assert!(e.to_string().contains("input_usd_per_million"), "{e}");
    let cfg = ProviderConfig { vertex_project: String::new(), ..ProviderConfig::named("v", ProviderKind::Vertex) };
    if std::env::var_os("GOOGLE_CLOUD_PROJECT").is_none() {
        assert!(cfg.effective_base_url().is_err());
    }
    let cfg = ProviderConfig { vertex_project: "p".into(), vertex_location: "europe-west4".into(), ..cfg };
    assert_eq!(
        cfg.effective_base_url().unwrap(),
        "https://europe-west4-aiplatform.googleapis.com/v1/projects/p/locations/europe-west4/endpoints/openapi"
    );
}
