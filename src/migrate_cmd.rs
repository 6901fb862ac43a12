//! `sapphire migrate`: applies the embedded Postgres migrations, on purpose. `run` and the
//! sink never migrate; they refuse a schema that is behind and say to run this. Idempotent:
//! a current schema is left as it is.

use crate::config;
use anyhow::Context;
use sapphire_persistence::pg::{self, PgConnectOptions};
use std::time::Duration;

/// `sapphire migrate` arguments.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// Postgres URL, e.g. postgres://user@host:5432/db (default: DATABASE_URL).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Only check: succeed when the schema is current, otherwise say what is wrong and fail.
    #[arg(long)]
    pub check: bool,
}

/// Applies (or with `--check`, checks) the migrations and prints what it did.
pub fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let url =
        args.database_url.ok_or_else(|| config::refuse("--database-url", "no database given: set DATABASE_URL or pass --database-url"))?;
    let options: PgConnectOptions = url.parse().map_err(|e| config::refuse("DATABASE_URL", format!("not a Postgres URL: {e}")))?;
    let target = pg::describe_target(&options);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting a runtime")?;
    runtime.block_on(async {
        let pool = pg::connect_pool(&options, 1, Duration::from_secs(10)).await?;
        if args.check {
            pg::check_schema(&pool).await?;
            outln!("migrate: {target}: schema at version {}, current", pg::required_version());
            return Ok(());
        }
        let applied = pg::migrate(&pool).await.with_context(|| format!("migrating {target}"))?;
        for a in &applied {
            outln!("migrate: applied {:04} {}", a.version, a.description);
        }
        pg::check_schema(&pool).await?;
        match applied.len() {
            0 => outln!("migrate: {target}: schema already at version {}, nothing to apply", pg::required_version()),
            n => outln!("migrate: {target}: applied {n} migration(s), schema at version {}", pg::required_version()),
        }
        pool.close().await;
        Ok(())
    })
}
