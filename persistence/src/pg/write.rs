//! The two batch methods: a multi-row `INSERT … SELECT FROM UNNEST(arrays)` and a binary
//! `COPY … FROM STDIN`, both writing the rows of a [`RowBatch`] on a connection that is
//! inside the caller's transaction. Every row gets the writing sink's shard as its first
//! column (a scalar parameter under UNNEST, a field of every tuple under COPY).

use super::rows::{ColType, RowBatch, Table, Value, TABLES};
use sqlx::postgres::PgConnection;
use std::sync::OnceLock;

/// Unix epoch − Postgres epoch (2000-01-01), microseconds.
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// The statements of one table, built once.
#[derive(Debug)]
struct Statements {
    unnest: String,
    copy: String,
}

fn statements() -> &'static [Statements; TABLES.len()] {
    static S: OnceLock<[Statements; TABLES.len()]> = OnceLock::new();
    S.get_or_init(|| TABLES.map(|t| Statements { unnest: unnest_sql(&t), copy: copy_sql(&t) }))
}

fn column_list(t: &Table) -> String {
    t.columns.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ")
}

/// `INSERT INTO t (shard, cols) SELECT $n::text, exprs FROM UNNEST($1::bigint[], …) AS u(cols)
/// ON CONFLICT (shard, journal_seq) DO NOTHING` — numbers and times are sent as their raw integers
/// and made exact in SQL (`raw::numeric * 0.000000001` has exactly the scale's decimals).
fn unnest_sql(t: &Table) -> String {
    let cols = column_list(t);
    let mut exprs = Vec::with_capacity(t.columns.len());
    let mut params = Vec::with_capacity(t.columns.len());
    for (i, (name, ty)) in t.columns.iter().enumerate() {
        let p = i + 1;
        let (array, expr) = match ty {
            ColType::Int8 => ("bigint[]", format!("u.{name}")),
            ColType::Int4 => ("integer[]", format!("u.{name}")),
            ColType::Bool => ("boolean[]", format!("u.{name}")),
            ColType::Text => ("text[]", format!("u.{name}")),
            ColType::Numeric(0) => ("bigint[]", format!("u.{name}::numeric")),
            ColType::Numeric(s) => ("bigint[]", format!("u.{name}::numeric * 0.{}1", "0".repeat(usize::from(*s) - 1))),
            // Whole seconds through to_timestamp (exact for integers) plus whole microseconds.
            ColType::Timestamp => (
                "bigint[]",
                format!(
                    "to_timestamp((u.{name} / 1000000000)::float8) + \
                     ((u.{name} % 1000000000) / 1000) * interval '1 microsecond'"
                ),
            ),
        };
        params.push(format!("${p}::{array}"));
        exprs.push(expr);
    }
    let shard_param = t.columns.len() + 1;
    format!(
        "INSERT INTO {} (shard, {cols}) SELECT ${shard_param}::text, {} FROM UNNEST({}) AS u({cols}) \
         ON CONFLICT (shard, journal_seq) DO NOTHING",
        t.name,
        exprs.join(", "),
        params.join(", ")
    )
}

fn copy_sql(t: &Table) -> String {
    format!("COPY {} (shard, {}) FROM STDIN WITH (FORMAT binary)", t.name, column_list(t))
}

fn cell_error(t: &Table, col: &str, v: Value) -> sqlx::Error {
    sqlx::Error::Encode(format!("{}.{col}: value {v:?} does not fit the column", t.name).into())
}

