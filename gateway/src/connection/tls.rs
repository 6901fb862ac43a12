//! The transport under our WebSocket and HTTP clients: plain TCP for `ws://`/`http://` (the
//! local exchange) or TLS for `wss://`/`https://` (real venues), with rustls on the `ring`
//! provider and the Mozilla roots from `webpki-roots` (no system certificate store needed, so
//! the minimal container image works as is).
//!
//! `SAPPHIRE_EXTRA_CA_FILE` names a PEM file of additional trusted roots — for a TLS-terminating
//! proxy in front of the venue, or for tests against a local server with its own certificate.

use super::ConnectionError;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The environment variable naming extra trusted roots (PEM).
pub const EXTRA_CA_ENV: &str = "SAPPHIRE_EXTRA_CA_FILE";

/// A connected stream, TLS or not.
#[derive(Debug)]
pub enum Transport {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Where to connect: split from a `ws://`, `wss://`, `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address (the TLS server name).
    pub host: String,
    /// Port (default 80, or 443 with TLS).
    pub port: u16,
    /// TLS or not.
    pub tls: bool,
    /// Path and query, starting with `/`.
    pub target: String,
}

impl Endpoint {
    /// Splits `url` for the given plain and TLS schemes (`("ws", "wss")` or `("http", "https")`).
    pub fn parse(url: &str, schemes: (&str, &str)) -> Result<Self, ConnectionError> {
        let bad = |reason| ConnectionError::BadUrl { url: url.to_string(), reason };
        let (scheme, rest) = url.split_once("://").ok_or(bad("no scheme"))?;
        let tls = if scheme.eq_ignore_ascii_case(schemes.1) {
            true
        } else if scheme.eq_ignore_ascii_case(schemes.0) {
            false
        } else {
            return Err(bad(if schemes.0 == "ws" { "not ws:// or wss://" } else { "not http:// or https://" }));
        };
        let (authority, target) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'?' => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse::<u16>().map_err(|_| bad("bad port"))?),
            _ => (authority, if tls { 443 } else { 80 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Self { host: host.to_string(), port, tls, target })
    }

    /// `host:port` (for Host headers; IPv6 hosts bracketed).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();

/// The client TLS configuration: Mozilla's roots, plus `SAPPHIRE_EXTRA_CA_FILE` when set.
pub fn client_config() -> Result<Arc<rustls::ClientConfig>, ConnectionError> {
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
            if let Ok(path) = std::env::var(EXTRA_CA_ENV) {
                use rustls_pki_types::pem::PemObject;
                let certs = rustls_pki_types::CertificateDer::pem_file_iter(&path)
                    .map_err(|e| format!("{EXTRA_CA_ENV}={path}: {e}"))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("{EXTRA_CA_ENV}={path}: {e}"))?;
                if certs.is_empty() {
                    return Err(format!("{EXTRA_CA_ENV}={path}: no certificates in it"));
                }
                for c in certs {
                    roots.add(c).map_err(|e| format!("{EXTRA_CA_ENV}={path}: {e}"))?;
                }
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
        .map_err(|reason| ConnectionError::Tls { url: String::new(), reason })
}

/// Connects to `endpoint` (TCP with `TCP_NODELAY`, then the TLS handshake when asked), all
/// within `timeout`.
pub async fn connect(endpoint: &Endpoint, url: &str, timeout: Duration) -> Result<Transport, ConnectionError> {
    let io = |e: io::Error| ConnectionError::Io { url: url.to_string(), reason: e.to_string() };
    let attempt = async {
        let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await.map_err(io)?;
        tcp.set_nodelay(true).map_err(io)?;
        if !endpoint.tls {
            return Ok(Transport::Plain(tcp));
        }
        let config = client_config().map_err(|e| match e {
            ConnectionError::Tls { reason, .. } => ConnectionError::Tls { url: url.to_string(), reason },
            other => other,
        })?;
        let name = rustls_pki_types::ServerName::try_from(endpoint.host.clone())
            .map_err(|_| ConnectionError::BadUrl { url: url.to_string(), reason: "not a valid TLS server name" })?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| ConnectionError::Tls { url: url.to_string(), reason: e.to_string() })?;
        Ok(Transport::Tls(Box::new(tls)))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(ConnectionError::Timeout("connect")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("wss://stream.binance.com:9443/stream?streams=a", ("ws", "wss")).unwrap();
        assert_eq!((e.host.as_str(), e.port, e.tls, e.target.as_str()), ("stream.binance.com", 9443, true, "/stream?streams=a"));
        let e = Endpoint::parse("https://api.binance.com/api/v3/depth?symbol=X", ("http", "https")).unwrap();
        assert_eq!((e.port, e.tls, e.authority()), (443, true, "api.binance.com:443".to_string()));
        let e = Endpoint::parse("ws://127.0.0.1:9000", ("ws", "wss")).unwrap();
        assert_eq!((e.port, e.tls, e.target.as_str()), (9000, false, "/"));
        let e = Endpoint::parse("http://[::1]:8080/x", ("http", "https")).unwrap();
        assert_eq!((e.host.as_str(), e.port, e.authority()), ("::1", 8080, "[::1]:8080".to_string()));
        let e = Endpoint::parse("ws://h?x=1", ("ws", "wss")).unwrap();
        assert_eq!((e.port, e.target.as_str()), (80, "/?x=1"));
        for bad in ["ftp://x", "wss://", "ws://h:99999", "nonsense", "wss://user:pw@h"] {
            assert!(Endpoint::parse(bad, ("ws", "wss")).is_err(), "{bad}");
        }
    }
}
