//! `gatewasm-kafka-bridge`: the Kafka REST produce API (v2, JSON embedded format) in front of
//! Kafka, for the `kafka-log` filter and any other client of that API.
//!
//! - `POST /topics/{topic}` with `application/vnd.kafka.json.v2+json` and
//!   `{"records":[{"key":...,"value":...}]}` answers only after Kafka acknowledged every record
//!   (or with a per-record error, `error_code` 2 when a retry may succeed), so a client that
//!   retries what failed loses nothing;
//! - a request sent again with the same `Idempotency-Key` joins the produce still in flight or
//!   gets the first answer, so a client's retry after a timeout stores nothing twice;
//! - a bounded queue of records accepted but not yet acknowledged: past it, `503` at once;
//! - `GET /healthz`;
//! - SIGTERM/SIGINT: refuse new batches (`503`), wait for the ones in flight, flush, exit;
//! - no `--brokers`: JSON lines to `--output` (a file, or stdout), one per record.
//!
//! See `README.md` for every option.

mod remember;
mod server;
mod sink;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use gatewasm_kafka_bridge::api;

use crate::sink::{KafkaSettings, Sink};

const USAGE: &str = "\
gatewasm-kafka-bridge [options]

  --listen ADDR              address to serve on (default 127.0.0.1:8082; port 0 picks one)
  --brokers LIST             Kafka bootstrap servers (host:port,...); without it, records are
                             written as JSON lines to --output
  --output PATH              with no brokers: file to append JSON lines to (default: stdout)
  --acks all|1|0             producer acks (default all)
  --compression TYPE         none, gzip, snappy or lz4 (default none)
  --linger-ms N              producer linger.ms (default 5)
  --batch-bytes N            producer batch.size in bytes (default 1000000)
  --delivery-timeout-ms N    how long a record may wait for Kafka before it is reported failed
                             (retriable) to the client (default 0: no limit; a record reported
                             failed after it was sent may be stored all the same)
  --stop-timeout-ms N        on SIGTERM, how long to wait for the produces in flight, then for
                             the flush (default 10000)
  --remember-records N       answers kept for requests sent again with the same
                             Idempotency-Key, in records (default 1000000)
  --max-queued-records N     records accepted and not yet acknowledged; beyond: 503 (default 100000)
  --max-body-bytes N         largest request body (default 10485760)
  --kafka KEY=VALUE          any other librdkafka producer property (repeatable)
";

