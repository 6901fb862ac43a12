//! TLS for the agent link: rustls on the `ring` provider, TLS 1.3 only (QUIC requires it).
//!
//! The core serves a certificate from PEM files, or in development a self-signed one made at
//! start (its PEM written where agents can pin it; its key stays in memory). Agents trust a
//! pinned certificate file, or the Mozilla roots for a core with a real certificate.

use super::frames::ALPN;
use super::QuicError;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where the core's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTls {
    /// Certificate chain and private key, PEM files (production).
    Files {
        /// The certificate chain.
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
    },
    /// A self-signed certificate made at start for `names`, its PEM written to `write_cert_to`
    /// (development: agents pin that file).
    SelfSigned {
        /// Where the certificate PEM goes.
        write_cert_to: PathBuf,
        /// DNS names and IP addresses the certificate covers.
        names: Vec<String>,
    },
}

/// What an agent trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientTrust {
    /// Exactly the certificates in this PEM file (the core's self-signed one, or a private CA).
    Pinned(PathBuf),
    /// The Mozilla roots (a core with a publicly trusted certificate).
    WebPki,
}

fn tls_error(what: impl std::fmt::Display) -> QuicError {
    QuicError::Tls(what.to_string())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, QuicError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(format!("{}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_error(format!("{}: no certificates in it", path.display())));
    }
    Ok(certs)
}

/// The transport settings both sides use: one stream per agent, keep-alives under the idle
/// timeout so a quiet agent stays connected, a dead peer noticed within the timeout.
fn transport(server: bool) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    t.max_idle_timeout(Some(quinn::VarInt::from_u32(20_000).into()));
    if server {
        // The agent opens its one stream; the core opens none and accepts no others.
        t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1));
        t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    } else {
        t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(0));
        t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    }
    Arc::new(t)
}

/// The quinn server configuration, and the path of the certificate written for agents (for a
/// self-signed certificate).
pub fn server_config(tls: &ServerTls) -> Result<(quinn::ServerConfig, Option<PathBuf>), QuicError> {
    let (certs, key, written) = match tls {
        ServerTls::Files { cert, key } => {
            let certs = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_error(format!("{}: {e}", key.display())))?;
            (certs, key, None)
        }
        ServerTls::SelfSigned { write_cert_to, names } => {
            let key = rcgen::KeyPair::generate().map_err(tls_error)?;
            let cert = rcgen::CertificateParams::new(names.clone()).and_then(|p| p.self_signed(&key)).map_err(tls_error)?;
            if let Some(dir) = write_cert_to.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| tls_error(format!("creating {}: {e}", dir.display())))?;
            }
            std::fs::write(write_cert_to, cert.pem()).map_err(|e| tls_error(format!("writing {}: {e}", write_cert_to.display())))?;
            let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(tls_error)?;
            (vec![CertificateDer::from(cert.der().to_vec())], key, Some(write_cert_to.clone()))
        }
    };
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(tls_error)?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).map_err(tls_error)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport(true));
    Ok((config, written))
}

/// The quinn client configuration for `trust`.
pub fn client_config(trust: &ClientTrust) -> Result<quinn::ClientConfig, QuicError> {
    let roots = match trust {
        ClientTrust::Pinned(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(path)? {
                roots.add(c).map_err(|e| tls_error(format!("{}: {e}", path.display())))?;
            }
            roots
        }
        ClientTrust::WebPki => rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() },
    };
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(tls_error)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport(false));
    Ok(config)
}
