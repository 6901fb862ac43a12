//! The real feed client over TLS: `wss://` streams and an `https://` depth snapshot from the
//! local exchange behind a TLS-terminating proxy with its own certificate (made here with
//! rcgen), trusted through `SAPPHIRE_EXTRA_CA_FILE` — the path real venues take, minus the
//! internet. And the failures: an untrusted certificate and a wrong name are refused.

use sapphire_core::event::Event;
use sapphire_core::instrument::InstrumentRegistry;
use sapphire_core::ring::{ring, Poll};
use sapphire_gateway::binance::{BinanceFeed, BinanceMarket};
use sapphire_gateway::connection::tls::EXTRA_CA_ENV;
use sapphire_gateway::connection::{http, BinanceConnection, BinanceConnectionConfig, ConnectionError, Shutdown};
use sapphire_gateway::local_exchange::tape::Tape;
use sapphire_gateway::local_exchange::{LocalExchange, LocalExchangeConfig, Pace};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/binance_spot_btcusdt.txt");

/// A self-signed certificate for `names`, as (PEM certificate, rustls server config).
fn certificate(names: &[&str]) -> (String, Arc<rustls::ServerConfig>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap().self_signed(&key).unwrap();
    let der = rustls_pki_types::CertificateDer::from(cert.der().to_vec());
    let key_der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der], key_der)
        .unwrap();
    (cert.pem(), Arc::new(config))
}

/// Terminates TLS on a free port and forwards the plain bytes to `upstream`.
async fn tls_proxy(config: Arc<rustls::ServerConfig>, upstream: SocketAddr) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                if let Ok(mut plain) = TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_runs_over_wss_and_https_and_refuses_untrusted_certificates() {
    let (trusted_pem, trusted) = certificate(&["localhost"]);
    let (_, untrusted) = certificate(&["localhost"]);
    let ca = std::env::temp_dir().join(format!("sapphire-tls-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, &trusted_pem).unwrap();
    // Set before the first TLS connection builds the (process-wide) client configuration.
    std::env::set_var(EXTRA_CA_ENV, &ca);

    let exchange =
        LocalExchange::start(LocalExchangeConfig::new(BinanceMarket::Spot, Pace::Fast), Tape::load(&[FIXTURE]).unwrap()).await.unwrap();
    let good = tls_proxy(trusted, exchange.addr()).await;
    let bad = tls_proxy(untrusted, exchange.addr()).await;

    // https: the REST side.
    let info = http::get(&format!("https://localhost:{good}/api/v3/exchangeInfo")).await.unwrap();
    assert!(String::from_utf8_lossy(&info).contains("\"BTCUSDT\""));
    let err = http::get(&format!("https://localhost:{bad}/api/v3/exchangeInfo")).await.unwrap_err();
    assert!(
        matches!(&err, ConnectionError::Tls { reason, .. } if reason.contains("UnknownIssuer") || reason.contains("invalid peer certificate")),
        "{err}"
    );
    // The certificate names localhost, not 127.0.0.1.
    let err = http::get(&format!("https://127.0.0.1:{good}/api/v3/exchangeInfo")).await.unwrap_err();
    assert!(matches!(&err, ConnectionError::Tls { .. }), "{err}");

    // wss + https: the whole feed client, book synced from the TLS snapshot.
    let mut config = BinanceConnectionConfig::new(
        format!("wss://localhost:{good}"),
        format!("https://localhost:{good}"),
        BinanceMarket::Spot,
        &["BTCUSDT"],
    );
    config.connect_timeout = Duration::from_secs(5);
    let connection = BinanceConnection::new(config, BinanceFeed::new(BinanceMarket::Spot, &InstrumentRegistry::new(), "binance"));
    let (mut producer, mut consumers) = ring::<Event>(1_024, 1);
    let (stop, stop_rx) = broadcast::channel(1);
    let client = tokio::spawn(async move { connection.run(&mut producer, Shutdown::new(stop_rx)).await });
    let (mut quotes, mut trades) = (0, 0);
    let mut book = sapphire_core::book::OrderBook::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // The fixture's book ends at update id 1060 (see tests/local_exchange.rs).
    while (quotes < 30 || trades < 10 || !book.in_sync() || book.last_update_id() != 1060) && tokio::time::Instant::now() < deadline {
        while let Poll::Handled(_) = consumers[0].poll(1_024, |e, _, _| match e {
            Event::Quote(_) => quotes += 1,
            Event::Trade(_) => trades += 1,
            Event::BookDelta(d) => {
                book.apply_delta(d);
            }
            _ => {}
        }) {}
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.send(()).unwrap();
    let outcome = client.await.unwrap();
    assert_eq!(outcome.result, Ok(()));
    let c = outcome.feed.counters;
    assert_eq!((quotes, trades), (30, 10), "every bookTicker and trade arrived over wss");
    assert!(book.in_sync() && book.last_update_id() == 1060, "the book synced from the https snapshot and the wss diffs");
    assert_eq!((c.snapshots, c.gaps, c.skipped(), c.connect_failures), (1, 0, 0, 0), "{c:?}");
    exchange.shutdown().await;
    let _ = std::fs::remove_file(&ca);
}