/// Writes every table's rows with UNNEST inserts as `shard`'s; returns the rows inserted (a
/// row whose `(shard, journal_seq)` is already there is skipped, not duplicated).
pub(crate) async fn insert_unnest(conn: &mut PgConnection, batch: &RowBatch, shard: &str) -> Result<u64, sqlx::Error> {
    let mut inserted = 0;
    for (t, rows) in TABLES.iter().zip(&batch.tables) {
        if rows.rows == 0 {
            continue;
        }
        let width = t.columns.len();
        let mut q = sqlx::query(&statements()[t.index].unnest);
        for (c, (name, ty)) in t.columns.iter().enumerate() {
            let cells = rows.cells.iter().skip(c).step_by(width);
            q = match ty {
                ColType::Int8 | ColType::Numeric(_) | ColType::Timestamp => {
                    let v: Result<Vec<Option<i64>>, _> = cells
                        .map(|v| match *v {
                            Value::Int(x) => Ok(Some(x)),
                            Value::Null => Ok(None),
                            other => Err(cell_error(t, name, other)),
                        })
                        .collect();
                    q.bind(v?)
                }
                ColType::Int4 => {
                    let v: Result<Vec<Option<i32>>, _> = cells
                        .map(|v| match *v {
                            Value::Int4(x) => Ok(Some(x)),
                            Value::Null => Ok(None),
                            other => Err(cell_error(t, name, other)),
                        })
                        .collect();
                    q.bind(v?)
                }
                ColType::Bool => {
                    let v: Result<Vec<Option<bool>>, _> = cells
                        .map(|v| match *v {
                            Value::Bool(x) => Ok(Some(x)),
                            Value::Null => Ok(None),
                            other => Err(cell_error(t, name, other)),
                        })
                        .collect();
                    q.bind(v?)
                }
                ColType::Text => {
                    let v: Result<Vec<Option<&'static str>>, _> = cells
                        .map(|v| match *v {
                            Value::Text(x) => Ok(Some(x)),
                            Value::Null => Ok(None),
                            other => Err(cell_error(t, name, other)),
                        })
                        .collect();
                    q.bind(v?)
                }
            };
        }
        inserted += q.bind(shard).execute(&mut *conn).await?.rows_affected();
    }
    Ok(inserted)
}

/// Writes every table's rows with binary COPY as `shard`'s; returns the rows copied. `buf`
/// is scratch space reused across batches. A row whose `(shard, journal_seq)` is already
/// there fails the COPY (unique violation): COPY cannot skip conflicts.
pub(crate) async fn insert_copy(conn: &mut PgConnection, batch: &RowBatch, shard: &str, buf: &mut Vec<u8>) -> Result<u64, sqlx::Error> {
    let mut copied = 0;
    for (t, rows) in TABLES.iter().zip(&batch.tables) {
        if rows.rows == 0 {
            continue;
        }
        buf.clear();
        encode_copy(t, &rows.cells, shard, buf)?;
        let mut copy = conn.copy_in_raw(&statements()[t.index].copy).await?;
        if let Err(e) = copy.send(buf.as_slice()).await {
            // Leave the connection usable: end the COPY before reporting.
            let _ = copy.abort(e.to_string()).await;
            return Err(e);
        }
        copied += copy.finish().await?;
    }
    Ok(copied)
}

