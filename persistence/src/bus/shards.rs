//! Following several cores (shards) on one Redis: their instrument lists merged into one id
//! space, and their outputs taken from every shard's `outputs` channel with the shard named.

use super::{backoff, connect, decode_output_message, follow, redact, BusConfig, BusError, BusStats, Topics};
use sapphire_core::aggregate::MAX_AGENTS;
use sapphire_core::engine::{EngineOutput, Output};
use sapphire_core::fixed::Money;
use sapphire_core::instrument::InstrumentId;
use sapphire_core::portfolio::PnlSummary;
use sapphire_core::risk::RiskOutput;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// One shard's instruments inside a [`ShardSet`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInstruments {
    /// The shard.
    pub shard: String,
    /// Its symbols in its own id order (id = position).
    pub symbols: Vec<String>,
    /// Where its ids start in the merged id space.
    pub offset: u32,
}

/// The shards a gateway or agents process follows, each core's process-local instrument ids
/// placed one after another in one merged id space (shard order as configured), so outputs
/// of several cores can share one board and one API without their ids colliding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardSet {
    /// The shards, in configured order.
    pub shards: Vec<ShardInstruments>,
}

impl ShardSet {
    /// A set from `(shard, symbols)` pairs, in order.
    pub fn new(lists: Vec<(String, Vec<String>)>) -> Self {
        let mut offset = 0u32;
        let shards = lists
            .into_iter()
            .map(|(shard, symbols)| {
                let s = ShardInstruments { shard, offset, symbols };
                offset = offset.saturating_add(s.symbols.len() as u32);
                s
            })
            .collect();
        Self { shards }
    }

    /// Every symbol, merged id order.
    pub fn names(&self) -> Vec<String> {
        self.shards.iter().flat_map(|s| s.symbols.iter().cloned()).collect()
    }

    /// The shard of every merged id, in id order.
    pub fn instrument_shards(&self) -> Vec<String> {
        self.shards.iter().flat_map(|s| s.symbols.iter().map(|_| s.shard.clone())).collect()
    }

    /// The shard names, in order.
    pub fn shard_names(&self) -> Vec<String> {
        self.shards.iter().map(|s| s.shard.clone()).collect()
    }

    /// The shard that trades `symbol` (the first one listing it).
    pub fn shard_of_symbol(&self, symbol: &str) -> Option<&str> {
        self.shards.iter().find(|s| s.symbols.iter().any(|x| x == symbol)).map(|s| s.shard.as_str())
    }

    /// The shard that owns merged id `id`.
    pub fn shard_of(&self, id: InstrumentId) -> Option<&str> {
        self.shards.iter().find(|s| id.0 >= s.offset && id.0 - s.offset < s.symbols.len() as u32).map(|s| s.shard.as_str())
    }

    /// `o` (from shard number `index`) with its instrument id moved into the merged id space.
    pub fn to_merged(&self, index: usize, o: &Output) -> Output {
        let offset = self.shards.get(index).map_or(0, |s| s.offset);
        let mut o = *o;
        let shift = |id: &mut InstrumentId| id.0 = id.0.saturating_add(offset);
        match &mut o.output {
            EngineOutput::Order(x) => shift(&mut x.instrument),
            EngineOutput::Exec(x) => shift(&mut x.instrument),
            EngineOutput::Signal { signal, .. } => shift(&mut signal.instrument),
            EngineOutput::Risk(RiskOutput::Refusal(r)) => shift(&mut r.instrument),
            EngineOutput::Risk(RiskOutput::Alert(_)) | EngineOutput::Pnl { .. } | EngineOutput::AgentPnl { .. } => {}
        }
        o
    }
}

