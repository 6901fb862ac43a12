//! Report delivery through the Telegram Bot API: `sendMessage` with the summary, then the
//! charts as `sendMediaGroup` albums of up to ten photos (`sendPhoto` for a single one), as
//! `multipart/form-data` with file parts `photo0`, `photo1`, … named after the chart files.
//!
//! Any failure is an error carrying the API's `description` (or the HTTP status), never
//! silent. The bot token is part of every URL, so it is never logged: errors are built
//! without the URL, and `Debug` redacts it.

use super::Report;
use anyhow::Context;
use std::time::Duration;

/// Telegram's API base.
pub const DEFAULT_API_BASE: &str = "https://api.telegram.org";
/// Telegram's limit on a message's text.
const MAX_TEXT: usize = 4096;
/// Photos per album.
const ALBUM: usize = 10;

/// A bot and the chat it writes to.
pub struct Telegram {
    token: String,
    chat_id: String,
    base: String,
}

impl std::fmt::Debug for Telegram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telegram").field("token", &"<redacted>").field("chat_id", &self.chat_id).field("base", &self.base).finish()
    }
}

impl Telegram {
    /// From `TELEGRAM_BOT_TOKEN` (or the file named by `TELEGRAM_BOT_TOKEN_FILE`, a mounted
    /// Secret; the variable wins), `TELEGRAM_CHAT_ID` and optionally `TELEGRAM_API_BASE`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Telegram> {
        let get = |k: &str| env(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let token = match (get("TELEGRAM_BOT_TOKEN"), get("TELEGRAM_BOT_TOKEN_FILE")) {
            (Some(t), _) => t,
            (None, Some(path)) => {
                std::fs::read_to_string(&path).with_context(|| format!("reading TELEGRAM_BOT_TOKEN_FILE {path}"))?.trim().to_string()
            }
            (None, None) => anyhow::bail!("Telegram needs TELEGRAM_BOT_TOKEN (or TELEGRAM_BOT_TOKEN_FILE)"),
        };
        anyhow::ensure!(!token.is_empty(), "TELEGRAM_BOT_TOKEN_FILE holds no token");
        let chat_id = get("TELEGRAM_CHAT_ID").ok_or_else(|| anyhow::anyhow!("Telegram needs TELEGRAM_CHAT_ID"))?;
        anyhow::ensure!(
            !token.contains('/') && !token.contains(char::is_whitespace),
            "TELEGRAM_BOT_TOKEN is malformed (it holds '/' or whitespace)"
        );
        let base = get("TELEGRAM_API_BASE").unwrap_or_else(|| DEFAULT_API_BASE.to_string()).trim_end_matches('/').to_string();
        Ok(Telegram { token, chat_id, base })
    }

    fn url(&self, method: &str) -> String {
        format!("{}/bot{}/{method}", self.base, self.token)
    }