/// The binary COPY stream of one table: signature and header, one tuple per row (the shard,
/// then the table's columns), trailer.
pub(crate) fn encode_copy(t: &Table, cells: &[Value], shard: &str, buf: &mut Vec<u8>) -> Result<(), sqlx::Error> {
    buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buf.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
    buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    let width = t.columns.len();
    let fields = i16::try_from(width + 1).map_err(|_| sqlx::Error::Encode("too many columns".into()))?;
    for row in cells.chunks(width) {
        buf.extend_from_slice(&fields.to_be_bytes());
        field(buf, shard.as_bytes());
        for ((name, ty), v) in t.columns.iter().zip(row) {
            match (*ty, *v) {
                (_, Value::Null) => buf.extend_from_slice(&(-1i32).to_be_bytes()),
                (ColType::Int8, Value::Int(x)) => field(buf, &x.to_be_bytes()),
                (ColType::Int4, Value::Int4(x)) => field(buf, &x.to_be_bytes()),
                (ColType::Bool, Value::Bool(x)) => field(buf, &[u8::from(x)]),
                (ColType::Text, Value::Text(s)) => field(buf, s.as_bytes()),
                (ColType::Numeric(scale), Value::Int(raw)) => put_numeric(buf, raw, scale),
                (ColType::Timestamp, Value::Int(ns)) => field(buf, &(ns.div_euclid(1_000) - PG_EPOCH_OFFSET_US).to_be_bytes()),
                (_, other) => return Err(cell_error(t, name, other)),
            }
        }
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    Ok(())
}

fn field(buf: &mut Vec<u8>, bytes: &[u8]) {
    // Field values here are at most a few dozen bytes.
    buf.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
    buf.extend_from_slice(bytes);
}

/// Postgres' binary `numeric` for `raw × 10^-scale`, exactly: base-10000 digit groups aligned
/// on the decimal point (`ndigits, weight, sign, dscale, digits…`, all big-endian i16).
pub(crate) fn put_numeric(buf: &mut Vec<u8>, raw: i64, scale: u8) {
    let scale = u32::from(scale.min(18));
    let frac_groups = scale.div_ceil(4);
    // Pad the fraction to whole groups: |i64| · 10^3 at most, well inside u128.
    let mut v = u128::from(raw.unsigned_abs()) * 10u128.pow(frac_groups * 4 - scale);
    let mut groups = [0u16; 12]; // least significant first
    let mut n = 0;
    while v > 0 {
        groups[n] = (v % 10_000) as u16;
        v /= 10_000;
        n += 1;
    }
    let weight = n as i16 - 1 - frac_groups as i16;
    let low = groups[..n].iter().take_while(|g| **g == 0).count();
    let digits = &groups[low..n];
    let (weight, sign) = if digits.is_empty() { (0, 0) } else { (weight, if raw < 0 { 0x4000u16 } else { 0 }) };
    let len = 8 + 2 * digits.len();
    buf.extend_from_slice(&(len as i32).to_be_bytes());
    buf.extend_from_slice(&(digits.len() as i16).to_be_bytes());
    buf.extend_from_slice(&weight.to_be_bytes());
    buf.extend_from_slice(&sign.to_be_bytes());
    buf.extend_from_slice(&(scale as i16).to_be_bytes());
    for g in digits.iter().rev() {
        buf.extend_from_slice(&g.to_be_bytes());
    }
}

/// The SQL of every statement.
#[cfg(test)]
fn describe() -> String {
    statements().iter().map(|st| format!("{}\n{}\n", st.unnest, st.copy)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(raw: i64, scale: u8) -> Vec<u8> {
        let mut b = Vec::new();
        put_numeric(&mut b, raw, scale);
        b
    }

    fn be16(v: &[i16]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_be_bytes()).collect()
    }

    #[test]
    fn numeric_binary_is_base_10000_on_the_point() {
        // 12345.678901234 = 1·10000 + 2345 . 6789 0123 4000
        let mut want = (8 + 2 * 5i32).to_be_bytes().to_vec();
        want.extend(be16(&[5, 1, 0, 9, 1, 2345, 6789, 123, 4000]));
        assert_eq!(numeric(12_345_678_901_234, 9), want);
        // -0.000000001: one group 1000 at weight -3.
        let mut want = 10i32.to_be_bytes().to_vec();
        want.extend(be16(&[1, -3, 0x4000, 9, 1000]));
        assert_eq!(numeric(-1, 9), want);
        // Zero: no digits, positive.
        let mut want = 8i32.to_be_bytes().to_vec();
        want.extend(be16(&[0, 0, 0, 8]));
        assert_eq!(numeric(0, 8), want);
        // 100 (quantity 1e10 raw at scale 8): trailing zero groups dropped, weight kept.
        let mut want = 10i32.to_be_bytes().to_vec();
        want.extend(be16(&[1, 0, 0, 8, 100]));
        assert_eq!(numeric(10_000_000_000, 8), want);
        // The extremes do not overflow.
        assert_eq!(numeric(i64::MIN, 9).len(), 4 + 8 + 2 * 6);
        assert_eq!(numeric(i64::MAX, 8).len(), 4 + 8 + 2 * 5);
    }

    #[test]
    fn statements_name_every_column() {
        let sql = describe();
        for t in TABLES {
            for (c, _) in t.columns {
                assert!(sql.contains(c), "{}.{c}", t.name);
            }
        }
        assert!(statements()[0].unnest.contains("0.000000001"), "{}", statements()[0].unnest);
        for st in statements() {
            assert!(st.unnest.contains("ON CONFLICT (shard, journal_seq)"), "{}", st.unnest);
            assert!(st.copy.contains("(shard, journal_seq,"), "{}", st.copy);
        }
    }
}
