//! The embedded migrations, applying them on purpose ([`migrate`]), and refusing to run on a
//! database whose schema is not the one this build was made for ([`check_schema`]).

use sqlx::migrate::{Migrate, MigrateError, Migration, Migrator};
use sqlx::postgres::PgPool;
use sqlx::Row;
use std::collections::BTreeMap;

/// The migrations in `persistence/migrations`, compiled into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The schema version this build needs: the last embedded migration.
pub fn required_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Why the database's schema is not usable by this build.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// No migration has ever been applied.
    #[error("database has no Sapphire schema, this build needs version {needs}: run `sapphire migrate`")]
    Fresh {
        /// The version this build needs.
        needs: i64,
    },
    /// The database is older than this build.
    #[error("database schema is at version {at}, this build needs {needs}: run `sapphire migrate`")]
    Behind {
        /// The database's last applied version.
        at: i64,
        /// The version this build needs.
        needs: i64,
    },
    /// The database has a migration this build does not know (a newer build migrated it).
    #[error(
        "database schema is at version {at}, newer than this build ({needs}): \
         run a build that knows version {at}"
    )]
    Ahead {
        /// The database's last applied version.
        at: i64,
        /// The version this build needs.
        needs: i64,
    },
    /// An applied migration's text differs from the embedded one with the same version.
    #[error("database migration {version} differs from this build's migration {version} (checksum mismatch)")]
    Modified {
        /// The migration version.
        version: i64,
    },
    /// A migration failed part-way and the schema is in an unknown state.
    #[error("database migration {version} failed part-way: repair the schema by hand, then run `sapphire migrate`")]
    Dirty {
        /// The migration version.
        version: i64,
    },
    /// The database could not be asked.
    #[error("database error while checking the schema: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying a migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] MigrateError),
}

impl SchemaError {
    /// True when retrying cannot help until someone acts (migrates, repairs, upgrades);
    /// false for a database that is merely unreachable.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, SchemaError::Database(_))
    }
}

/// One migration applied by [`migrate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Its version.
    pub version: i64,
    /// Its description (from the file name).
    pub description: String,
}

/// Applies every embedded migration the database does not have yet, in order, each in its
/// own transaction, under Postgres' advisory lock (two migrators never interleave). Returns
/// what it applied: empty when the schema was already current (idempotent).
pub async fn migrate(pool: &PgPool) -> Result<Vec<Applied>, SchemaError> {
    migrate_to(pool, None).await
}

/// [`migrate`] up to and including `target` (all when `None`); for staged roll-outs and tests.
pub async fn migrate_to(pool: &PgPool, target: Option<i64>) -> Result<Vec<Applied>, SchemaError> {
    let mut conn = pool.acquire().await?;
    conn.lock().await?;
    let result = apply_pending(&mut conn, target).await;
    // Unlock even when applying failed; the lock is also dropped with the session.
    let unlocked = conn.unlock().await;
    let applied = result?;
    unlocked?;
    Ok(applied)
}

async fn apply_pending(conn: &mut sqlx::PgConnection, target: Option<i64>) -> Result<Vec<Applied>, SchemaError> {
    conn.ensure_migrations_table().await?;
    if let Some(version) = conn.dirty_version().await? {
        return Err(SchemaError::Dirty { version });
    }
    let have: BTreeMap<i64, Vec<u8>> =
        conn.list_applied_migrations().await?.into_iter().map(|m| (m.version, m.checksum.into_owned())).collect();
    check_known(&have)?;
    let mut applied = Vec::new();
    for m in MIGRATOR.iter().filter(|m| !m.migration_type.is_down_migration()) {
        if target.is_some_and(|t| m.version > t) || have.contains_key(&m.version) {
            continue;
        }
        conn.apply(m).await?;
        applied.push(Applied { version: m.version, description: m.description.to_string() });
    }
    Ok(applied)
}

fn embedded(version: i64) -> Option<&'static Migration> {
    MIGRATOR.iter().find(|m| m.version == version && !m.migration_type.is_down_migration())
}

/// Every applied migration must be one of ours, with the same text.
fn check_known(have: &BTreeMap<i64, Vec<u8>>) -> Result<(), SchemaError> {
    let needs = required_version();
    for (&version, checksum) in have {
        match embedded(version) {
            None => return Err(SchemaError::Ahead { at: have.keys().copied().max().unwrap_or(version), needs }),
            Some(m) if m.checksum.as_ref() != checksum.as_slice() => return Err(SchemaError::Modified { version }),
            Some(_) => {}
        }
    }
    Ok(())
}

