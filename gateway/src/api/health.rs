//! [`HealthSource`]: how parts that start beside the core (the Postgres sink, the Redis
//! publisher, live feed clients) join `/readyz` and `/metrics`.

use super::metrics::MetricsWriter;

/// A part of the process with its own readiness and metrics.
///
/// Register it with [`EdgeState::add_source`](super::EdgeState::add_source). `/readyz` runs
/// [`ready`](Self::ready) on every probe and names the source when it fails; `/metrics`
/// appends what [`write_metrics`](Self::write_metrics) writes. Both run on the API's own
/// thread for every request, so they must only read state the part keeps up to date itself
/// (atomics, a snapshot behind a short lock): never wait on I/O or on a connection.
pub trait HealthSource: Send + Sync {
    /// A short stable name (`postgres_sink`, `redis`, `binance_feed`), shown as the check's name.
    fn name(&self) -> &str;

    /// `Ok` when the part does its job; otherwise what is wrong, for an operator to read.
    fn ready(&self) -> Result<(), String>;

    /// Writes the part's metric families. Names should start with `sapphire_` and must not
    /// clash with other sources'.
    fn write_metrics(&self, m: &mut MetricsWriter<'_>) {
        let _ = m;
    }
}

/// A [`HealthSource`] made of closures, for tests and for parts that keep their state in a
/// few atomics.
pub struct FnSource<R, M> {
    name: String,
    ready: R,
    metrics: M,
}

impl<R, M> std::fmt::Debug for FnSource<R, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnSource").field("name", &self.name).finish_non_exhaustive()
    }
}

impl<R, M> FnSource<R, M>
where
    R: Fn() -> Result<(), String> + Send + Sync,
    M: Fn(&mut MetricsWriter<'_>) + Send + Sync,
{
    /// A source named `name` whose readiness is `ready()` and whose metrics `metrics` writes.
    pub fn new(name: impl Into<String>, ready: R, metrics: M) -> Self {
        Self { name: name.into(), ready, metrics }
    }
}

impl<R, M> HealthSource for FnSource<R, M>
where
    R: Fn() -> Result<(), String> + Send + Sync,
    M: Fn(&mut MetricsWriter<'_>) + Send + Sync,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn ready(&self) -> Result<(), String> {
        (self.ready)()
    }

    fn write_metrics(&self, m: &mut MetricsWriter<'_>) {
        (self.metrics)(m);
    }
}