    /// Sends the report's summary and charts (blocking; its own runtime).
    pub fn send_report(&self, report: &Report) -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the Telegram client's runtime")?;
        rt.block_on(self.send(report))
    }

    /// Sends one text message (`sendMessage`), cut to Telegram's 4096 characters.
    pub async fn send_message(&self, client: &reqwest::Client, text: &str) -> anyhow::Result<()> {
        let text: String = text.chars().take(MAX_TEXT).collect();
        let form = reqwest::multipart::Form::new().text("chat_id", self.chat_id.clone()).text("text", text);
        self.call(client, "sendMessage", form).await
    }

    async fn send(&self, report: &Report) -> anyhow::Result<()> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().context("building the HTTP client")?;
        let text: String = report.summary_text.chars().take(MAX_TEXT).collect();
        let form = reqwest::multipart::Form::new().text("chat_id", self.chat_id.clone()).text("text", text);
        self.call(&client, "sendMessage", form).await?;
        let mut photos = Vec::new();
        for path in &report.charts {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "chart.png".into());
            photos.push((name, bytes));
        }
        for chunk in photos.chunks(ALBUM) {
            let mut form = reqwest::multipart::Form::new().text("chat_id", self.chat_id.clone());
            if let [(name, bytes)] = chunk {
                form = form.part("photo", png_part(name, bytes)?).text("caption", name.clone());
                self.call(&client, "sendPhoto", form).await?;
                continue;
            }
            let media: Vec<serde_json::Value> = chunk
                .iter()
                .enumerate()
                .map(|(i, (name, _))| serde_json::json!({"type": "photo", "media": format!("attach://photo{i}"), "caption": name}))
                .collect();
            form = form.text("media", serde_json::Value::Array(media).to_string());
            for (i, (name, bytes)) in chunk.iter().enumerate() {
                form = form.part(format!("photo{i}"), png_part(name, bytes)?);
            }
            self.call(&client, "sendMediaGroup", form).await?;
        }
        Ok(())
    }

    async fn call(&self, client: &reqwest::Client, method: &str, form: reqwest::multipart::Form) -> anyhow::Result<()> {
        // `without_url`: the URL holds the token.
        let resp = client
            .post(self.url(method))
            .multipart(form)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("Telegram {method}: {}", e.without_url()))?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| anyhow::anyhow!("Telegram {method}: reading the answer: {}", e.without_url()))?;
        let v: Option<serde_json::Value> = serde_json::from_str(&body).ok();
        let ok = v.as_ref().and_then(|v| v.get("ok")).and_then(serde_json::Value::as_bool) == Some(true);
        if ok && status.is_success() {
            return Ok(());
        }
        let description = v.as_ref().and_then(|v| v.get("description")).and_then(|d| d.as_str()).map(str::to_string);
        match description {
            Some(d) => anyhow::bail!("Telegram {method} failed (HTTP {}): {d}", status.as_u16()),
            None => {
                anyhow::bail!("Telegram {method} failed (HTTP {}): the answer is not Telegram's ({} bytes)", status.as_u16(), body.len())
            }
        }
    }
}

fn png_part(name: &str, bytes: &[u8]) -> anyhow::Result<reqwest::multipart::Part> {
    Ok(reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(name.to_string()).mime_str("image/png")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_the_environment_and_the_token_is_redacted() {
        let env = |k: &str| match k {
            "TELEGRAM_BOT_TOKEN" => Some("123:secret".to_string()),
            "TELEGRAM_CHAT_ID" => Some("-100".to_string()),
            "TELEGRAM_API_BASE" => Some("http://127.0.0.1:9/".to_string()),
            _ => None,
        };
        let t = Telegram::from_env(&env).unwrap();
        assert_eq!(t.url("sendMessage"), "http://127.0.0.1:9/bot123:secret/sendMessage");
        assert!(!format!("{t:?}").contains("secret"));
        let missing = Telegram::from_env(&|k: &str| (k == "TELEGRAM_BOT_TOKEN").then(|| "x".to_string())).unwrap_err();
        assert!(missing.to_string().contains("TELEGRAM_CHAT_ID"), "{missing}");
    }

    #[test]
    fn the_token_can_come_from_a_mounted_file() {
        let file = std::env::temp_dir().join(format!("sapphire-tg-token-{}", std::process::id()));
        std::fs::write(&file, "456:from-file\n").unwrap();
        let path = file.display().to_string();
        let env = |k: &str| match k {
            "TELEGRAM_BOT_TOKEN_FILE" => Some(path.clone()),
            "TELEGRAM_CHAT_ID" => Some("7".to_string()),
            _ => None,
        };
        let t = Telegram::from_env(&env).unwrap();
        assert_eq!(t.url("sendMessage"), "https://api.telegram.org/bot456:from-file/sendMessage");
        std::fs::remove_file(&file).unwrap();
        let err = Telegram::from_env(&env).unwrap_err();
        assert!(err.to_string().contains("TELEGRAM_BOT_TOKEN_FILE") && !format!("{err:#}").contains("from-file"), "{err:#}");
        let none = Telegram::from_env(&|k: &str| (k == "TELEGRAM_CHAT_ID").then(|| "7".to_string())).unwrap_err();
        assert!(none.to_string().contains("TELEGRAM_BOT_TOKEN"), "{none}");
    }
}
