//! The audit transcript: every prompt, answer, model, latency, token count and cost, one
//! JSON object per line, appended by a writer thread fed through a bounded channel.
//!
//! Agents never wait on the disk: a full channel drops the record and counts it
//! (`transcript_dropped`).

use crate::metrics::AgentsMetrics;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::sync::mpsc;

/// One transcript line.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TranscriptRecord {
    /// Clock time of the record, ns.
    pub ts_ns: u64,
    /// Agent id.
    pub agent: u16,
    /// Agent kind.
    pub kind: &'static str,
    /// `llm_call`, `signal` or `arbitration`.
    pub record: &'static str,
    /// Provider name from the configuration.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub provider: String,
    /// Model asked.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub model: String,
    /// The chat messages sent.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub prompt: serde_json::Value,
    /// The answer's content as received (unparsed).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub answer: String,
    /// `ok`, or the refusal reason label.
    pub outcome: &'static str,
    /// Detail of a refusal or the signal's reason.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Wall-clock latency of the call including retries, ms.
    pub latency_ms: u64,
    /// Attempts made (1 + retries).
    pub attempts: u32,
    /// Served from the response cache.
    pub cached: bool,
    /// Prompt tokens billed.
    pub prompt_tokens: u64,
    /// Completion tokens billed.
    pub completion_tokens: u64,
    /// Cost, USD (decimal string, exact).
    pub cost_usd: String,
    /// The signal emitted from this record, if any: instrument, strength, confidence, ttl.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<SignalSummary>,
}

/// The signal fields a transcript line records.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SignalSummary {
    /// Instrument id.
    pub instrument: u32,
    /// Strength, bps.
    pub strength_bps: i32,
    /// Confidence, bps.
    pub confidence_bps: u16,
    /// Time to live, ns.
    pub ttl_ns: u64,
    /// Agent-local signal id.
    pub signal_id: u64,
}

impl From<&sapphire_core::event::Signal> for SignalSummary {
    fn from(s: &sapphire_core::event::Signal) -> Self {
        Self {
            instrument: s.instrument.0,
            strength_bps: s.strength_bps,
            confidence_bps: s.confidence_bps,
            ttl_ns: s.ttl_ns,
            signal_id: s.signal_id,
        }
    }
}

/// The sending side, cloned into every agent. A disabled transcript drops silently.
#[derive(Clone, Debug)]
pub struct Transcript {
    tx: Option<mpsc::Sender<TranscriptRecord>>,
    metrics: Arc<AgentsMetrics>,
}

impl Transcript {
    /// A transcript that records nothing.
    pub fn disabled(metrics: Arc<AgentsMetrics>) -> Self {
        Self { tx: None, metrics }
    }

    /// Opens (appends to) `path` and starts the writer thread; `capacity` records may wait.
    /// The thread ends when every [`Transcript`] clone is dropped.
    pub fn open(path: &Path, capacity: usize, metrics: Arc<AgentsMetrics>) -> std::io::Result<(Self, std::thread::JoinHandle<()>)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let m = metrics.clone();
        let path: PathBuf = path.to_path_buf();
        let handle = std::thread::Builder::new().name("agents-transcript".into()).spawn(move || write_loop(file, rx, &m, &path))?;
        Ok((Self { tx: Some(tx), metrics }, handle))
    }

    /// Queues a record; never waits. A full channel drops it and counts.
    pub fn record(&self, r: TranscriptRecord) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(r).is_err() {
            self.metrics.transcript_dropped.fetch_add(1, Relaxed);
        }
    }
}

fn write_loop(file: std::fs::File, mut rx: mpsc::Receiver<TranscriptRecord>, metrics: &AgentsMetrics, path: &Path) {
    let mut out = std::io::BufWriter::new(file);
    let mut warned = false;
    while let Some(r) = rx.blocking_recv() {
        let mut ok = serde_json::to_writer(&mut out, &r).is_ok() && out.write_all(b"\n").is_ok();
        // Flush when nothing else is waiting, so a reader sees whole lines promptly.
        if ok && rx.is_empty() {
            ok = out.flush().is_ok();
        }
        if ok {
            metrics.transcript_written.fetch_add(1, Relaxed);
        } else {
            metrics.transcript_errors.fetch_add(1, Relaxed);
            if !warned {
                eprintln!("agents: cannot write the transcript {}", path.display());
                warned = true;
            }
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_written_as_json_lines_and_full_channel_drops() {
        let dir = std::env::temp_dir().join(format!("sapphire-agents-transcript-{}", std::process::id()));
        let path = dir.join("t.jsonl");
        let _ = std::fs::remove_file(&path);
        let metrics = Arc::new(AgentsMetrics::default());
        let (t, handle) = Transcript::open(&path, 4, metrics.clone()).unwrap();
        for i in 0..3 {
            t.record(TranscriptRecord { ts_ns: i, agent: 7, kind: "sentiment", record: "llm_call", outcome: "ok", ..Default::default() });
        }
        drop(t);
        handle.join().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2]["ts_ns"], 2);
        assert_eq!(lines[0]["kind"], "sentiment");
        assert_eq!(metrics.transcript_written.load(Relaxed), 3);

        // A channel nobody drains: the second record is dropped and counted, not waited on.
        let (tx, _rx) = mpsc::channel(1);
        let t = Transcript { tx: Some(tx), metrics: metrics.clone() };
        t.record(TranscriptRecord::default());
        t.record(TranscriptRecord::default());
        assert_eq!(metrics.transcript_dropped.load(Relaxed), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
