//! A minimal HTTP/1.1 GET for REST depth snapshots and exchange information, over plain TCP
//! (`http://`, the local exchange) or TLS (`https://`, real venues). One request per
//! connection (`Connection: close`); the body is framed by `Content-Length`, chunked encoding,
//! or the end of the stream. Snapshots are rare (start and resync), so connection reuse buys
//! nothing here; the order path uses a pooled client (see `venue`).

use super::tls::{self, Endpoint};
use super::ConnectionError;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// TCP connect plus TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest response accepted (a 5,000-level depth snapshot is about 250 KB).
const MAX_RESPONSE: usize = 16 << 20;

/// GETs `url` (`http://` or `https://`) and returns the body of a 200 response.
pub async fn get(url: &str) -> Result<Vec<u8>, ConnectionError> {
    let u = Endpoint::parse(url, ("http", "https"))?;
    let io = |e: std::io::Error| ConnectionError::Io { url: url.to_string(), reason: e.to_string() };
    let mut stream = tls::connect(&u, url, CONNECT_TIMEOUT).await?;
    // Host names the port only when it is not the scheme's default.
    let host = if u.port == if u.tls { 443 } else { 80 } { u.host.clone() } else { u.authority() };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sapphire\r\nAccept: application/json\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n",
        u.target
    );
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut raw = Vec::with_capacity(64 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if raw.len() > MAX_RESPONSE {
            return Err(ConnectionError::HttpMalformed { url: url.to_string(), reason: "response too large" });
        }
        if let Some(body) = complete_body(&raw).map_err(|reason| ConnectionError::HttpMalformed { url: url.to_string(), reason })? {
            return finish(url, &raw, body);
        }
    }
    // End of stream: the body runs to the end unless the framing said otherwise.
    match complete_body(&raw).map_err(|reason| ConnectionError::HttpMalformed { url: url.to_string(), reason })? {
        Some(body) => finish(url, &raw, body),
        None => {
            let head_end =
                find(&raw, b"\r\n\r\n").ok_or(ConnectionError::HttpMalformed { url: url.to_string(), reason: "no header end" })?;
            if header(&raw[..head_end], "content-length").is_some() || header(&raw[..head_end], "transfer-encoding").is_some() {
                return Err(ConnectionError::HttpMalformed { url: url.to_string(), reason: "body cut short" });
            }
            finish(url, &raw, raw[head_end + 4..].to_vec())
        }
    }
}

fn finish(url: &str, raw: &[u8], body: Vec<u8>) -> Result<Vec<u8>, ConnectionError> {
    let status = status(raw).ok_or(ConnectionError::HttpMalformed { url: url.to_string(), reason: "bad status line" })?;
    if status != 200 {
        return Err(ConnectionError::HttpStatus { url: url.to_string(), status });
    }
    Ok(body)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn status(raw: &[u8]) -> Option<u16> {
    let line_end = find(raw, b"\r\n")?;
    let line = std::str::from_utf8(&raw[..line_end]).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// A header's value (name case-insensitive) from the head.
pub(crate) fn header<'a>(head: &'a [u8], name: &str) -> Option<&'a str> {
    let head = std::str::from_utf8(head).ok()?;
    head.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The body once the response is complete per its framing; `None` while more is needed or
/// when the body runs to the end of the stream.
fn complete_body(raw: &[u8]) -> Result<Option<Vec<u8>>, &'static str> {
    let Some(head_end) = find(raw, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = &raw[..head_end];
    let body = &raw[head_end + 4..];
    if let Some(len) = header(head, "content-length") {
        let len: usize = len.parse().map_err(|_| "bad Content-Length")?;
        return Ok((body.len() >= len).then(|| body[..len].to_vec()));
    }
    if header(head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return dechunk(body);
    }
    Ok(None)
}

fn dechunk(mut body: &[u8]) -> Result<Option<Vec<u8>>, &'static str> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = find(body, b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&body[..line_end]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).map_err(|_| "bad chunk size")?;
        let data = &body[line_end + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&data[..size]);
        body = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(complete_body(r).unwrap().unwrap(), b"hello");
        assert_eq!(complete_body(&r[..r.len() - 1]).unwrap(), None);
        let c = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\n\r\n";
        assert_eq!(complete_body(c).unwrap().unwrap(), b"hello");
        assert_eq!(status(b"HTTP/1.1 404 Not Found\r\n\r\n"), Some(404));
        assert!(complete_body(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }
}