/// The instrument lists of every shard in `shards` (`<prefix>:<shard>:instruments`); waits,
/// retrying, until each has recorded one (or `stop`: `None`).
pub async fn read_shard_instruments(config: &BusConfig, shards: &[String], stop: &AtomicBool) -> Result<Option<ShardSet>, BusError> {
    let client = redis::Client::open(config.url.as_str()).map_err(|e| BusError::Url { url: redact(&config.url), reason: e.to_string() })?;
    let mut lists: Vec<Option<Vec<String>>> = vec![None; shards.len()];
    let mut attempt = 0u32;
    while !stop.load(Relaxed) {
        if let Ok(mut c) = connect(&client).await {
            for (shard, list) in shards.iter().zip(lists.iter_mut()).filter(|(_, l)| l.is_none()) {
                let key = config.for_shard(shard).key("instruments");
                if let Ok(Some(text)) = redis::cmd("GET").arg(&key).query_async::<Option<String>>(&mut c).await {
                    *list = Some(text.lines().map(str::to_string).collect());
                }
            }
        }
        if lists.iter().all(Option::is_some) {
            let lists = shards.iter().cloned().zip(lists.into_iter().flatten()).collect();
            return Ok(Some(ShardSet::new(lists)));
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt = (attempt + 1).min(4);
    }
    Ok(None)
}

/// Follows `<prefix>:<shard>:outputs` of every shard in `set` on one subscription until
/// `stop`, handing each output to `f` with its shard's position in `set`, its journal
/// sequence and the output as the core wrote it (ids are the shard's own: see
/// [`ShardSet::to_merged`]). Jumps in a shard's sequence are counted in `gaps`.
pub async fn run_shards_output_subscriber(
    config: BusConfig,
    set: Arc<ShardSet>,
    stats: Arc<BusStats>,
    gaps: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    mut f: impl FnMut(usize, u64, &Output) + Send,
) -> Result<(), BusError> {
    let channels: Vec<String> = set.shards.iter().map(|s| config.for_shard(&s.shard).key("outputs")).collect();
    let mut next: Vec<Option<u64>> = vec![None; channels.len()];
    let topics = Topics::Channels(channels.clone());
    follow(&config, "outputs", topics, &stats, true, &stop, |msg| {
        let Some(index) = channels.iter().position(|c| c.as_str() == msg.get_channel_name()) else { return };
        match decode_output_message(msg.get_payload_bytes()) {
            Ok((seq, o)) => {
                if next[index].is_some_and(|n| seq > n) {
                    gaps.fetch_add(1, Relaxed);
                }
                next[index] = Some(seq + 1);
                stats.outputs.fetch_add(1, Relaxed);
                f(index, seq, &o);
            }
            Err(e) => stats.fail("an output message", &e),
        }
    })
    .await
}

/// Turns several shards' outputs into one stream for one board and one API: instrument ids
/// moved into the merged id space ([`ShardSet::to_merged`]), and each portfolio or per-agent
/// PnL snapshot replaced by the sum of every shard's latest one (each core keeps its own
/// portfolio; without summing, the totals would jump from one core's to the other's).
#[derive(Debug)]
pub struct ShardMerger {
    set: Arc<ShardSet>,
    /// Per shard: its latest portfolio total.
    totals: Vec<Option<PnlSummary>>,
    /// Per shard and agent: its latest figures.
    agents: Vec<[Option<PnlSummary>; MAX_AGENTS]>,
}

impl ShardMerger {
    /// A merger for the shards of `set`.
    pub fn new(set: Arc<ShardSet>) -> Self {
        let n = set.shards.len();
        Self { set, totals: vec![None; n], agents: vec![[None; MAX_AGENTS]; n] }
    }

    /// `o`, from shard number `shard`, as the merged stream carries it.
    pub fn merge(&mut self, shard: usize, o: &Output) -> Output {
        let mut o = self.set.to_merged(shard, o);
        match &mut o.output {
            EngineOutput::Pnl { total, .. } => {
                if let Some(t) = self.totals.get_mut(shard) {
                    *t = Some(*total);
                }
                *total = sum(self.totals.iter().flatten());
            }
            EngineOutput::AgentPnl { agent, summary, .. } => {
                let a = usize::from(agent.0);
                if let Some(slot) = self.agents.get_mut(shard).and_then(|s| s.get_mut(a)) {
                    *slot = Some(*summary);
                    *summary = sum(self.agents.iter().filter_map(|s| s[a].as_ref()));
                }
            }
            _ => {}
        }
        o
    }
}

/// Field-wise sum (saturating: figures near the range edge stay there instead of wrapping).
fn sum<'a>(parts: impl Iterator<Item = &'a PnlSummary>) -> PnlSummary {
    let add = |a: Money, b: Money| Money::from_raw(a.raw.saturating_add(b.raw));
    parts.fold(PnlSummary::default(), |s, p| PnlSummary {
        realized: add(s.realized, p.realized),
        unrealized: add(s.unrealized, p.unrealized),
        fees: add(s.fees, p.fees),
        capital: add(s.capital, p.capital),
        equity: add(s.equity, p.equity),
        gross_exposure: add(s.gross_exposure, p.gross_exposure),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sapphire_core::event::AgentId;

    #[test]
    fn totals_of_several_shards_are_summed_and_ids_moved() {
        let set = Arc::new(ShardSet::new(vec![("a".into(), vec!["BTCUSDT".into()]), ("b".into(), vec!["SOLUSDT".into()])]));
        assert_eq!(set.instrument_shards(), ["a", "b"]);
        let mut m = ShardMerger::new(Arc::clone(&set));
        let pnl = |equity: i64| Output {
            seq: 1,
            output: EngineOutput::Pnl { ts_event: 5, total: PnlSummary { equity: Money::from_units(equity), ..PnlSummary::default() } },
        };
        let equity = |o: Output| match o.output {
            EngineOutput::Pnl { total, .. } | EngineOutput::AgentPnl { summary: total, .. } => total.equity,
            _ => Money::default(),
        };
        assert_eq!(equity(m.merge(0, &pnl(1_000))), Money::from_units(1_000));
        assert_eq!(equity(m.merge(1, &pnl(2_000))), Money::from_units(3_000));
        assert_eq!(equity(m.merge(0, &pnl(1_100))), Money::from_units(3_100), "a's latest replaces a's previous");
        let agent = |equity: i64| Output {
            seq: 2,
            output: EngineOutput::AgentPnl {
                ts_event: 5,
                agent: AgentId(3),
                summary: PnlSummary { equity: Money::from_units(equity), ..PnlSummary::default() },
            },
        };
        assert_eq!(equity(m.merge(1, &agent(10))), Money::from_units(10));
        assert_eq!(equity(m.merge(0, &agent(20))), Money::from_units(30));
        let exec = Output {
            seq: 3,
            output: EngineOutput::Exec(sapphire_core::event::ExecReport { instrument: InstrumentId(0), ..Default::default() }),
        };
        match m.merge(1, &exec).output {
            EngineOutput::Exec(r) => assert_eq!(r.instrument, InstrumentId(1)),
            other => panic!("{other:?}"),
        }
    }
}
