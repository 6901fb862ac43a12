//! `/metrics`: Prometheus text exposition (format 0.0.4) through the `prometheus-client`
//! crate (the Prometheus project's Rust client).
//!
//! Every value already lives in an atomic (the edge's [`EdgeState`], the pipeline's
//! counters, each [`HealthSource`](super::HealthSource)'s own stats) or a latency reader, so
//! rather than keeping a second copy of each number in the library's metric types, a scrape
//! runs one [`Collector`] that reads them and hands them to the library's encoder, which owns
//! the format: escaping, `# HELP`/`# TYPE`, number formatting, the `_total` suffix of
//! counters. [`MetricsWriter`] is the small typed surface the rest of the code writes through;
//! parts that keep native library metrics (the agents' LLM latency histogram) encode them
//! through [`MetricsWriter::encoder`]. The old platform's names are kept as they were.

use super::server::{ServerStats, WsDrop, WsRefusal};
use super::{ApiContext, EdgeState};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use sapphire_core::event::RejectReason;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The `Content-Type` of a scrape.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// One scrape being written: metric families of counters and gauges, each with its help.
///
/// Counter names are given in full (`sapphire_events_total`), as they appear to a query and
/// in the monitoring rules; the library writes the `_total` suffix itself, so it is taken off
/// the family name here. Writing into a `String` cannot fail; the first error, if any, is kept
/// and returned by the collector.
#[derive(Debug)]
pub struct MetricsWriter<'a> {
    enc: DescriptorEncoder<'a>,
    result: std::fmt::Result,
}

fn family_name(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}

impl<'a> MetricsWriter<'a> {
    /// Writes through `enc`.
    pub fn new(enc: DescriptorEncoder<'a>) -> Self {
        Self { enc, result: Ok(()) }
    }

    fn keep(&mut self, r: std::fmt::Result) {
        if self.result.is_ok() {
            self.result = r;
        }
    }

    /// An unlabelled counter.
    pub fn counter<V: EncodeCounterValue>(&mut self, name: &str, help: &str, value: V) {
        let r = self
            .enc
            .encode_descriptor(family_name(name), help, None, MetricType::Counter)
            .and_then(|mut e| e.encode_counter::<NoLabelSet, _, u64>(&value, None));
        self.keep(r);
    }

    /// A counter family, one sample per label set.
    pub fn counters<L: EncodeLabelSet>(&mut self, name: &str, help: &str, samples: impl IntoIterator<Item = (L, u64)>) {
        let r = (|| {
            let mut m = self.enc.encode_descriptor(family_name(name), help, None, MetricType::Counter)?;
            for (labels, v) in samples {
                m.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
            Ok(())
        })();
        self.keep(r);
    }

    /// An unlabelled gauge.
    pub fn gauge<V: EncodeGaugeValue>(&mut self, name: &str, help: &str, value: V) {
        let r = self.enc.encode_descriptor(name, help, None, MetricType::Gauge).and_then(|mut e| e.encode_gauge(&value));
        self.keep(r);
    }

    /// A gauge family, one sample per label set.
    pub fn gauges<L: EncodeLabelSet, V: EncodeGaugeValue>(&mut self, name: &str, help: &str, samples: impl IntoIterator<Item = (L, V)>) {
        let r = (|| {
            let mut m = self.enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (labels, v) in samples {
                m.encode_family(&labels)?.encode_gauge(&v)?;
            }
            Ok(())
        })();
        self.keep(r);
    }

    /// The library's encoder, for native metric types (histograms, families) that encode
    /// themselves. Errors from it are the caller's to pass to [`fail`](Self::fail).
    pub fn encoder(&mut self) -> &mut DescriptorEncoder<'a> {
        &mut self.enc
    }

    /// Records an error from [`encoder`](Self::encoder) use.
    pub fn fail(&mut self, r: std::fmt::Result) {
        self.keep(r);
    }

    fn finish(self) -> std::fmt::Result {
        self.result
    }
}

