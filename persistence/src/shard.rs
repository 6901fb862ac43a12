//! The shard id: which core (symbol shard) a record came from. Several cores share one
//! Postgres and one Redis; every row, cursor, key and channel they write carries it.

/// The shard a core runs as when none is configured; rows written before shards existed
/// belong to it (migration 0003).
pub const DEFAULT_SHARD: &str = "main";

/// Longest shard id: it is part of Redis keys and Postgres keys, so it stays short.
pub const MAX_SHARD_LEN: usize = 32;

/// Checks a shard id: 1 to [`MAX_SHARD_LEN`] characters of `a-z`, `0-9` and `-`. Returns
/// why it is refused, for a message that names the configuration key.
pub fn check_shard(shard: &str) -> Result<(), String> {
    if shard.is_empty() || shard.len() > MAX_SHARD_LEN {
        return Err(format!("{shard:?} must be 1 to {MAX_SHARD_LEN} characters"));
    }
    if let Some(c) = shard.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
        return Err(format!("{shard:?} has {c:?}: use only a-z, 0-9 and -"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_ids_are_short_lowercase_words() {
        for ok in [DEFAULT_SHARD, "a", "b", "0", "eu-1", &"x".repeat(MAX_SHARD_LEN)] {
            assert_eq!(check_shard(ok), Ok(()), "{ok}");
        }
        for bad in ["", "A", "a b", "a:b", "a*", "ü", &"x".repeat(MAX_SHARD_LEN + 1)] {
            assert!(check_shard(bad).is_err(), "{bad:?}");
        }
    }
}
