//! Venue API credentials: from the environment (`BINANCE_API_KEY` / `BINANCE_API_SECRET`,
//! `BYBIT_API_KEY` / `BYBIT_API_SECRET`) or from mounted files (the same names with `_FILE`,
//! e.g. a Kubernetes secret volume). The secret never appears in `Debug` output or logs.

use std::fmt;

/// A real venue we route orders to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Venue {
    /// Binance (spot and USD-M futures share the keys).
    Binance,
    /// Bybit v5 unified account.
    Bybit,
}

impl Venue {
    /// Parses `binance` or `bybit`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "binance" => Some(Self::Binance),
            "bybit" => Some(Self::Bybit),
            _ => None,
        }
    }

    /// The lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Binance => "binance",
            Self::Bybit => "bybit",
        }
    }

    /// The environment variable names of the key and the secret.
    pub const fn env_names(self) -> (&'static str, &'static str) {
        match self {
            Self::Binance => ("BINANCE_API_KEY", "BINANCE_API_SECRET"),
            Self::Bybit => ("BYBIT_API_KEY", "BYBIT_API_SECRET"),
        }
    }
}

/// A secret string: shown as `[redacted]` by `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for signing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// An API key and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The API key (sent in headers; not secret, but shown shortened).
    pub api_key: String,
    /// The signing secret.
    pub secret: Secret,
}

impl Credentials {
    /// Credentials from a key and a secret.
    pub fn new(api_key: impl Into<String>, secret: impl Into<String>) -> Self {
        Self { api_key: api_key.into(), secret: Secret::new(secret) }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first four characters identify a key in a log without giving it away.
        let shown: String = self.api_key.chars().take(4).collect();
        f.debug_struct("Credentials").field("api_key", &format_args!("{shown}…")).field("secret", &self.secret).finish()
    }
}

/// Why credentials could not be had.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    /// Neither the variable nor its `_FILE` variant is set.
    #[error(
        "{venue}: {name} is not set (nor {name}_FILE): real order routing needs {key} and {secret} \
         (or their _FILE variants); set ENABLE_PAPER_TRADING=true to trade on the paper venue instead"
    )]
    Missing {
        /// The venue.
        venue: &'static str,
        /// The missing variable.
        name: &'static str,
        /// The key variable.
        key: &'static str,
        /// The secret variable.
        secret: &'static str,
    },
    /// The variable is set but empty (or only whitespace).
    #[error("{name} is empty")]
    Empty {
        /// The variable.
        name: String,
    },
    /// A `_FILE` variable names a file that cannot be read.
    #[error("{name}: cannot read {path}: {reason}")]
    File {
        /// The variable.
        name: String,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// The credentials of `venue` from the process environment.
pub fn credentials_from_env(venue: Venue) -> Result<Credentials, CredentialError> {
    credentials_from_lookup(venue, |name| std::env::var(name).ok())
}

/// The credentials of `venue` from `lookup` (an environment): `NAME` wins over `NAME_FILE`;
/// a file's content is trimmed of surrounding whitespace (a trailing newline is usual).
pub fn credentials_from_lookup(venue: Venue, lookup: impl Fn(&str) -> Option<String>) -> Result<Credentials, CredentialError> {
    let (key_name, secret_name) = venue.env_names();
    let read = |name: &'static str| -> Result<String, CredentialError> {
        let value = match lookup(name) {
            Some(v) => v,
            None => {
                let file_var = format!("{name}_FILE");
                let Some(path) = lookup(&file_var) else {
                    return Err(CredentialError::Missing { venue: venue.name(), name, key: key_name, secret: secret_name });
                };
                std::fs::read_to_string(&path).map_err(|e| CredentialError::File { name: file_var, path, reason: e.to_string() })?
            }
        };
        let value = value.trim().to_string();
        if value.is_empty() {
            return Err(CredentialError::Empty { name: name.to_string() });
        }
        Ok(value)
    };
    Ok(Credentials { api_key: read(key_name)?, secret: Secret::new(read(secret_name)?) })
}

/// What `sapphire run` must do about credentials: paper trading needs none; live trading
/// (`ENABLE_PAPER_TRADING=false`) refuses to start without them, with
/// [`CredentialError`]'s message naming the variables to set.
pub fn live_credentials(paper_trading: bool, venue: Venue) -> Result<Option<Credentials>, CredentialError> {
    if paper_trading {
        return Ok(None);
    }
    credentials_from_env(venue).map(Some)
}
