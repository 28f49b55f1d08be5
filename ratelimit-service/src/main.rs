//! The `gatewasm-ratelimit` binary: command line, start-up checks, signals. See `README.md`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use gatewasm_ratelimit::{serve, Limiter, Limits, Service, Store};

/// Envoy's rate limit service (v3, gRPC) with the reference service's limits file; counters in
/// memory, or in Redis to share limits between service instances.
#[derive(Debug, Parser)]
#[command(name = "gatewasm-ratelimit", version, about)]
struct Options {
    /// Address to serve gRPC on (0.0.0.0:8081 in a pod; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Limits file (YAML or JSON, one domain each, Envoy's reference service format); repeat for
    /// more domains.
    #[arg(long = "config", value_name = "FILE", required = true)]
    configs: Vec<PathBuf>,
    /// Redis to keep the counters in (redis://[user:password@]host:port[/db]); without it,
    /// counters are in memory and per instance.
    #[arg(long, value_name = "URL", value_parser = redis_url)]
    redis: Option<String>,
    /// Longest wait for Redis per decision (and per connection attempt); past it the call fails
    /// with UNAVAILABLE.
    #[arg(long, value_name = "MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    redis_timeout_ms: u64,
    /// In-memory counters kept at most (least used dropped first); without --redis only.
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_counters: u64,
    /// Add ratelimit-limit, ratelimit-remaining and ratelimit-reset response headers for the
    /// tightest limit of each request, as the reference service's LIMIT_RESPONSE_HEADERS_ENABLED.
    #[arg(long)]
    response_headers: bool,
    /// On SIGTERM/SIGINT, the longest wait for calls in flight.
    #[arg(long, value_name = "MS", default_value_t = 5_000)]
    stop_timeout_ms: u64,
}

/// Refuses a Redis URL the client cannot use (another scheme, `rediss://`: no TLS is built in)
/// on the command line, with clap's exit code 2, rather than at the first decision.
fn redis_url(url: &str) -> Result<String, String> {
    redis::Client::open(url).map(|_| url.to_string()).map_err(|e| e.to_string())
}

/// Where a Redis URL points (`host:port`, or the socket path), for messages: the URL may hold a
/// password, which is never printed.
fn redis_addr(url: &str) -> String {
    redis::Client::open(url)
        .map(|client| client.get_connection_info().addr().to_string())
        .unwrap_or_else(|_| "(unusable URL)".to_string())
}

fn main() -> ExitCode {
    // clap exits 0 for --help/--version and 2 for a bad command line.
    let options = Options::parse();
    let limits = match Limits::from_files(&options.configs) {
        Ok(limits) => limits,
        Err(e) => {
            eprintln!("gatewasm-ratelimit: {e}");
            return ExitCode::from(2);
        }
    };
    match run(options, limits) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatewasm-ratelimit: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: Options, limits: Limits) -> anyhow::Result<()> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async {
        // Before anything is served: a SIGTERM right after the "listening" line must stop the
        // service cleanly, not kill it with the default action.
        let stop_signal = StopSignal::install()?;
        let timeout = Duration::from_millis(options.redis_timeout_ms);
        let store = match &options.redis {
            Some(url) => {
                Store::redis(url, timeout).await.with_context(|| format!("--redis {}", redis_addr(url)))?
            }
            None => Store::memory(options.max_counters).context("in-memory counters")?,
        };
        let where_counters = match &options.redis {
            Some(url) => {
                if let Err(e) = store.ping().await {
                    // Served all the same: decisions fail with UNAVAILABLE until Redis answers.
                    eprintln!("gatewasm-ratelimit: warning: Redis at {}: {e}", redis_addr(url));
                }
                format!("counters in Redis at {}", redis_addr(url))
            }
            None => "counters in memory".to_string(),
        };
        let domains = limits.domain_count();
        let limiter = Limiter::new(limits, store, options.response_headers);
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .with_context(|| format!("--listen {}", options.listen))?;
        let addr = listener.local_addr().context("listening address")?;
        eprintln!("gatewasm-ratelimit: listening on {addr}, {domains} domain(s), {where_counters}");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Service::new(limiter), async {
            let _ = stop_rx.await;
        }));
        stop_signal.wait().await;
        eprintln!("gatewasm-ratelimit: stopping");
        let _ = stop_tx.send(());
        match tokio::time::timeout(Duration::from_millis(options.stop_timeout_ms), server).await {
            Ok(joined) => joined.context("server task")?.context("serving")?,
            Err(_) => eprintln!("gatewasm-ratelimit: calls still in flight after --stop-timeout-ms"),
        }
        eprintln!("gatewasm-ratelimit: stopped");
        Ok(())
    })
}

/// SIGTERM and SIGINT, caught from start-up on.
struct StopSignal {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignal {
    fn install() -> anyhow::Result<StopSignal> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignal {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        Options::try_parse_from(std::iter::once("gatewasm-ratelimit").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_and_options() {
        let o = parse(&["--config", "a.yaml"]).unwrap();
        assert_eq!(o.listen, "127.0.0.1:8081".parse().unwrap());
        assert_eq!((o.redis, o.redis_timeout_ms, o.response_headers), (None, 100, false));
        let o = parse(&[
            "--config",
            "a.yaml",
            "--config",
            "b.yaml",
            "--redis",
            "redis://127.0.0.1:6379",
            "--listen",
            "127.0.0.1:0",
            "--redis-timeout-ms",
            "50",
            "--response-headers",
        ])
        .unwrap();
        assert_eq!(o.configs, [PathBuf::from("a.yaml"), PathBuf::from("b.yaml")]);
        assert_eq!(o.redis.as_deref(), Some("redis://127.0.0.1:6379"));
        assert_eq!((o.redis_timeout_ms, o.response_headers), (50, true));
        let o = parse(&["--config", "a.yaml", "--redis", "redis+unix:///run/redis.sock"]).unwrap();
        assert_eq!(o.redis.as_deref(), Some("redis+unix:///run/redis.sock"));
        assert_eq!(redis_addr("redis://user:s3cret@10.0.0.7:6380/2"), "10.0.0.7:6380");
    }

    #[test]
    fn bad_command_lines_are_refused() {
        for bad in [
            &[][..],
            &["--config", "a.yaml", "--listen", "nowhere"],
            &["--config", "a.yaml", "--redis-timeout-ms", "0"],
            &["--config", "a.yaml", "--max-counters", "0"],
            &["--config", "a.yaml", "--colour"],
            &["--config", "a.yaml", "--redis", "http://127.0.0.1:6379"],
            &["--config", "a.yaml", "--redis", "rediss://127.0.0.1:6379"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
        assert_eq!(parse(&["--help"]).unwrap_err().exit_code(), 0);
    }
}
