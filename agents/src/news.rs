//! Headlines for the sentiment agent, from a local file or an HTTP JSON feed.
//!
//! Accepted shapes (file or HTTP body): a JSON array; an object holding the array under
//! `items`, `articles`, `headlines` or `data`; or JSON lines. Each entry is a string or an
//! object with `title` or `headline` (other fields are ignored). Entries without a title are
//! skipped; titles are trimmed to 300 characters.

use crate::config::NewsConfig;
use serde_json::Value;
use std::time::Duration;

/// Longest headline kept, characters.
const MAX_TITLE_CHARS: usize = 300;

/// Why headlines could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NewsError {
    /// No file or URL configured.
    #[error("no news source configured (news.file or news.url)")]
    NotConfigured,
    /// The file could not be read.
    #[error("news file {0}: {1}")]
    File(String, String),
    /// The feed failed.
    #[error("news feed: {0}")]
    Http(String),
    /// The content is not one of the accepted shapes.
    #[error("news: {0}")]
    Format(String),
}

/// Reads the configured source's headlines (the last `max_headlines`).
pub async fn fetch(cfg: &NewsConfig, http: &reqwest::Client) -> Result<Vec<String>, NewsError> {
    let text = if let Some(path) = &cfg.file {
        tokio::task::spawn_blocking({
            let path = path.clone();
            move || std::fs::read_to_string(&path).map_err(|e| NewsError::File(path.display().to_string(), e.to_string()))
        })
        .await
        .map_err(|e| NewsError::Format(e.to_string()))??
    } else if !cfg.url.is_empty() {
        let resp =
            http.get(&cfg.url).timeout(Duration::from_secs(10)).send().await.map_err(|e| NewsError::Http(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(NewsError::Http(format!("HTTP {}", resp.status().as_u16())));
        }
        resp.text().await.map_err(|e| NewsError::Http(e.without_url().to_string()))?
    } else {
        return Err(NewsError::NotConfigured);
    };
    let mut all = parse(&text)?;
    let max = if cfg.max_headlines == 0 { 20 } else { cfg.max_headlines };
    if all.len() > max {
        all.drain(..all.len() - max);
    }
    Ok(all)
}

/// Parses headlines from any accepted shape.
pub fn parse(text: &str) -> Result<Vec<String>, NewsError> {
    let entries: Vec<Value> = match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(a)) => a,
        Ok(Value::Object(mut o)) => {
            let list = ["items", "articles", "headlines", "data"].iter().find_map(|k| match o.remove(*k) {
                Some(Value::Array(a)) => Some(a),
                _ => None,
            });
            match list {
                Some(a) => a,
                // A single JSON line holding one headline object.
                None => vec![Value::Object(o)],
            }
        }
        Ok(other) => vec![other],
        Err(_) => {
            let mut v = Vec::new();
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                v.push(serde_json::from_str(line).map_err(|e| NewsError::Format(format!("line {}: {e}", i + 1)))?);
            }
            v
        }
    };
    Ok(entries.iter().filter_map(title).collect())
}

fn title(v: &Value) -> Option<String> {
    let t = match v {
        Value::String(s) => s.as_str(),
        Value::Object(o) => o.get("title").or_else(|| o.get("headline")).and_then(Value::as_str)?,
        _ => return None,
    };
    // One line each: a headline must not be able to forge prompt structure.
    let t: String = t.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(MAX_TITLE_CHARS).collect();
    (!t.is_empty()).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_parses() {
        assert_eq!(parse(r#"["BTC ETF approved", {"title": "ETH upgrade"}, {"x": 1}, 5]"#).unwrap(), ["BTC ETF approved", "ETH upgrade"]);
        assert_eq!(parse(r#"{"articles": [{"headline": "a\nb"}]}"#).unwrap(), ["a b"]);
        assert_eq!(parse("{\"title\": \"one\"}\n\n{\"title\": \"two\"}\n").unwrap(), ["one", "two"]);
        assert!(matches!(parse("{\"title\": \"one\"}\nnot json"), Err(NewsError::Format(m)) if m.starts_with("line 2")));
    }
}
