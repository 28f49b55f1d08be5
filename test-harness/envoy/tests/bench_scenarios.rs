//! Every shipped benchmark scenario parses and each runnable row does its work in a real Envoy
//! (the same preflight `gatewasm-bench` runs before timing).

#![allow(clippy::unwrap_used, clippy::panic)]

use gatewasm_envoy::bench::Scenario;

#[test]
fn shipped_scenarios_pass_preflight() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let scenario = Scenario::load(&path).unwrap();
        let (rows, skipped) = scenario.rows().unwrap_or_else(|e| panic!("{e:#}"));
        for skip in &skipped {
            eprintln!("{}: row {} not runnable: {}", scenario.name, skip.label, skip.reason);
        }
        for row in &rows {
            scenario.preflight(row).unwrap_or_else(|e| panic!("{}: {e:#}", scenario.name));
            count += 1;
        }
    }
    assert!(count >= 4, "expected at least bare, floor, native and lua rows");
}

#[test]
fn preflight_rejects_a_row_that_does_not_do_the_work() {
    let scenario: Scenario = serde_json::from_value(serde_json::json!({
        "name": "t",
        "path": "/x",
        "expect": { "request_headers": { "x-bench": "1" } },
        "rows": [{ "key": "lazy", "label": "lazy Lua", "filters": [{
            "name": "envoy.filters.http.lua",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": { "inline_string": "function envoy_on_request(h) end" }
            }
        }] }]
    }))
    .unwrap();
    let (rows, _) = scenario.rows().unwrap();
    let lazy = rows.iter().find(|r| r.key == "lazy").unwrap();
    let err = scenario.preflight(lazy).unwrap_err();
    assert!(format!("{err:#}").contains("did not receive x-bench"), "{err:#}");
}

#[test]
fn preflight_rejects_a_row_that_does_not_answer_as_expected() {
    let scenario: Scenario = serde_json::from_value(serde_json::json!({
        "name": "t",
        "path": "/x",
        "expect": { "status": 301, "response_headers": { "location": "https://example.com/x" } },
        "rows": [
            { "key": "redirect", "label": "route redirect", "filters": [],
              "route_patch": { "route": null, "redirect": { "https_redirect": true, "host_redirect": "example.com" } } },
            { "key": "lazy", "label": "no redirect", "filters": [] }
        ]
    }))
    .unwrap();
    let (rows, _) = scenario.rows().unwrap();
    let row = |key: &str| rows.iter().find(|r| r.key == key).unwrap();
    scenario.preflight(row("redirect")).unwrap_or_else(|e| panic!("{e:#}"));
    let err = scenario.preflight(row("lazy")).unwrap_err();
    assert!(format!("{err:#}").contains("row no redirect: status 200"), "{err:#}");
    // Bare Envoy answers 200 whatever the scenario's rows answer.
    assert_eq!(scenario.expected_status(row("bare")), 200);
    assert_eq!(scenario.expected_status(row("redirect")), 301);
}
