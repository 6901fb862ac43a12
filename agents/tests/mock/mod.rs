//! A local OpenAI-compatible chat-completions server (and Google token endpoints) for tests.
#![allow(dead_code)]

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the server answers to one chat request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 with a completion whose content is this string, and usage.
    Content(String, u64, u64),
    /// Like `Content` after a delay.
    Slow(Duration, String),
    /// A status with a body.
    Status(u16, String),
    /// 200 with this raw body.
    Raw(String),
}

/// One request the server saw.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The Authorization header.
    pub auth: Option<String>,
    /// The JSON body.
    pub body: Value,
}

#[derive(Debug, Default)]
pub struct Mock {
    pub script: Mutex<VecDeque<Reply>>,
    /// Answered when the script is empty.
    pub fallback: Mutex<Option<Reply>>,
    /// Answers by `response_format.json_schema.name`, before the script.
    pub by_schema: Mutex<std::collections::HashMap<String, Reply>>,
    pub chats: Mutex<Vec<Seen>>,
    /// Token requests: (Metadata-Flavor header, body).
    pub tokens: Mutex<Vec<(Option<String>, String)>>,
}

impl Mock {
    pub fn push(&self, r: Reply) {
        self.script.lock().unwrap().push_back(r);
    }

    pub fn chat_count(&self) -> usize {
        self.chats.lock().unwrap().len()
    }
}

pub fn completion(content: &str, prompt_tokens: u64, completion_tokens: u64) -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "test-model-0613",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
    })
}

async fn chat(State(m): State<Arc<Mock>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let schema = body["response_format"]["json_schema"]["name"].as_str().unwrap_or_default().to_string();
    m.chats.lock().unwrap().push(Seen { auth, body });
    let reply = m
        .by_schema
        .lock()
        .unwrap()
        .get(&schema)
        .cloned()
        .or_else(|| m.script.lock().unwrap().pop_front())
        .or_else(|| m.fallback.lock().unwrap().clone());
    match reply {
        Some(Reply::Content(c, p, k)) => Json(completion(&c, p, k)).into_response(),
        Some(Reply::Slow(d, c)) => {
            tokio::time::sleep(d).await;
            Json(completion(&c, 10, 10)).into_response()
        }
        Some(Reply::Status(code, body)) => (StatusCode::from_u16(code).unwrap(), body).into_response(),
        Some(Reply::Raw(body)) => (StatusCode::OK, [("content-type", "application/json")], body).into_response(),
        None => (StatusCode::INTERNAL_SERVER_ERROR, "no reply scripted").into_response(),
    }
}

async fn metadata_token(State(m): State<Arc<Mock>>, headers: HeaderMap) -> Response {
    let flavor = headers.get("metadata-flavor").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let ok = flavor.as_deref() == Some("Google");
    m.tokens.lock().unwrap().push((flavor, String::new()));
    if !ok {
        return (StatusCode::FORBIDDEN, "missing Metadata-Flavor").into_response();
    }
    Json(json!({"access_token": "ya29.meta", "expires_in": 3599, "token_type": "Bearer"})).into_response()
}

async fn oauth_token(State(m): State<Arc<Mock>>, body: String) -> Response {
    m.tokens.lock().unwrap().push((None, body.clone()));
    if !body.contains("grant_type=refresh_token") || !body.contains("refresh_token=1%2Frefresh") {
        return (StatusCode::BAD_REQUEST, "bad grant").into_response();
    }
    Json(json!({"access_token": "ya29.user", "expires_in": 3599, "token_type": "Bearer"})).into_response()
}

/// Starts the server; returns its base URL (`http://127.0.0.1:PORT`) and state.
pub async fn start() -> (String, Arc<Mock>) {
    let m = Arc::new(Mock::default());
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/computeMetadata/v1/instance/service-accounts/default/token", get(metadata_token))
        .route("/token", post(oauth_token))
        .with_state(m.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), m)
}
