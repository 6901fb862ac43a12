//! Following several cores (shards) on one Redis: their instrument lists merged into one id
//! space, and their outputs taken from every shard's `outputs` channel with the shard named.

use super::{backoff, connect, decode_output_message, follow, redact, BusConfig, BusError, BusStats, Topics};
use sapphire_core::engine::{EngineOutput, Output};
use sapphire_core::instrument::InstrumentId;
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
