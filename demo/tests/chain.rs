//! The demo's checks (`gatewasm_demo::check`, the ones `gatewasm-demo --check` runs against
//! Envoy) against the emulator's chain: the same seven modules with the same configurations,
//! the echo upstream, the auth service and the Kafka bridge answering as their servers do (the
//! same answer functions), on a virtual clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use gatewasm_demo::{check, filters, DemoGateway, AUTH_CLUSTER, BRIDGE_CLUSTER};
use gatewasm_emulator::gateway::{self, Gateway, Source, UpstreamRequest};
use gatewasm_emulator::{for_module, load_modules, wasm_path, LogLevel};
use gatewasm_envoy::auth_service::{judge, Seen};
use gatewasm_envoy::{echo_reply, Received, Reply, Request, Response};

use gatewasm_kafka_bridge::api as bridge_api;

fn reply(r: Reply) -> gateway::Reply {
    gateway::Reply { status: r.status, headers: r.headers, body: r.body, latency: r.delay }
}

/// What the bridge answers, and the record values it would write to its file.
fn bridge(req: &UpstreamRequest, log: &RefCell<Vec<serde_json::Value>>) -> gateway::Reply {
    let refused = |e: bridge_api::ApiError| gateway::Reply::status(e.status).body(e.body());
    match bridge_api::topic_of(&req.path) {
        Some(Ok(_)) => {}
        Some(Err(e)) => return refused(e),
        None => return gateway::Reply::status(404),
    }
    let records = match bridge_api::parse_records(&req.body) {
        Ok(records) => records,
        Err(e) => return refused(e),
    };
    let mut log = log.borrow_mut();
    let mut outcomes = Vec::new();
    for r in records {
        let value = r.value.as_deref().and_then(|v| serde_json::from_slice(v).ok()).unwrap_or_default();
        log.push(value);
        outcomes.push(bridge_api::Outcome::Stored { partition: 0, offset: log.len() as i64 - 1 });
    }
    gateway::Reply::status(200)
        .header("content-type", bridge_api::RESPONSE_TYPE)
        .body(bridge_api::response_body(&outcomes))
}

struct ChainDemo {
    gw: Gateway,
    records: Rc<RefCell<Vec<serde_json::Value>>>,
}

impl ChainDemo {
    fn start() -> ChainDemo {
        let records = Rc::new(RefCell::new(Vec::new()));
        let log = Rc::clone(&records);
        let mut builder = Gateway::builder()
            .route(|req: &UpstreamRequest| {
                let received = Received {
                    method: req.method.clone(),
                    path: req.path.clone(),
                    headers: req.headers.clone(),
                    body: req.body.clone(),
                };
                reply(echo_reply(&received))
            })
            .cluster(AUTH_CLUSTER, |req: &UpstreamRequest| {
                let seen = Seen {
                    method: req.method.clone(),
                    path: req.path.clone(),
                    headers: req.headers.clone(),
                    body: req.body.clone(),
                };
                reply(judge(&seen))
            })
            .cluster(BRIDGE_CLUSTER, move |req: &UpstreamRequest| bridge(req, &log));
        let filters = filters();
        // The seven modules compile at once (each on a core of its own), then load from the cache.
        let paths: Vec<_> =
            filters.iter().map(|f| wasm_path(f.package).unwrap_or_else(|e| panic!("{e}"))).collect();
        load_modules(&paths).unwrap_or_else(|e| panic!("{e}"));
        for f in filters {
            let module = for_module(f.package, f.config.to_string()).unwrap_or_else(|e| panic!("{e}"));
            builder = builder.filter(f.name, module.log_level(LogLevel::Warn));
        }
        ChainDemo { gw: builder.build().unwrap(), records }
    }
}

impl DemoGateway for ChainDemo {
    fn send(&mut self, request: &Request) -> anyhow::Result<Response> {
        let mut r = gateway::Request::new(&request.method, &request.path).body(request.body.clone());
        r.headers = request.headers.clone();
        let got = self.gw.send(&r)?;
        Ok(Response { status: got.status, headers: got.headers, body: got.body })
    }

    fn counter(&mut self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<Option<u64>> {
        // The filters name labelled series `name;tag=value;...`; Envoy's stats_tags make the
        // tags Prometheus labels.
        let mut found = None;
        for (full, value) in self.gw.metrics() {
            let mut parts = full.split(';');
            if parts.next() != Some(name) {
                continue;
            }
            let tags: Vec<(String, String)> = parts
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            if gatewasm_demo::same_labels(&tags, labels) {
                *found.get_or_insert(0) += value;
            }
        }
        Ok(found)
    }

    fn access_log(&mut self) -> anyhow::Result<Vec<serde_json::Value>> {
        Ok(self.records.borrow().clone())
    }

    fn wait(&mut self, time: Duration) -> anyhow::Result<()> {
        Ok(self.gw.advance(time)?)
    }
}

#[test]
fn the_chain_answers_the_demo_as_envoy_does() {
    let mut demo = ChainDemo::start();
    let started = std::time::Instant::now();
    check(&mut demo).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("the demo's checks on the emulator's chain: {:?}", started.elapsed());
}

#[test]
fn the_chain_says_which_filter_answered() {
    let mut demo = ChainDemo::start();
    let mut answered = |path: &str| demo.gw.send(&gateway::Request::get(path)).unwrap().source;
    let by = |source: &Source| match source {
        Source::LocalReply { filter, .. } => filter.clone(),
        other => format!("{other:?}"),
    };
    assert_eq!(by(&answered("/admin/settings")), "hello");
    assert_eq!(by(&answered("/jwt/profile")), "jwt_auth");
    // The auth service's 401, passed on by ext-auth as its local reply.
    assert_eq!(by(&answered("/nodebackend/")), "ext_auth");
    assert_eq!(answered("/orders/1"), Source::Upstream);
}
