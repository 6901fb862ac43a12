//! `sapphire venue …`: venue tools. `venue sign` prints the signature a request would carry,
//! to check our signing against a venue's documentation or another client. The secret is
//! read from an environment variable named on the command line, never from the command line
//! itself (which shows in `ps` and shell history).

use sapphire_gateway::venue::sign::{binance_signature, bybit_signature};
use sapphire_gateway::venue::Venue;

/// Venue tools.
#[derive(Debug, clap::Subcommand)]
pub enum VenueCommand {
    /// Print the HMAC-SHA256 signature of a request payload. Binance: of the payload (the
    /// exact query string or form body, with timestamp and recvWindow). Bybit v5: of
    /// timestamp + api key + recv window + payload (the query string of a GET, the JSON body
    /// of a POST).
    Sign(SignArgs),
}

/// `venue sign` arguments.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// binance or bybit.
    #[arg(long)]
    pub venue: String,
    /// Name of the environment variable holding the secret.
    #[arg(long)]
    pub secret_env: String,
    /// The payload to sign, exactly as sent.
    #[arg(long)]
    pub payload: String,
    /// Bybit: X-BAPI-TIMESTAMP, ms.
    #[arg(long)]
    pub timestamp: Option<u64>,
    /// Bybit: the API key.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Bybit: X-BAPI-RECV-WINDOW, ms.
    #[arg(long)]
    pub recv_window: Option<u64>,
}

/// Runs a venue command, printing to stdout.
pub fn run(cmd: VenueCommand) -> anyhow::Result<()> {
    match cmd {
        VenueCommand::Sign(args) => {
            outln!("{}", sign(&args, &|name| std::env::var(name).ok())?);
            Ok(())
        }
    }
}

/// The signature `args` describe, the secret from `env`.
pub fn sign(args: &SignArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<String> {
    let venue = Venue::parse(&args.venue).ok_or_else(|| crate::config::refuse("--venue", format!("{:?}: binance or bybit", args.venue)))?;
    let secret = env(&args.secret_env)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| crate::config::refuse("--secret-env", format!("{} is not set (or empty) in the environment", args.secret_env)))?;
    match venue {
        Venue::Binance => {
            for (flag, given) in [
                ("--timestamp", args.timestamp.is_some()),
                ("--api-key", args.api_key.is_some()),
                ("--recv-window", args.recv_window.is_some()),
            ] {
                if given {
                    return Err(crate::config::refuse(
                        flag,
                        "binance signs the payload alone: put timestamp and recvWindow inside --payload",
                    ));
                }
            }
            Ok(binance_signature(&secret, &args.payload))
        }
        Venue::Bybit => {
            let timestamp = args.timestamp.ok_or_else(|| crate::config::refuse("--timestamp", "bybit needs --timestamp (ms)"))?;
            let api_key = args.api_key.as_deref().ok_or_else(|| crate::config::refuse("--api-key", "bybit needs --api-key"))?;
            let recv_window = args.recv_window.ok_or_else(|| crate::config::refuse("--recv-window", "bybit needs --recv-window (ms)"))?;
            Ok(bybit_signature(&secret, timestamp, api_key, recv_window, &args.payload))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(venue: &str, payload: &str) -> SignArgs {
        SignArgs { venue: venue.into(), secret_env: "S".into(), payload: payload.into(), timestamp: None, api_key: None, recv_window: None }
    }

    #[test]
    fn signs_binances_documented_example() {
        let env = |n: &str| (n == "S").then(|| "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j".to_string());
        let a = args(
            "binance",
            "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559",
        );
        assert_eq!(sign(&a, &env).unwrap(), "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71");
    }

    #[test]
    fn bybit_needs_its_three_fields_and_binance_refuses_them() {
        let env = |_: &str| Some("YYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYY".to_string());
        let mut a = args("bybit", "category=linear&symbol=BTCUSDT&orderLinkId=sapphire-1");
        assert!(sign(&a, &env).unwrap_err().to_string().contains("--timestamp"));
        a.timestamp = Some(1_658_384_314_791);
        a.api_key = Some("XXXXXXXXXX".into());
        a.recv_window = Some(5_000);
        // Python: hmac.new(b"Y"*36, b"1658384314791XXXXXXXXXX5000category=linear&symbol=BTCUSDT&orderLinkId=sapphire-1", sha256).hexdigest()
        assert_eq!(sign(&a, &env).unwrap(), "bfb8665576516380f15a726b3f1fa90a8841f87788cd8394739dd183732a3768");
        let mut b = args("binance", "x=1");
        b.timestamp = Some(1);
        assert!(sign(&b, &env).is_err());
        assert!(sign(&args("kraken", "x"), &env).is_err());
        assert!(sign(&args("binance", "x"), &|_| None).unwrap_err().to_string().contains("S is not set"));
    }
}