/// Succeeds only when the database has exactly the embedded migrations applied, all
/// successfully and unchanged. `sapphire run` and the sink call this and never migrate
/// implicitly; the error says what to do, e.g. "database schema is at version 1, this build
/// needs 2: run `sapphire migrate`".
pub async fn check_schema(pool: &PgPool) -> Result<(), SchemaError> {
    let mut conn = pool.acquire().await?;
    check_schema_conn(&mut conn).await
}

/// [`check_schema`] on one connection.
pub(crate) async fn check_schema_conn(conn: &mut sqlx::PgConnection) -> Result<(), SchemaError> {
    let needs = required_version();
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text").fetch_one(&mut *conn).await?;
    if table.is_none() {
        return Err(SchemaError::Fresh { needs });
    }
    let rows = sqlx::query("SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version").fetch_all(&mut *conn).await?;
    let mut have = BTreeMap::new();
    for row in rows {
        let version: i64 = row.try_get("version")?;
        if !row.try_get::<bool, _>("success")? {
            return Err(SchemaError::Dirty { version });
        }
        have.insert(version, row.try_get::<Vec<u8>, _>("checksum")?);
    }
    check_known(&have)?;
    match have.keys().copied().max() {
        None => Err(SchemaError::Fresh { needs }),
        Some(at) if at < needs || MIGRATOR.iter().any(|m| !have.contains_key(&m.version)) => Err(SchemaError::Behind { at, needs }),
        Some(_) => Ok(()),
    }
}

/// Inserts or updates `shard`'s instrument list (keyed by `(shard, id)`: each shard's
/// process-local ids map to their venue and symbol side by side, no shard overwrites
/// another's); returns the rows written.
pub async fn upsert_instruments(
    pool: &PgPool,
    shard: &str,
    instruments: &[sapphire_core::instrument::Instrument],
) -> Result<u64, sqlx::Error> {
    use super::rows::decimal_string;
    use sapphire_core::fixed::{Money, Price, Quantity};
    use sapphire_core::instrument::MarketType;
    if instruments.is_empty() {
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(instruments.len());
    let (mut symbols, mut venues, mut markets) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ticks, mut lots, mut notionals) = (Vec::new(), Vec::new(), Vec::new());
    let (mut pp, mut qp) = (Vec::new(), Vec::new());
    for i in instruments {
        ids.push(i64::from(i.id.0));
        symbols.push(i.symbol.as_str());
        venues.push(i.venue.as_str());
        markets.push(match i.market {
            MarketType::Spot => "spot",
            MarketType::LinearPerpetual => "linear_perpetual",
        });
        ticks.push(decimal_string(i.tick_size.raw, Price::DECIMALS));
        lots.push(decimal_string(i.lot_size.raw, Quantity::DECIMALS));
        notionals.push(decimal_string(i.min_notional.raw, Money::DECIMALS));
        pp.push(i16::from(i.price_precision));
        qp.push(i16::from(i.qty_precision));
    }
    let r = sqlx::query(
        "INSERT INTO instruments (shard, id, symbol, venue, market, tick_size, lot_size, min_notional, \
         price_precision, qty_precision) \
         SELECT $10::text, * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::numeric[], \
         $6::numeric[], $7::numeric[], $8::smallint[], $9::smallint[]) \
         ON CONFLICT (shard, id) DO UPDATE SET symbol = EXCLUDED.symbol, venue = EXCLUDED.venue, \
         market = EXCLUDED.market, tick_size = EXCLUDED.tick_size, lot_size = EXCLUDED.lot_size, \
         min_notional = EXCLUDED.min_notional, price_precision = EXCLUDED.price_precision, \
         qty_precision = EXCLUDED.qty_precision, updated_at = now()",
    )
    .bind(ids)
    .bind(symbols)
    .bind(venues)
    .bind(markets)
    .bind(ticks)
    .bind(lots)
    .bind(notionals)
    .bind(pp)
    .bind(qp)
    .bind(shard)
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Runs SQL text (one or more statements, no parameters) on the pool: for tools and benches
/// that create or drop schemas without depending on sqlx themselves.
pub async fn execute(pool: &PgPool, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(sql).execute(pool).await.map(|_| ())
}
