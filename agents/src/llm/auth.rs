//! Credentials for LLM providers: API keys (from an environment variable or a mounted file)
//! and Google access tokens for Vertex AI.
//!
//! Vertex AI tokens come from one of two sources:
//! - the **GCE/GKE metadata server** (`Metadata-Flavor: Google`; on GKE through Workload
//!   Identity), the production path;
//! - **application default credentials of type `authorized_user`** (what
//!   `gcloud auth application-default login` writes), exchanged through their refresh token;
//!   the developer path.
//!
//! Not supported: service-account key files (`type: service_account`, which need an RS256
//! signed JWT), workload identity federation (`external_account`) and impersonation. Those
//! files are refused with a message saying so.
//!
//! Secrets never appear in `Debug` output or logs.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A secret string (API key, access or refresh token): `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself; use it only to build a request header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Why credentials could not be had.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The configured environment variable is unset or empty.
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    /// The key file could not be read or is empty.
    #[error("cannot read the API key file {path}: {why}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// The ADC file is unreadable, malformed or of an unsupported type.
    #[error("application default credentials {path}: {why}")]
    Adc {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// The token endpoint failed or answered nonsense.
    #[error("access token from {url}: {why}")]
    Token {
        /// The endpoint.
        url: String,
        /// What went wrong.
        why: String,
    },
}

/// Reads an API key: the file wins over the environment variable when both are set.
pub fn load_api_key(env_var: &str, file: Option<&Path>) -> Result<Secret, AuthError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| AuthError::KeyFile { path: path.into(), why: e.to_string() })?;
        let key = text.trim();
        if key.is_empty() {
            return Err(AuthError::KeyFile { path: path.into(), why: "the file is empty".into() });
        }
        return Ok(Secret::new(key));
    }
    match std::env::var(env_var) {
        Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
        _ => Err(AuthError::MissingEnv(env_var.into())),
    }
}

/// Application default credentials of type `authorized_user`.
#[derive(Clone, Debug)]
pub struct AuthorizedUser {
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: Secret,
    /// Long-lived refresh token.
    pub refresh_token: Secret,
}

#[derive(Deserialize)]
struct AdcFile {
    #[serde(rename = "type")]
    kind: String,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
}

/// Where ADC live when not configured: `GOOGLE_APPLICATION_CREDENTIALS`, else gcloud's
/// well-known file.
pub fn default_adc_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("GOOGLE_APPLICATION_CREDENTIALS") {
        if !p.is_empty() {
            return Some(PathBuf::from(p));
        }
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/gcloud/application_default_credentials.json"))
}

/// Reads an ADC file; only `authorized_user` is accepted.
pub fn load_adc(path: &Path) -> Result<AuthorizedUser, AuthError> {
    let err = |why: String| AuthError::Adc { path: path.into(), why };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let f: AdcFile = serde_json::from_str(&text).map_err(|e| err(format!("not an ADC JSON file: {e}")))?;
    if f.kind != "authorized_user" {
        return Err(err(format!(
            "type {:?} is not supported; use the metadata server (Workload Identity) or `gcloud auth application-default login`",
            f.kind
        )));
    }
    match (f.client_id, f.client_secret, f.refresh_token) {
        (Some(id), Some(secret), Some(refresh)) => {
            Ok(AuthorizedUser { client_id: id, client_secret: Secret::new(secret), refresh_token: Secret::new(refresh) })
        }
        _ => Err(err("client_id, client_secret and refresh_token are required".into())),
    }
}

/// Where Google access tokens come from.
#[derive(Clone, Debug)]
pub enum GoogleSource {
    /// The metadata server's token URL.
    Metadata {
        /// e.g. `http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token`.
        url: String,
    },
    /// A refresh-token exchange at `token_url`.
    AuthorizedUser {
        /// The credentials.
        creds: AuthorizedUser,
        /// e.g. `https://oauth2.googleapis.com/token`.
        token_url: String,
    },
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// A Google access token source with a cached token, refreshed a minute before expiry.
#[derive(Debug)]
pub struct GoogleTokens {
    source: GoogleSource,
    cached: tokio::sync::Mutex<Option<(Secret, Instant)>>,
}

impl GoogleTokens {
    /// A token source.
    pub fn new(source: GoogleSource) -> Self {
        Self { source, cached: tokio::sync::Mutex::new(None) }
    }

    /// A valid access token, fetching one when none is cached or it is about to expire.
    pub async fn token(&self, http: &reqwest::Client, timeout: Duration) -> Result<Secret, AuthError> {
        let mut cached = self.cached.lock().await;
        if let Some((tok, until)) = cached.as_ref() {
            if Instant::now() < *until {
                return Ok(tok.clone());
            }
        }
        let (url, req) = match &self.source {
            GoogleSource::Metadata { url } => (url.clone(), http.get(url).header("Metadata-Flavor", "Google")),
            GoogleSource::AuthorizedUser { creds, token_url } => {
                let body = format!(
                    "grant_type=refresh_token&client_id={}&client_secret={}&refresh_token={}",
                    form_encode(&creds.client_id),
                    form_encode(creds.client_secret.expose()),
                    form_encode(creds.refresh_token.expose())
                );
                (token_url.clone(), http.post(token_url).header("Content-Type", "application/x-www-form-urlencoded").body(body))
            }
        };
        let err = |why: String| AuthError::Token { url: url.clone(), why };
        let resp = req.timeout(timeout).send().await.map_err(|e| err(e.without_url().to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(err(format!("HTTP {status}")));
        }
        let body: TokenResponse = resp.json().await.map_err(|e| err(format!("bad token response: {}", e.without_url())))?;
        if body.access_token.is_empty() {
            return Err(err("empty access_token".into()));
        }
        let life = Duration::from_secs(body.expires_in.unwrap_or(300));
        let until = Instant::now() + life.saturating_sub(Duration::from_secs(60));
        let tok = Secret::new(body.access_token);
        *cached = Some((tok.clone(), until));
        Ok(tok)
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_debug() {
        let s = Secret::new("xai-very-secret");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        let creds = AuthorizedUser { client_id: "id".into(), client_secret: Secret::new("cs"), refresh_token: Secret::new("rt") };
        let shown = format!("{creds:?}");
        assert!(!shown.contains("cs\"") && !shown.contains("rt\""), "{shown}");
    }

    #[test]
    fn form_encoding_escapes_reserved_bytes() {
        assert_eq!(form_encode("a b/c+d=é"), "a%20b%2Fc%2Bd%3D%C3%A9");
    }

    #[test]
    fn adc_types_other_than_authorized_user_are_refused() {
        let dir = std::env::temp_dir().join(format!("sapphire-agents-adc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sa = dir.join("sa.json");
        std::fs::write(&sa, r#"{"type":"service_account","private_key":"x"}"#).unwrap();
        let e = load_adc(&sa).unwrap_err().to_string();
        assert!(e.contains("service_account") && e.contains("not supported"), "{e}");
        let user = dir.join("user.json");
        std::fs::write(&user, r#"{"type":"authorized_user","client_id":"i","client_secret":"s","refresh_token":"r"}"#).unwrap();
        assert_eq!(load_adc(&user).unwrap().refresh_token.expose(), "r");
        let key = dir.join("key");
        std::fs::write(&key, "  k-123\n").unwrap();
        assert_eq!(load_api_key("SAPPHIRE_TEST_UNSET_VAR", Some(&key)).unwrap().expose(), "k-123");
        assert!(matches!(load_api_key("SAPPHIRE_TEST_UNSET_VAR", None), Err(AuthError::MissingEnv(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