/// Everything the command line sets.
#[derive(Debug, Clone)]
pub struct Options {
    listen: SocketAddr,
    brokers: Option<String>,
    output: Option<PathBuf>,
    acks: String,
    compression: String,
    linger_ms: u64,
    batch_bytes: u64,
    delivery_timeout: Option<Duration>,
    stop_timeout: Duration,
    remember_records: usize,
    max_queued: usize,
    max_body: usize,
    extra: Vec<(String, String)>,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> anyhow::Result<Option<Options>> {
    let mut o = Options {
        listen: SocketAddr::from(([127, 0, 0, 1], 8082)),
        brokers: None,
        output: None,
        acks: "all".into(),
        compression: "none".into(),
        linger_ms: 5,
        batch_bytes: 1_000_000,
        delivery_timeout: None,
        stop_timeout: Duration::from_secs(10),
        remember_records: 1_000_000,
        max_queued: 100_000,
        max_body: 10 << 20,
        extra: Vec::new(),
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => o.listen = value()?.parse().context("--listen")?,
            "--brokers" => o.brokers = Some(value()?).filter(|b| !b.is_empty()),
            "--output" => o.output = Some(PathBuf::from(value()?)).filter(|p| p.as_os_str() != "-"),
            "--acks" => o.acks = value()?,
            "--compression" => o.compression = value()?,
            "--linger-ms" => o.linger_ms = value()?.parse().context("--linger-ms")?,
            "--batch-bytes" => o.batch_bytes = value()?.parse().context("--batch-bytes")?,
            "--delivery-timeout-ms" => {
                let ms: u64 = value()?.parse().context("--delivery-timeout-ms")?;
                o.delivery_timeout = Some(Duration::from_millis(ms)).filter(|t| !t.is_zero());
            }
            "--stop-timeout-ms" => {
                o.stop_timeout = Duration::from_millis(value()?.parse().context("--stop-timeout-ms")?)
            }
            "--remember-records" => o.remember_records = value()?.parse().context("--remember-records")?,
            "--max-queued-records" => o.max_queued = value()?.parse().context("--max-queued-records")?,
            "--max-body-bytes" => o.max_body = value()?.parse().context("--max-body-bytes")?,
            "--kafka" => {
                let kv = value()?;
                let (k, v) =
                    kv.split_once('=').with_context(|| format!("--kafka {kv}: expected KEY=VALUE"))?;
                o.extra.push((k.to_string(), v.to_string()));
            }
            "-h" | "--help" => return Ok(None),
            other => bail!("unknown argument {other}\n\n{USAGE}"),
        }
    }
    if !matches!(o.acks.as_str(), "all" | "-1" | "1" | "0") {
        bail!("--acks {}: expected all, 1 or 0", o.acks);
    }
    if !matches!(o.compression.as_str(), "none" | "gzip" | "snappy" | "lz4") {
        bail!("--compression {}: expected none, gzip, snappy or lz4", o.compression);
    }
    if o.max_queued == 0 || o.max_body == 0 {
        bail!("--max-queued-records and --max-body-bytes must be at least 1");
    }
    if o.brokers.is_some() && o.output.is_some() {
        bail!("--output is for running without --brokers");
    }
    Ok(Some(o))
}

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("gatewasm-kafka-bridge: {err:#}");
            return ExitCode::from(2);
        }
    };
    match run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gatewasm-kafka-bridge: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(o: Options) -> anyhow::Result<()> {
    let sink = match &o.brokers {
        Some(brokers) => Sink::kafka(&KafkaSettings {
            brokers: brokers.clone(),
            acks: o.acks.clone(),
            compression: o.compression.clone(),
            linger_ms: o.linger_ms,
            batch_bytes: o.batch_bytes,
            delivery_timeout: o.delivery_timeout,
            extra: o.extra.clone(),
        })?,
        None => Sink::lines(o.output.clone())?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let limits = server::Limits {
        max_queued: o.max_queued,
        max_body: o.max_body,
        remember_records: o.remember_records,
        grace: o.stop_timeout,
    };
    runtime.block_on(server::serve(o.listen, sink, limits))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> anyhow::Result<Option<Options>> {
        parse_args(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_and_options() {
        let o = args(&[]).unwrap().unwrap();
        assert_eq!(o.acks, "all");
        assert!(o.brokers.is_none() && o.output.is_none());
        assert_eq!(o.delivery_timeout, None, "no delivery timeout unless asked for");
        assert_eq!(o.remember_records, 1_000_000);
        let o =
            args(&["--delivery-timeout-ms", "2000", "--stop-timeout-ms", "500", "--remember-records", "0"])
                .unwrap()
                .unwrap();
        assert_eq!(o.delivery_timeout, Some(Duration::from_secs(2)));
        assert_eq!(o.stop_timeout, Duration::from_millis(500));
        assert_eq!(o.remember_records, 0);
        assert_eq!(args(&["--delivery-timeout-ms", "0"]).unwrap().unwrap().delivery_timeout, None);
        let o = args(&["--brokers", "127.0.0.1:9092", "--compression", "lz4", "--kafka", "client.id=gw"])
            .unwrap()
            .unwrap();
        assert_eq!(o.brokers.as_deref(), Some("127.0.0.1:9092"));
        assert_eq!(o.extra, [("client.id".to_string(), "gw".to_string())]);
        assert_eq!(args(&["--output", "-"]).unwrap().unwrap().output, None);
        assert!(args(&["--help"]).unwrap().is_none());
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(args(&["--acks", "some"]).is_err());
        assert!(args(&["--compression", "brotli"]).is_err());
        assert!(args(&["--brokers", "b:1", "--output", "x"]).is_err());
        assert!(args(&["--kafka", "novalue"]).is_err());
        assert!(args(&["--max-queued-records", "0"]).is_err());
        assert!(args(&["--nope"]).is_err());
    }
}
