//! The service over gRPC with a tonic client: counting in memory and in Redis, two instances
//! sharing one limit through one Redis, Redis killed or stalled mid-run and back, and the binary's
//! command line, start and stop.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{descriptor, request, Client, Redis, RunningService, OK, OVER};

const LIMITS: &str = "
domain: gw
descriptors:
  - key: api_key
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: path
    value: /login
    descriptors:
      - key: remote_address
        rate_limit: {unit: minute, requests_per_unit: 2, name: login}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_decisions_over_grpc() {
    let service = RunningService::start(LIMITS, None, true);
    let mut client = service.client().await;
    for left in (0..5).rev() {
        let r = client.check("gw", &[("api_key", "a")]).await.unwrap();
        assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, left));
    }
    let over = client.check("gw", &[("api_key", "a")]).await.unwrap();
    assert_eq!((over.overall_code, over.statuses[0].code), (OVER, OVER));
    let headers: Vec<(&str, &str)> =
        over.response_headers_to_add.iter().map(|h| (h.key.as_str(), h.value.as_str())).collect();
    assert_eq!(headers[..2], [("ratelimit-limit", "5"), ("ratelimit-remaining", "0")]);
    let reset: i64 = headers[2].1.parse().unwrap();
    assert!(headers[2].0 == "ratelimit-reset" && (1..=60).contains(&reset), "{headers:?}");

    // Two descriptors: one over its limit makes the answer OVER_LIMIT, each keeps its status.
    let both = request("gw", vec![descriptor(&[("api_key", "a")]), descriptor(&[("api_key", "b")])]);
    let r = client.call(both).await.unwrap();
    assert_eq!(
        (r.overall_code, r.statuses.iter().map(|s| s.code).collect::<Vec<_>>()),
        (OVER, vec![OVER, OK])
    );

    // A nested descriptor, an unknown descriptor and an unknown domain.
    let login = [("path", "/login"), ("remote_address", "10.1.1.1")];
    assert_eq!(
        client.check("gw", &login).await.unwrap().statuses[0].current_limit.as_ref().unwrap().name,
        "login"
    );
    let unknown = client.check("gw", &[("path", "/other")]).await.unwrap();
    assert_eq!((unknown.overall_code, unknown.statuses.len()), (OK, 1));
    assert!(unknown.statuses[0].current_limit.is_none() && unknown.response_headers_to_add.is_empty());
    assert_eq!(client.check("elsewhere", &[("api_key", "a")]).await.unwrap().overall_code, OK);

    let invalid = client.call(request("gw", vec![])).await.unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument, "{invalid:?}");
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_limit_through_redis() {
    let redis = Redis::start();
    let one = RunningService::start(LIMITS, Some(&redis.url()), false);
    let two = RunningService::start(LIMITS, Some(&redis.url()), false);
    let mut a = one.client().await;
    let mut b = two.client().await;

    // Alternating between the instances, the remaining hits go down one by one.
    let mut remaining = Vec::new();
    for i in 0..7 {
        let client = if i % 2 == 0 { &mut a } else { &mut b };
        let r = client.check("gw", &[("api_key", "shared")]).await.unwrap();
        remaining.push((r.overall_code, r.statuses[0].limit_remaining));
    }
    assert_eq!(remaining, [(OK, 4), (OK, 3), (OK, 2), (OK, 1), (OK, 0), (OVER, 0), (OVER, 0)]);

    // 200 calls at once on both instances: exactly the limit is allowed.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..200 {
        let mut client = if i % 2 == 0 { a.clone() } else { b.clone() };
        calls.spawn(async move { client.check("gw", &[("api_key", "burst")]).await.unwrap().overall_code });
    }
    let codes = calls.join_all().await;
    assert_eq!(codes.iter().filter(|c| **c == OK).count(), 5);
    assert_eq!(codes.iter().filter(|c| **c == OVER).count(), 195);
    drop((a, b));
}

async fn unavailable_fast(client: &mut Client, what: &str) {
    let started = Instant::now();
    let error = client.check("gw", &[("api_key", "down")]).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::Unavailable, "{what}: {error:?}");
    // Nothing waits for a Redis that does not answer longer than the store's timeout.
    assert!(started.elapsed() < support::STORE_TIMEOUT * 5, "{what}: {:?}", started.elapsed());
}

async fn recovers(client: &mut Client, what: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.check("gw", &[("api_key", "down")]).await {
            Ok(r) => return r.statuses[0].limit_remaining,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), tonic::Code::Unavailable, "{what}: {e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what}: no recovery in 10 s: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted_errors_fast_and_recovers() {
    let mut redis = Redis::start();
    let service = RunningService::start(LIMITS, Some(&redis.url()), false);
    let mut client = service.client().await;
    assert_eq!(client.check("gw", &[("api_key", "down")]).await.unwrap().statuses[0].limit_remaining, 4);

    redis.stop();
    for _ in 0..5 {
        unavailable_fast(&mut client, "redis killed").await;
    }
    redis.restart();
    // The restarted Redis is empty: the counter starts again.
    assert_eq!(recovers(&mut client, "redis restarted").await, 4);
    assert_eq!(client.check("gw", &[("api_key", "down")]).await.unwrap().statuses[0].limit_remaining, 3);
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_times_out_and_recovers() {
    let redis = Redis::start();
    let service = RunningService::start(LIMITS, Some(&redis.url()), false);
    let mut client = service.client().await;
    assert_eq!(client.check("gw", &[("api_key", "down")]).await.unwrap().statuses[0].limit_remaining, 4);

    redis.pause();
    for _ in 0..3 {
        unavailable_fast(&mut client, "redis stalled").await;
    }
    redis.resume();
    // Nothing was counted while it stalled... except what Redis still had in its socket when it
    // woke up: a call the service gave up on may have been run late, and counted.
    let remaining = recovers(&mut client, "redis resumed").await;
    assert!(remaining <= 3, "{remaining}");
    drop(client);
}

/// Kills the child if the test fails before it stopped it.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gatewasm-ratelimit"))
}

#[test]
fn the_binary_refuses_bad_input_with_exit_code_2() {
    let help = binary().arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--redis <URL>"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "domain: gw\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
    )
    .unwrap();
    let refused = binary().arg("--config").arg(&bad).output().unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("descriptors[0].rate_limit.unit") && stderr.contains("fortnight"), "{stderr}");

    let no_config = binary().output().unwrap();
    assert_eq!(no_config.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_with_redis_and_stops_on_sigterm() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let limits = dir.path().join("limits.yaml");
    std::fs::write(&limits, LIMITS).unwrap();
    let mut child = Reaped(
        binary()
            .args(["--listen", "127.0.0.1:0", "--redis", &redis.url(), "--config"])
            .arg(&limits)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = BufReader::new(child.0.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .strip_prefix("gatewasm-ratelimit: listening on ")
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("first line: {line}"));
    assert!(line.contains(&format!("1 domain(s), counters in Redis at {}", redis.addr)), "{line}");

    let mut client = Client::connect(addr.parse().unwrap()).await;
    assert_eq!(client.check("gw", &[("api_key", "bin")]).await.unwrap().statuses[0].limit_remaining, 4);
    drop(client);

    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe {
        libc::kill(child.0.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = child.0.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(status.success(), "{status:?}: {rest}");
    assert!(rest.contains("stopped"), "{rest}");
}