/// Renders one scrape with `write`, through a registry holding a single collector.
pub fn render_with<F>(write: F) -> String
where
    F: Fn(&mut MetricsWriter<'_>) + Send + Sync + 'static,
{
    struct Scrape<F>(F);
    impl<F> std::fmt::Debug for Scrape<F> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Scrape")
        }
    }
    impl<F: Fn(&mut MetricsWriter<'_>) + Send + Sync + 'static> Collector for Scrape<F> {
        fn encode(&self, encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
            let mut w = MetricsWriter::new(encoder);
            (self.0)(&mut w);
            w.finish()
        }
    }
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(write)));
    let mut out = String::with_capacity(8 * 1024);
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        // Only a collector can fail (writing to a String cannot): say so in the scrape.
        out.push_str(&format!("# scrape incomplete: {e}\n"));
    }
    out
}

fn money(m: sapphire_core::fixed::Money) -> f64 {
    m.raw as f64 / 1e9
}

/// Renders every metric, then each [`HealthSource`](super::HealthSource)'s. `ring_backlog` is
/// the inbound ring's backlog now.
pub(super) fn render(ctx: &Arc<ApiContext>, ring_backlog: i64) -> String {
    let ctx = Arc::clone(ctx);
    render_with(move |m| write(m, &ctx.state, &ctx.stats, &ctx.frames.rendered, ring_backlog))
}

fn write(
    m: &mut MetricsWriter<'_>,
    s: &EdgeState,
    server: &ServerStats,
    frames_rendered: &std::sync::atomic::AtomicU64,
    ring_backlog: i64,
) {
    let p = s.pipeline();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);

    let agents: Vec<_> = s.agents().collect();
    m.gauges(
        "agent_margin_remaining_usd",
        "Margin left per agent: its budget (or its equity, once lower) less exposure / leverage.",
        agents.iter().map(|(id, _, summary)| ([("agent_id", id.to_string())], money(s.margin(summary).remaining))),
    );
    m.gauges(
        "agent_margin_utilization_ratio",
        "Margin used (exposure / leverage) over the agent's budget, or its equity once lower: the base of the per-agent margin ladder.",
        agents.iter().map(|(id, _, summary)| ([("agent_id", id.to_string())], s.margin(summary).utilization())),
    );
    m.counters(
        "risk_limits_breached_total",
        "Orders refused by risk, by limit.",
        RejectReason::ALL.iter().skip(1).map(|r| ([("limit_type", r.label())], s.refusals(*r))),
    );
    m.gauge("portfolio_drawdown_pct", "Drawdown from peak equity, percent.", s.drawdown_pct());

    let (_, total) = s.total();
    m.gauge("sapphire_equity_usd", "Portfolio equity at the last timer.", money(total.equity));
    m.gauge("sapphire_fees_usd", "Fees paid.", money(total.fees));
    m.counter("sapphire_events_total", "Inbound events processed by the engine.", load(&p.processed));
    m.counters(
        "sapphire_orders_total",
        "Orders routed, by action.",
        [([("action", "new")], s.orders()), ([("action", "cancel")], s.cancels())],
    );
    m.counter("sapphire_fills_total", "Fills.", s.fills());
    m.gauge("sapphire_open_orders", "Orders working at the venue.", s.open_orders());
    m.counter("sapphire_risk_alerts_total", "Guard alerts (drawdown, margin ladder, kill, halt, resume, pause, limits).", s.alerts());
    let f = s.risk_flags();
    m.gauges(
        "sapphire_trading_halted",
        "1 while opening orders are refused, by cause.",
        [("kill_switch", f.killed), ("operator", f.halted), ("drawdown", f.drawdown_halted)].map(|(c, on)| ([("cause", c)], u32::from(on))),
    );
    m.gauge("sapphire_margin_ladder_level", "0 normal, 1 reduce-only, 2 deleverage.", u32::from(f.ladder));
    m.gauge("sapphire_ring_backlog", "Inbound events published but not yet released by the slowest consumer.", ring_backlog);
    m.counter("sapphire_journal_appended_total", "Inbound events appended to the input journal.", load(&p.journaled));
    m.counter("sapphire_journal_errors_total", "Input journal appends that failed.", load(&p.journal_errors));
    m.counter("sapphire_outputs_dropped_total", "Engine outputs the edge did not take in time.", load(&p.outputs_dropped));
    m.counter(
        "sapphire_engine_stalls_total",
        "Times a spinning engine thread lost its CPU for 100 µs or more while polling (another thread, an interrupt, the hypervisor).",
        load(&p.stalls),
    );
    m.counter("sapphire_engine_stalled_seconds_total", "Time those engine stalls took.", load(&p.stalled_ns) as f64 / 1e9);
    m.counter("sapphire_outbound_full_total", "Orders the outbound queue could not take.", load(&p.outbound_full));
    m.counter("sapphire_book_gaps_total", "Book sequence gaps.", load(&p.gaps));

    let latency = s.latency();
    m.gauges(
        "sapphire_stage_latency_ns",
        "Stage latency percentiles, ns (quantile 1 is the max).",
        latency.iter().flat_map(|l| {
            [("0.5", l.p50), ("0.99", l.p99), ("0.999", l.p999), ("1", l.max)].map(|(q, v)| ([("stage", l.name), ("quantile", q)], v))
        }),
    );
    m.gauges(
        "sapphire_stage_latency_samples",
        "Samples behind each stage's percentiles.",
        latency.iter().map(|l| ([("stage", l.name)], l.count)),
    );
    let (taken, ignored) = s.signals();
    m.counters(
        "sapphire_signals_total",
        "Agent signals the engine saw, taken or ignored (unknown agent or instrument, expired).",
        [([("outcome", "taken")], taken), ([("outcome", "ignored")], ignored)],
    );

    m.gauge("sapphire_http_connections", "HTTP connections being served.", load(&server.http_open));
    m.counter("sapphire_http_connections_total", "HTTP connections accepted and served.", load(&server.http_accepted));
    m.counter("sapphire_http_connections_refused_total", "HTTP connections refused at the connection cap.", load(&server.http_refused));
    m.counter(
        "sapphire_http_connections_evicted_total",
        "Idle HTTP connections closed to make room for a new one at the connection cap.",
        load(&server.http_evicted),
    );
    m.counter(
        "sapphire_http_probe_lane_total",
        "Connections served on the probe lane because every place under the cap was busy.",
        load(&server.probe_lane),
    );
    m.counter(
        "sapphire_http_header_timeouts_total",
        "Connections cut because request headers did not arrive in time.",
        load(&server.header_timeouts),
    );
    m.counter(
        "sapphire_http_auth_throttled_total",
        "Control requests answered 429 because their client address had too many bearer tokens refused.",
        load(&server.auth_throttled),
    );
    m.gauge("sapphire_ws_clients", "Dashboard WebSocket clients connected.", load(&server.ws_clients));
    m.counter("sapphire_ws_clients_accepted_total", "Dashboard WebSocket clients accepted.", load(&server.ws_accepted));
    m.counters(
        "sapphire_ws_clients_dropped_total",
        "WebSocket clients the server dropped, by reason.",
        WsDrop::ALL.map(|why| ([("reason", why.label())], load(&server.ws_dropped[why as usize]))),
    );
    m.counters(
        "sapphire_ws_clients_refused_total",
        "WebSocket upgrades refused, by reason.",
        WsRefusal::ALL.map(|why| ([("reason", why.label())], load(&server.ws_refused[why as usize]))),
    );
    m.counter("sapphire_ws_messages_total", "WebSocket messages sent to dashboard clients.", load(&server.ws_messages));
    m.counter(
        "sapphire_ws_frames_rendered_total",
        "Dashboard stream frames rendered (one serves every client that ticks within half a tick).",
        load(frames_rendered),
    );

    for source in s.sources() {
        source.write_metrics(m);
    }
}
