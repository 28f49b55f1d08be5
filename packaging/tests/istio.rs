//! The Istio manifests of `istio-envoyfilters/`, proven without a cluster: every manifest against
//! Istio's CRD schemas (the copy in `istio-envoyfilters/schemas/`), the conventions every filter
//! folder follows, each `EnvoyFilter`'s Wasm filter and the Envoy config each `WasmPlugin` and
//! `TrafficExtension` turns into run in a real Envoy with the module fetched over HTTP and checked by sha256, and every
//! Envoy config file passing `envoy --mode validate`. Filter folders are discovered, so a folder
//! added later is covered by every test here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::manifests::{
    assert_each_refused, check_requests, expectations, filters, manifests_dir, module_server,
    native_module_bytes, one_doc, run_loader, run_native, start_services, str_at, with_loader_sha256,
    with_module_dir, yaml_docs, yaml_docs_str, yaml_files, yaml_files_in, BrokenCase, CrdSchemas, Expect,
    MODULE_MOUNT,
};
use gatewasm_envoy::{Cluster, EchoUpstream, Envoy, EnvoyBuilder, Request, STRIP_MODULE_STAT_PREFIX};
use gatewasm_pack::compile::workspace_root;
use gatewasm_pack::manifests::{
    vm_id_suffix, FILTER_FILES, MANIFESTS_DIR, MANIFEST_DIGEST_MARK, MODULE_SHA256_MARK, MODULE_VM_ID_MARK,
    NATIVE_FILES, NATIVE_SHA256_MARK, PLACEHOLDER_DIGEST, PLACEHOLDER_REGISTRY, PLACEHOLDER_VM_ID,
};
use gatewasm_pack::{sha256_hex, shipped, BUNDLE, SHIPPED};
use serde_json::{json, Value};

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const NATIVE_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter";
const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";
const HCM: &str = "envoy.filters.network.http_connection_manager";
const ROUTER: &str = "envoy.filters.http.router";
/// The Istio kinds that load a filter's image: `WasmPlugin`, and `TrafficExtension` (Istio 1.30+),
/// which holds the same Wasm fields under `spec.wasm` and shares the targeting, `phase`,
/// `priority` and `match`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    WasmPlugin,
    TrafficExtension,
}

impl Form {
    const ALL: [Form; 2] = [Form::WasmPlugin, Form::TrafficExtension];

    fn kind(self) -> &'static str {
        match self {
            Form::WasmPlugin => "WasmPlugin",
            Form::TrafficExtension => "TrafficExtension",
        }
    }

    /// The file of a folder that holds this form.
    fn file(self) -> &'static str {
        match self {
            Form::WasmPlugin => "wasmplugin.yaml",
            Form::TrafficExtension => "trafficextension.yaml",
        }
    }

    /// Where `url`, `sha256`, `pluginName`, `pluginConfig` and `failStrategy` are.
    fn wasm_pointer(self) -> &'static str {
        match self {
            Form::WasmPlugin => "/spec",
            Form::TrafficExtension => "/spec/wasm",
        }
    }

    fn wasm(self, doc: &Value) -> &Value {
        doc.pointer(self.wasm_pointer()).unwrap_or_else(|| panic!("no {} in {doc:#}", self.wasm_pointer()))
    }

    fn wasm_mut(self, doc: &mut Value) -> &mut Value {
        doc.pointer_mut(self.wasm_pointer()).unwrap()
    }

    /// Istio's prefix for the HTTP filter and extension config name (`pilot/pkg/model`,
    /// `WasmPluginResourceNamePrefix` to 1.29, `TrafficExtensionResourceNamePrefix` from 1.30).
    fn resource_prefix(self) -> &'static str {
        match self {
            Form::WasmPlugin => "extensions.istio.io/wasmplugin/",
            Form::TrafficExtension => "extensions.istio.io/trafficextension/",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the manifests

/// The built module of a folder's image (`gatewasm.wasm` for the bundle's folder).
fn module_bytes(folder: &str) -> Vec<u8> {
    let shipped = shipped(folder).unwrap_or_else(|| panic!("{folder}: not in gatewasm_pack::SHIPPED"));
    let path = gatewasm_envoy::wasm_artifact(shipped.module, folder).unwrap_or_else(|e| panic!("{e:#}"));
    std::fs::read(path).unwrap()
}

/// A folder's WasmPlugins or TrafficExtensions: one in a filter's folder, the five filters' in
/// the bundle's.
fn form_docs(dir: &Path, form: Form) -> Vec<Value> {
    let docs = yaml_docs(&dir.join(form.file()));
    assert!(!docs.is_empty() && docs.iter().all(|d| d["kind"] == form.kind()), "{}", dir.display());
    docs
}

/// The TrafficExtension Istio 1.30 makes of a WasmPlugin (`pilot/pkg/config/kube/extensions/
/// translate.go`, `translateWasmPlugin`), but for the name: targeting, phase (the same enum
/// value, spelt `UNSPECIFIED` where the WasmPlugin says `UNSPECIFIED_PHASE`), priority and match
/// as they are, the deprecated `targetRef` as the one entry of `targetRefs`, and the Wasm fields
/// under `wasm`.
fn traffic_extension_of(wp: &Value) -> Value {
    let spec = wp["spec"].as_object().unwrap();
    let mut te = serde_json::Map::new();
    let mut wasm = serde_json::Map::new();
    for (field, value) in spec {
        match field.as_str() {
            "selector" | "targetRefs" | "priority" | "match" => drop(te.insert(field.clone(), value.clone())),
            "targetRef" => {
                if !spec.contains_key("targetRefs") {
                    te.insert("targetRefs".into(), json!([value]));
                }
            }
            "phase" if value == "UNSPECIFIED_PHASE" => drop(te.insert(field.clone(), json!("UNSPECIFIED"))),
            "phase" => drop(te.insert(field.clone(), value.clone())),
            _ => drop(wasm.insert(field.clone(), value.clone())),
        }
    }
    te.insert("wasm".into(), Value::Object(wasm));
    json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "TrafficExtension",
        "metadata": wp["metadata"],
        "spec": te,
    })
}

/// The folder whose `expect.yaml` a WasmPlugin or EnvoyFilter of root id `root_id` answers to
/// when it runs alone: its filter's folder (for a filter's own folder, that folder).
fn own_folder(root_id: &str) -> PathBuf {
    manifests_dir().join(root_id)
}

/// A folder's `envoyfilter.yaml`: each EnvoyFilter with the HTTP filter it inserts, and the
/// clusters of every CLUSTER patch in the file (the bundle's module cluster is in an
/// EnvoyFilter of its own, shared by its five).
struct EnvoyFilterFile {
    filters: Vec<(Value, Value)>,
    clusters: Vec<Value>,
}

fn envoyfilter_file(dir: &Path, what: &str) -> EnvoyFilterFile {
    let mut file = EnvoyFilterFile { filters: Vec::new(), clusters: Vec::new() };
    for doc in yaml_docs(&dir.join("envoyfilter.yaml")) {
        let parts = patches(&doc, what);
        assert!(parts.filters.len() <= 1, "{what}: at most one HTTP_FILTER patch per EnvoyFilter");
        file.clusters.extend(parts.clusters);
        file.filters.extend(parts.filters.into_iter().map(|f| (doc.clone(), f)));
    }
    assert!(!file.filters.is_empty(), "{what}: no HTTP_FILTER patch");
    file
}

/// The EnvoyFilter file with `sha256` as every module's sha256 (what `manifests` writes).
fn with_module_sha256(mut file: EnvoyFilterFile, sha256: &str) -> EnvoyFilterFile {
    for (_, filter) in &mut file.filters {
        if let Some(remote) = filter.pointer_mut("/typed_config/config/vm_config/code/remote") {
            remote["sha256"] = json!(sha256);
        }
    }
    file
}

/// Where a WasmPlugin's filter runs in Istio's chain: by phase (`listener_builder.go`), then
/// higher priority first; the sort is stable, so ties keep the file's order.
fn istio_order(mut plugins: Vec<Value>) -> Vec<Value> {
    let phase = |d: &Value| match d.pointer("/spec/phase").and_then(Value::as_str) {
        Some("AUTHN") => 0,
        Some("AUTHZ") => 1,
        Some("STATS") => 2,
        _ => 3,
    };
    let priority = |d: &Value| -d.pointer("/spec/priority").and_then(Value::as_i64).unwrap_or(i64::MIN + 1);
    plugins.sort_by_key(|d| (phase(d), priority(d)));
    plugins
}

// ---------------------------------------------------------------------------------------------
// Schema validation

/// The kinds of `istio-envoyfilters/`, each checked against its CRD.
const KINDS: [&str; 3] = ["WasmPlugin", "EnvoyFilter", "TrafficExtension"];

/// Checks manifests against the three CRDs: JSON Schema, then the CRDs' CEL rules
/// (`x-kubernetes-validations`) that concern gateway manifests, by hand.
struct Validator {
    crds: CrdSchemas,
}

impl Validator {
    fn new() -> Self {
        Validator { crds: CrdSchemas::new(&manifests_dir().join("schemas"), &KINDS) }
    }

    /// Every problem with `doc`, each as `<path>: <message>`.
    fn errors(&self, doc: &Value) -> Vec<String> {
        let kind = doc["kind"].as_str().unwrap_or_default();
        let mut errors = self.crds.errors(doc);
        let spec = &doc["spec"];
        let set = |field: &str| spec.get(field).is_some_and(|v| !v.is_null());
        match kind {
            "WasmPlugin" | "TrafficExtension" => {
                if [set("selector"), set("targetRef"), set("targetRefs")].iter().filter(|s| **s).count() > 1 {
                    errors.push("/spec: only one of targetRefs or selector can be set".into());
                }
                let url_at = if kind == "WasmPlugin" { "/spec/url" } else { "/spec/wasm/url" };
                if let Some(url) = doc.pointer(url_at).and_then(Value::as_str) {
                    let scheme = url.split_once("://").map_or("", |(s, _)| s);
                    if !["", "http", "https", "oci", "file"].contains(&scheme) {
                        errors.push(format!(
                            "{url_at}: url must have schema one of [http, https, file, oci]: {url}"
                        ));
                    }
                }
                for (key, value) in
                    spec.pointer("/selector/matchLabels").and_then(Value::as_object).into_iter().flatten()
                {
                    if key.is_empty() || key.contains('*') || value.as_str().is_some_and(|v| v.contains('*'))
                    {
                        errors.push(format!(
                            "/spec/selector/matchLabels: empty key or wildcard in {key}: {value}"
                        ));
                    }
                }
                if kind == "TrafficExtension" {
                    if set("wasm") == set("lua") {
                        errors.push("/spec: exactly one of wasm or lua must be set".into());
                    }
                    for (i, target) in spec["targetRefs"].as_array().into_iter().flatten().enumerate() {
                        if target["namespace"].as_str().is_some_and(|n| !n.is_empty()) {
                            errors.push(format!(
                                "/spec/targetRefs/{i}/namespace: cross namespace referencing is not currently supported"
                            ));
                        }
                    }
                }
            }
            _ => {
                if set("workloadSelector") && set("targetRefs") {
                    errors.push("/spec: only one of targetRefs or workloadSelector can be set".into());
                }
            }
        }
        errors
    }
}

#[test]
fn every_manifest_matches_istio_crd_schemas() {
    let validator = Validator::new();
    let mut checked = 0;
    for path in yaml_files(&manifests_dir()) {
        for doc in yaml_docs(&path) {
            let kind = doc["kind"].as_str().unwrap_or_default();
            if !KINDS.contains(&kind) {
                continue;
            }
            let errors = validator.errors(&doc);
            assert!(
                errors.is_empty(),
                "{}: {kind} does not match Istio's CRD:\n{}",
                path.display(),
                errors.join("\n")
            );
            checked += 1;
        }
    }
    assert!(checked >= KINDS.len() * filters().len(), "{checked} manifests checked");
}

/// The Istio manifests `gatewasm new` writes into a crate (tools/gatewasm/template/istio/, the
/// crate's name put in) match the CRDs too, and name the placeholders `gatewasm manifests` fills.
#[test]
fn the_scaffolds_manifests_match_istio_crd_schemas() {
    let validator = Validator::new();
    let template = workspace_root().join("tools/gatewasm/template/istio");
    let mut checked = Vec::new();
    for path in yaml_files_in(&template) {
        let text = std::fs::read_to_string(&path).unwrap().replace("{{name}}", "tenant-guard");
        assert!(!text.contains("{{"), "{}: a placeholder other than {{{{name}}}}", path.display());
        for doc in yaml_docs_str(&text).unwrap() {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            if !KINDS.contains(&kind.as_str()) {
                continue;
            }
            let errors = validator.errors(&doc);
            assert!(errors.is_empty(), "{}: {kind}:\n{}", path.display(), errors.join("\n"));
            assert!(
                text.contains(&format!("oci://{PLACEHOLDER_REGISTRY}/tenant-guard:0.1.0\n")),
                "{}",
                path.display()
            );
            assert!(text.contains(MANIFEST_DIGEST_MARK), "{}", path.display());
            checked.push(kind);
        }
    }
    checked.sort();
    assert_eq!(checked, ["TrafficExtension", "WasmPlugin"]);
}

/// Attaches a manifest to the Gateway API Gateway `gw` by `targetRefs`.
fn add_gateway_target(doc: &mut Value) {
    doc["spec"]["targetRefs"] =
        json!([{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"}]);
}

#[test]
fn the_validator_rejects_broken_manifests() {
    let validator = Validator::new();
    let (_, dir) = &filters()[0];
    let wasmplugin = one_doc(&dir.join("wasmplugin.yaml"));
    let envoyfilter = one_doc(&dir.join("envoyfilter.yaml"));
    let extension = one_doc(&dir.join("trafficextension.yaml"));
    for doc in [&wasmplugin, &envoyfilter, &extension] {
        assert_eq!(validator.errors(doc), Vec::<String>::new(), "{}", dir.display());
    }

    let cases: &[BrokenCase<'_>] = &[
        ("unknown phase", &wasmplugin, |d| d["spec"]["phase"] = json!("AUTHENTICATION"), "/spec/phase"),
        ("sha256 not lower-case hex", &wasmplugin, |d| d["spec"]["sha256"] = json!("ABCDEF"), "/spec/sha256"),
        (
            "sha256: prefix",
            &wasmplugin,
            |d| d["spec"]["sha256"] = json!(format!("sha256:{PLACEHOLDER_DIGEST}")),
            "/spec/sha256",
        ),
        ("misspelt field", &wasmplugin, |d| d["spec"]["failstrategy"] = json!("FAIL_OPEN"), "failstrategy"),
        (
            "misspelt fail strategy",
            &wasmplugin,
            |d| d["spec"]["failStrategy"] = json!("FAIL_CLOSED"),
            "/spec/failStrategy",
        ),
        ("no url", &wasmplugin, |d| drop(d["spec"].as_object_mut().unwrap().remove("url")), "url"),
        ("priority as text", &wasmplugin, |d| d["spec"]["priority"] = json!("high"), "/spec/priority"),
        ("pluginName empty", &wasmplugin, |d| d["spec"]["pluginName"] = json!(""), "/spec/pluginName"),
        (
            "unknown pull policy",
            &wasmplugin,
            |d| d["spec"]["imagePullPolicy"] = json!("Never"),
            "/spec/imagePullPolicy",
        ),
        ("selector and targetRefs", &wasmplugin, add_gateway_target, "only one of targetRefs or selector"),
        ("ftp url", &wasmplugin, |d| d["spec"]["url"] = json!("ftp://example.com/x.wasm"), "/spec/url"),
        (
            "wildcard label",
            &wasmplugin,
            |d| d["spec"]["selector"]["matchLabels"]["istio"] = json!("ingress*"),
            "matchLabels",
        ),
        (
            "wrong apiVersion",
            &wasmplugin,
            |d| d["apiVersion"] = json!("extensions.istio.io/v1"),
            "/apiVersion",
        ),
        ("no name", &wasmplugin, |d| drop(d["metadata"].as_object_mut().unwrap().remove("name")), "name"),
        (
            "upper-case name",
            &wasmplugin,
            |d| d["metadata"]["name"] = json!("Header-Rewrite"),
            "/metadata/name",
        ),
        (
            "unknown applyTo",
            &envoyfilter,
            |d| d["spec"]["configPatches"][0]["applyTo"] = json!("HTTP_FILTERS"),
            "applyTo",
        ),
        (
            "unknown operation",
            &envoyfilter,
            |d| d["spec"]["configPatches"][0]["patch"]["operation"] = json!("INSERT"),
            "operation",
        ),
        (
            "unknown context",
            &envoyfilter,
            |d| d["spec"]["configPatches"][0]["match"]["context"] = json!("INGRESS"),
            "context",
        ),
        (
            "misspelt match field",
            &envoyfilter,
            |d| d["spec"]["configPatches"][0]["match"]["listner"] = json!({}),
            "listner",
        ),
        (
            "labels not a map",
            &envoyfilter,
            |d| d["spec"]["workloadSelector"]["labels"] = json!(["istio"]),
            "labels",
        ),
        (
            "workloadSelector and targetRefs",
            &envoyfilter,
            add_gateway_target,
            "only one of targetRefs or workloadSelector",
        ),
        (
            "a WasmPlugin field outside wasm",
            &extension,
            |d| d["spec"]["url"] = json!("oci://registry.example.com/x:1"),
            "url",
        ),
        (
            "WasmPlugin's phase name",
            &extension,
            |d| d["spec"]["phase"] = json!("UNSPECIFIED_PHASE"),
            "/spec/phase",
        ),
        (
            "wasm and lua",
            &extension,
            |d| d["spec"]["lua"] = json!({"inlineCode": "function envoy_on_request(h) end"}),
            "exactly one of wasm or lua",
        ),
        (
            "neither wasm nor lua",
            &extension,
            |d| drop(d["spec"].as_object_mut().unwrap().remove("wasm")),
            "exactly one of wasm or lua",
        ),
        (
            "empty lua",
            &extension,
            |d| {
                d["spec"].as_object_mut().unwrap().remove("wasm");
                d["spec"]["lua"] = json!({"inlineCode": ""});
            },
            "/spec/lua/inlineCode",
        ),
        (
            "no wasm url",
            &extension,
            |d| drop(d["spec"]["wasm"].as_object_mut().unwrap().remove("url")),
            "url",
        ),
        (
            "ftp wasm url",
            &extension,
            |d| d["spec"]["wasm"]["url"] = json!("ftp://example.com/x.wasm"),
            "/spec/wasm/url",
        ),
        (
            "wasm sha256: prefix",
            &extension,
            |d| d["spec"]["wasm"]["sha256"] = json!(format!("sha256:{PLACEHOLDER_DIGEST}")),
            "/spec/wasm/sha256",
        ),
        (
            "EnvoyFilter's failure policy name",
            &extension,
            |d| d["spec"]["wasm"]["failStrategy"] = json!("FAIL_CLOSED"),
            "/spec/wasm/failStrategy",
        ),
        (
            "the deprecated singular targetRef",
            &extension,
            |d| {
                d["spec"]["targetRef"] =
                    json!({"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"})
            },
            "targetRef",
        ),
        ("selector and targetRefs", &extension, add_gateway_target, "only one of targetRefs or selector"),
        (
            "targetRefs in another namespace",
            &extension,
            |d| {
                d["spec"].as_object_mut().unwrap().remove("selector");
                d["spec"]["targetRefs"] = json!([{"kind": "Gateway", "group": "gateway.networking.k8s.io",
                                                  "name": "gw", "namespace": "other"}]);
            },
            "cross namespace",
        ),
    ];
    assert_each_refused(cases, |doc| validator.errors(doc));
}

// ---------------------------------------------------------------------------------------------
// Conventions of a filter folder

/// The `EnvoyFilter` priority that puts a filter where a `WasmPlugin` of this phase and
/// priority runs (patches with a lower priority are applied first, so run earlier before the
/// router): the phase's base, less the WasmPlugin's priority within the phase (a higher one runs
/// first), which stays within -99..=99 so phases never overlap.
fn envoyfilter_priority(phase: &str, priority: i64) -> i64 {
    assert!((-99..=99).contains(&priority), "a WasmPlugin priority within -99..=99, not {priority}");
    let base = match phase {
        "AUTHN" => -300,
        "AUTHZ" => -200,
        "STATS" => -100,
        _ => 0,
    };
    base - priority
}

/// The `failStrategy` filter `name` of `phase` must have. Guards (AUTHN, AUTHZ) and the filters
/// that run after them without a phase (header-rewrite strips headers upstreams trust and
/// rewrites hosts and paths) fail closed: skipping them would forward what must not be
/// forwarded. Observability (STATS) fails open: a broken counter or log shipper must not stop
/// the gateway. rate-limit runs among the guards (AUTHZ, after authentication) but protects
/// backends rather than checking access: it fails open, as Envoy's own rate limit filter lets
/// requests through when its service fails.
fn expected_fail_strategy(name: &str, phase: &str) -> &'static str {
    match (name, phase) {
        (_, "STATS") | ("rate-limit", _) => "FAIL_OPEN",
        _ => "FAIL_CLOSE",
    }
}

fn failure_policy(fail_strategy: &str) -> &'static str {
    match fail_strategy {
        "FAIL_OPEN" => "FAIL_OPEN",
        "FAIL_RELOAD" => "FAIL_RELOAD",
        _ => "FAIL_CLOSED",
    }
}

/// The parts of an `EnvoyFilter` the tests run: the HTTP filter its HTTP_FILTER patch inserts
/// and the clusters its CLUSTER patches add.
struct EnvoyFilterParts {
    filter: Value,
    clusters: Vec<Value>,
}

fn envoyfilter_parts(doc: &Value, what: &str) -> EnvoyFilterParts {
    let parts = patches(doc, what);
    assert_eq!(parts.filters.len(), 1, "{what}: one HTTP_FILTER patch");
    EnvoyFilterParts { filter: parts.filters.into_iter().next().unwrap(), clusters: parts.clusters }
}

/// The HTTP filters and the clusters an EnvoyFilter's patches add.
struct Patches {
    filters: Vec<Value>,
    clusters: Vec<Value>,
}

fn patches(doc: &Value, what: &str) -> Patches {
    let patches = doc.pointer("/spec/configPatches").and_then(Value::as_array).unwrap();
    let mut filters = Vec::new();
    let mut clusters = Vec::new();
    for patch in patches {
        assert_eq!(
            patch.pointer("/match/context"),
            Some(&json!("GATEWAY")),
            "{what}: every patch applies to gateways"
        );
        match patch["applyTo"].as_str() {
            Some("HTTP_FILTER") => {
                assert_eq!(patch.pointer("/patch/operation"), Some(&json!("INSERT_BEFORE")), "{what}");
                let filter = patch.pointer("/match/listener/filterChain/filter").unwrap();
                assert_eq!(filter["name"], HCM, "{what}");
                assert_eq!(
                    filter.pointer("/subFilter/name"),
                    Some(&json!(ROUTER)),
                    "{what}: inserted before the router"
                );
                filters.push(patch.pointer("/patch/value").unwrap().clone());
            }
            Some("CLUSTER") => {
                assert_eq!(patch.pointer("/patch/operation"), Some(&json!("ADD")), "{what}");
                clusters.push(patch.pointer("/patch/value").unwrap().clone());
            }
            other => panic!("{what}: unexpected patch applyTo {other:?}"),
        }
    }
    Patches { filters, clusters }
}

/// A committed WasmPlugin names the image `./scripts/package` builds, at the placeholder registry,
/// tagged with the workspace version, and the placeholder digest.
fn assert_committed_image(wp: &Value, image: &str, what: &str) {
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(str_at(wp, "/spec/url"), format!("oci://{PLACEHOLDER_REGISTRY}/{image}:{version}"), "{what}");
    assert_eq!(str_at(wp, "/spec/sha256"), PLACEHOLDER_DIGEST, "{what}: the marked placeholder");
}

/// The HTTP filters of an EnvoyFilter file in the order Envoy runs them: lower `spec.priority`
/// first (applied first), ties in the file's order.
fn envoyfilter_order(file: &EnvoyFilterFile) -> Vec<Value> {
    let mut ordered: Vec<(i64, Value)> = file
        .filters
        .iter()
        .map(|(ef, f)| (ef.pointer("/spec/priority").and_then(Value::as_i64).unwrap_or(0), f.clone()))
        .collect();
    ordered.sort_by_key(|(priority, _)| *priority);
    ordered.into_iter().map(|(_, f)| f).collect()
}

/// The lines of `text` holding `mark`: `count` of them, each holding `placeholder`.
fn assert_marked(text: &str, mark: &str, placeholder: &str, count: usize, what: &str) {
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(mark)).collect();
    assert_eq!(lines.len(), count, "{what}: {count} lines marked {mark}");
    for line in lines {
        assert!(line.contains(placeholder), "{what}: the marked line holds the placeholder: {line}");
    }
}

/// The line of `text` holding `mark`; it must hold the placeholder digest.
fn assert_marked_placeholder(text: &str, mark: &str, what: &str) {
    assert_marked(text, mark, PLACEHOLDER_DIGEST, 1, what);
}

/// The `module.local.filename` the native forms load `file` (`lib<name>.so`) from.
fn native_module_path(file: &str) -> String {
    format!("{MODULE_MOUNT}/{file}")
}

/// The init container of a filter folder's `native-loader.yaml`, checked as a patch of the
/// gateway Deployment that gives istio-proxy the modules' volume.
fn loader_container(dir: &Path, name: &str) -> Value {
    let what = format!("{name}/native-loader.yaml");
    let patch = one_doc(&dir.join("native-loader.yaml"));
    assert_eq!((&patch["apiVersion"], &patch["kind"]), (&json!("apps/v1"), &json!("Deployment")), "{what}");
    assert_eq!(
        patch["metadata"],
        json!({"name": "istio-ingressgateway", "namespace": "istio-system"}),
        "{what}: the gateway Deployment"
    );
    let pod = patch.pointer("/spec/template/spec").unwrap();
    assert_eq!(
        pod["volumes"],
        json!([{"name": "gatewasm-modules", "emptyDir": {}}]),
        "{what}: the volume the modules are written to"
    );
    assert_eq!(
        pod["containers"],
        json!([{"name": "istio-proxy", "volumeMounts": [
            {"name": "gatewasm-modules", "mountPath": MODULE_MOUNT, "readOnly": true}]}]),
        "{what}: Envoy reads the modules, read-only"
    );
    let config = str_at(&patch, "/spec/template/metadata/annotations/proxy.istio.io~1config");
    let config: Value = serde_norway::from_str(config).unwrap();
    assert_eq!(
        config,
        json!({"runtimeValues": {STRIP_MODULE_STAT_PREFIX: "true"},
               "proxyStatsMatcher": {"inclusionPrefixes": ["dynamicmodulescustom."]}}),
        "{what}: the modules' metrics named as the Wasm filters' and kept by Istio"
    );
    let inits = pod["initContainers"].as_array().unwrap();
    assert_eq!(inits.len(), 1, "{what}: one init container");
    assert_eq!(
        inits[0]["name"],
        format!("gatewasm-native-{name}"),
        "{what}: named per filter so patches merge"
    );
    inits[0].clone()
}

/// A filter folder's native forms: `envoyfilter-native.yaml` is `envoyfilter.yaml`'s EnvoyFilter
/// (name, namespace, selector, priority) with the filter as a dynamic module loaded from the
/// file `native-loader.yaml`'s init container writes, and the WasmPlugin's configuration.
fn assert_native_forms(name: &str, dir: &Path, wp: &Value, wasm_ef: &Value, file: &str) {
    let what = format!("{name}/envoyfilter-native.yaml");
    let ef = one_doc(&dir.join("envoyfilter-native.yaml"));
    assert_eq!(ef["kind"], "EnvoyFilter", "{what}");
    assert_eq!(
        ef["metadata"], wasm_ef["metadata"],
        "{what}: envoyfilter.yaml's name, so one replaces the other"
    );
    assert_eq!(ef.pointer("/spec/workloadSelector"), wasm_ef.pointer("/spec/workloadSelector"), "{what}");
    assert_eq!(ef.pointer("/spec/priority"), wasm_ef.pointer("/spec/priority"), "{what}: the same place");
    let parts = envoyfilter_parts(&ef, &what);
    assert!(parts.clusters.is_empty(), "{what}: no module cluster, the module is a local file");
    let filter = &parts.filter;
    assert_eq!(filter["name"], format!("gatewasm.{name}"), "{what}");
    assert_eq!(filter.pointer("/typed_config/@type"), Some(&json!(NATIVE_TYPE)), "{what}");
    assert_eq!(
        filter.pointer("/typed_config/dynamic_module_config"),
        Some(&json!({"module": {"local": {"filename": native_module_path(file)}}})),
        "{what}: the file native-loader.yaml writes"
    );
    assert_eq!(
        filter.pointer("/typed_config/filter_name"),
        Some(&json!(gatewasm_paths_name(name))),
        "{what}: the plugin's name"
    );
    assert_eq!(
        filter.pointer("/typed_config/filter_config/@type"),
        Some(&json!(STRING_VALUE_TYPE)),
        "{what}"
    );
    let config: Value = serde_json::from_str(str_at(filter, "/typed_config/filter_config/value")).unwrap();
    assert_eq!(config, wp["spec"]["pluginConfig"], "{what}: filter_config = the WasmPlugin's pluginConfig");

    let what = format!("{name}/native-loader.yaml");
    let text = std::fs::read_to_string(dir.join("native-loader.yaml")).unwrap();
    assert_marked(&text, &format!("{NATIVE_SHA256_MARK} {name}"), PLACEHOLDER_DIGEST, 1, &what);
    let init = loader_container(dir, name);
    let script = str_at(&init, "/args/0");
    assert!(script.contains(&format!("module={}\n", native_module_path(file))), "{what}: writes {file}");
    assert!(
        script.contains(&format!("http://gatewasm-modules.istio-system.svc.cluster.local/{file}\n")),
        "{what}: from the module server"
    );
}

/// The plugin name of a filter's native module: its package name with `_` (`Plugin::NAME`).
fn gatewasm_paths_name(package: &str) -> String {
    package.replace('-', "_")
}

#[test]
fn every_filter_folder_follows_the_convention() {
    let top = one_doc(&manifests_dir().join("kustomization.yaml"));
    let server = yaml_docs(&manifests_dir().join("module-server").join("module-server.yaml"));
    let served: Vec<String> = server
        .iter()
        .filter_map(|d| d.pointer("/spec/template/spec/volumes/0/projected/sources"))
        .flat_map(|s| s.as_array().unwrap().iter().map(|c| str_at(c, "/configMap/name").to_string()))
        .collect();
    // TrafficExtensions attached by targetRefs: waypoints honour nothing else, so at least one
    // example shows it.
    let mut gateway_targets = 0;
    for (name, dir) in filters() {
        for file in FILTER_FILES {
            assert!(
                dir.join(file).is_file(),
                "{name}: {file} missing (each filter folder holds {FILTER_FILES:?})"
            );
        }
        let wp_text = std::fs::read_to_string(dir.join("wasmplugin.yaml")).unwrap();
        let ef_text = std::fs::read_to_string(dir.join("envoyfilter.yaml")).unwrap();
        let plugins = form_docs(&dir, Form::WasmPlugin);
        let ef_file = envoyfilter_file(&dir, &format!("{name}/envoyfilter.yaml"));
        let bundle = name == BUNDLE;
        let root_ids: Vec<&str> = plugins.iter().map(|wp| str_at(wp, "/spec/pluginName")).collect();
        if bundle {
            // The bundle's folder: the five filters of the module, each once, from one image.
            let mut ids = root_ids.clone();
            ids.sort_unstable();
            let mut bundled: Vec<&str> = gatewasm_envoy::BUNDLED.iter().map(|(_, id)| *id).collect();
            bundled.sort_unstable();
            assert_eq!(ids, bundled, "{name}/wasmplugin.yaml: one WasmPlugin per filter of the bundle");
            assert_eq!(
                plugins,
                istio_order(plugins.clone()),
                "{name}/wasmplugin.yaml: in the order Istio runs them"
            );
        } else {
            assert_eq!(
                root_ids,
                [name.as_str()],
                "{name}/wasmplugin.yaml: one WasmPlugin, pluginName = folder"
            );
        }
        assert_marked(&wp_text, MANIFEST_DIGEST_MARK, PLACEHOLDER_DIGEST, plugins.len(), &name);
        assert_marked(&ef_text, MODULE_SHA256_MARK, PLACEHOLDER_DIGEST, plugins.len(), &name);
        assert_eq!(ef_file.filters.len(), plugins.len(), "{name}: one EnvoyFilter per WasmPlugin");

        for (wp, (ef, filter)) in plugins.iter().zip(&ef_file.filters) {
            let root_id = str_at(wp, "/spec/pluginName");
            let what = format!("{name}/wasmplugin.yaml ({root_id})");

            // WasmPlugin
            assert_eq!(str_at(wp, "/metadata/name"), root_id, "{what}: named after its filter");
            assert_eq!(
                wp.pointer("/spec/selector/matchLabels"),
                Some(&json!({"istio": "ingressgateway"})),
                "{what}"
            );
            assert_committed_image(wp, &name, &what);
            let phase = str_at(wp, "/spec/phase");
            let priority = wp.pointer("/spec/priority").and_then(Value::as_i64).unwrap_or(0);
            let fail_strategy = str_at(wp, "/spec/failStrategy");
            let expected = expected_fail_strategy(root_id, phase);
            assert_eq!(
                fail_strategy,
                expected,
                "{what}: phase {phase} fails {}",
                if expected == "FAIL_OPEN" { "open" } else { "closed" }
            );
            assert!(wp.pointer("/spec/imagePullPolicy").is_some(), "{what}: imagePullPolicy chosen");
            assert!(
                wp.pointer("/spec/pluginConfig").is_some_and(Value::is_object),
                "{what}: an example pluginConfig"
            );
            if bundle {
                // Everything but the image is the filter's own WasmPlugin.
                let mut own = one_doc(&own_folder(root_id).join("wasmplugin.yaml"));
                own["spec"]["url"] = wp["spec"]["url"].clone();
                assert_eq!(wp, &own, "{what}: the filter folder's WasmPlugin with the bundle's image");
            }

            // EnvoyFilter: the same filter, config and failure policy.
            let what = format!("{name}/envoyfilter.yaml ({root_id})");
            assert_eq!(ef["kind"], "EnvoyFilter", "{what}");
            assert_eq!(ef["metadata"], wp["metadata"], "{what}: same name and namespace as the WasmPlugin");
            assert_eq!(
                ef.pointer("/spec/workloadSelector/labels"),
                wp.pointer("/spec/selector/matchLabels"),
                "{what}"
            );
            assert_eq!(
                ef.pointer("/spec/priority").and_then(Value::as_i64).unwrap_or(0),
                envoyfilter_priority(phase, priority),
                "{what}: the priority of phase {phase}, priority {priority}"
            );
            assert_eq!(filter.pointer("/typed_config/@type"), Some(&json!(WASM_TYPE)), "{what}");
            let config = filter.pointer("/typed_config/config").unwrap();
            let namespace = str_at(wp, "/metadata/namespace");
            assert_eq!(
                config["name"],
                format!("{namespace}.{root_id}"),
                "{what}: named as a WasmPlugin's is"
            );
            assert_eq!(config["root_id"], wp["spec"]["pluginName"], "{what}: root_id = pluginName");
            assert_eq!(
                config["failure_policy"],
                failure_policy(fail_strategy),
                "{what}: failStrategy {fail_strategy}"
            );
            assert_eq!(config.pointer("/configuration/@type"), Some(&json!(STRING_VALUE_TYPE)), "{what}");
            let configuration: Value = serde_json::from_str(str_at(config, "/configuration/value")).unwrap();
            assert_eq!(
                configuration, wp["spec"]["pluginConfig"],
                "{what}: configuration = the WasmPlugin's pluginConfig"
            );
            assert_eq!(config.pointer("/vm_config/runtime"), Some(&json!("envoy.wasm.runtime.v8")), "{what}");
            let remote =
                config.pointer("/vm_config/code/remote").unwrap_or_else(|| panic!("{what}: code.remote"));
            assert_eq!(str_at(remote, "/sha256"), PLACEHOLDER_DIGEST, "{what}");
            assert!(
                str_at(remote, "/http_uri/uri").ends_with(&format!("/{name}.wasm")),
                "{what}: the module's URL"
            );
            assert!(remote.pointer("/http_uri/timeout").is_some(), "{what}: a fetch timeout");
            let cluster = str_at(remote, "/http_uri/cluster");
            assert!(
                ef_file.clusters.iter().any(|c| c["name"] == cluster) || cluster.starts_with("outbound|"),
                "{what}: the module cluster {cluster} is added by a CLUSTER patch or is Istio's own (outbound|port||host)"
            );
        }
        if bundle {
            // One VM for the five: the same vm_id (naming the build, rendered from the module's
            // sha256), runtime and code in every filter.
            assert_marked(&ef_text, MODULE_VM_ID_MARK, PLACEHOLDER_VM_ID, plugins.len(), &name);
            let vm_configs: Vec<&Value> = ef_file
                .filters
                .iter()
                .map(|(_, f)| f.pointer("/typed_config/config/vm_config").unwrap())
                .collect();
            assert!(vm_configs.iter().all(|vm| *vm == vm_configs[0]), "{name}: one vm_config for the five");
            assert_eq!(str_at(vm_configs[0], "/vm_id"), format!("{BUNDLE}-{PLACEHOLDER_VM_ID}"), "{name}");
            assert_eq!(ef_file.clusters.len(), 1, "{name}: the module cluster, once");
        }
        assert!(
            served.contains(&format!("gatewasm-module-{name}")),
            "{name}: module-server serves gatewasm-module-{name}"
        );
        match shipped(&name).and_then(|f| f.native_file()) {
            Some(file) => {
                assert_native_forms(&name, &dir, &plugins[0], &ef_file.filters[0].0, &file);
                assert!(
                    served.contains(&format!("gatewasm-native-{name}")),
                    "{name}: module-server serves gatewasm-native-{name}"
                );
            }
            None => {
                for file in NATIVE_FILES {
                    assert!(!dir.join(file).exists(), "{name}: {file}, but the module has no native build");
                }
            }
        }

        // TrafficExtension: each the WasmPlugin as Istio 1.30 translates it, in the same order;
        // one may attach to a Gateway API Gateway by targetRefs instead of the selector (then in
        // that Gateway's namespace, the only one a targetRef may name).
        let te_text = std::fs::read_to_string(dir.join("trafficextension.yaml")).unwrap();
        let extensions = form_docs(&dir, Form::TrafficExtension);
        assert_eq!(extensions.len(), plugins.len(), "{name}: one TrafficExtension per WasmPlugin");
        assert_marked(&te_text, MANIFEST_DIGEST_MARK, PLACEHOLDER_DIGEST, extensions.len(), &name);
        for (wp, te) in plugins.iter().zip(&extensions) {
            let what = format!("{name}/trafficextension.yaml ({})", str_at(wp, "/spec/pluginName"));
            let mut expected = traffic_extension_of(wp);
            if let Some(targets) = te.pointer("/spec/targetRefs") {
                for target in targets.as_array().unwrap() {
                    assert_eq!(
                        (&target["kind"], &target["group"]),
                        (&json!("Gateway"), &json!("gateway.networking.k8s.io")),
                        "{what}: a Gateway API Gateway"
                    );
                    assert_eq!(target.get("namespace"), None, "{what}: the TrafficExtension's namespace");
                }
                expected["spec"].as_object_mut().unwrap().remove("selector");
                expected["spec"]["targetRefs"] = targets.clone();
                expected["metadata"]["namespace"] = te["metadata"]["namespace"].clone();
                gateway_targets += 1;
            }
            assert_eq!(te, &expected, "{what}: the WasmPlugin as Istio 1.30 translates it");
        }

        // kustomize: the folder applies its WasmPlugins; the top level applies every filter's
        // folder, and not the bundle's, whose WasmPlugins carry the same names.
        let k = one_doc(&dir.join("kustomization.yaml"));
        assert_eq!(k["kind"], "Kustomization");
        assert_eq!(
            k["resources"],
            json!(["wasmplugin.yaml"]),
            "{name}/kustomization.yaml: the WasmPlugins only (one form per filter: two would each run it)"
        );
        assert_eq!(
            top["resources"].as_array().unwrap().contains(&json!(name)),
            !bundle,
            "kustomization.yaml lists every filter folder but the bundle's ({name})"
        );
    }
    // Every resource a kustomization names exists (a file, or a folder with a kustomization).
    for path in yaml_files(&manifests_dir()).into_iter().filter(|p| p.ends_with("kustomization.yaml")) {
        let k = one_doc(&path);
        for r in k["resources"].as_array().unwrap() {
            let target = path.parent().unwrap().join(r.as_str().unwrap());
            assert!(
                target.is_file() || target.join("kustomization.yaml").is_file(),
                "{}: resource {r} does not exist",
                path.display()
            );
        }
    }
    assert!(gateway_targets >= 1, "no TrafficExtension attaches to a Gateway by targetRefs");
    for f in SHIPPED {
        assert!(
            manifests_dir().join(f.name).is_dir(),
            "shipped filter {} has no folder in {MANIFESTS_DIR}/",
            f.name
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Running the manifests in Envoy

/// The Envoy config Istio derives from a `WasmPlugin` (`pilot/pkg/model/extensions.go`,
/// `buildPluginConfig`, Istio 1.29) or a `TrafficExtension` (the same file, `buildWasmConfig`,
/// Istio 1.30, which builds a WasmPlugin from its translation too): name `<namespace>.<name>`,
/// `root_id` = `pluginName`, `pluginConfig` as a JSON string in a `StringValue`, the V8 runtime,
/// `failStrategy` as `failure_policy`, no `vm_id`, and `code` for the module: istiod sends a
/// remote source with the URL, and Istio's agent fetches the image, checks its manifest digest
/// and hands Envoy the module as a local file (`pkg/wasm/convert.go`). The VM environment istiod
/// adds (`ISTIO_META_*`) is left out: the agent strips it.
fn istio_filter(form: Form, doc: &Value, code: Value) -> Value {
    let spec = form.wasm(doc);
    let name = format!("{}.{}", str_at(doc, "/metadata/namespace"), str_at(doc, "/metadata/name"));
    let mut config = json!({
        "name": name,
        "root_id": spec["pluginName"].as_str().unwrap_or_default(),
        "vm_config": {
            "runtime": "envoy.wasm.runtime.v8",
            "code": code
        },
    });
    if let Some(plugin_config) = spec["pluginConfig"].as_object().filter(|c| !c.is_empty()) {
        config["configuration"] =
            json!({"@type": STRING_VALUE_TYPE, "value": Value::Object(plugin_config.clone()).to_string()});
    }
    if let Some(strategy) = spec["failStrategy"].as_str() {
        config["failure_policy"] = json!(failure_policy(strategy));
    }
    json!({"name": format!("{}{name}", form.resource_prefix()), "typed_config": {"@type": WASM_TYPE, "config": config}})
}

/// Runs an `EnvoyFilter`'s Wasm filter in Envoy as its patches give it, in front of the echo
/// upstream, with `module` served where its `http_uri` points, and checks `expect`. The clusters
/// of its CLUSTER patches keep their names and point at local servers: the module's at the
/// module server, the others at `expect.services`.
fn run_envoyfilter(ef: &Value, module: &[u8], expect: &Expect, what: &str) {
    let parts = envoyfilter_parts(ef, what);
    run_envoyfilters(&[parts.filter], &parts.clusters, module, expect, what);
}

/// [`run_envoyfilter`] for several filters of one module in one Envoy, in the order given, with
/// the clusters of their EnvoyFilters; the module is served at the first filter's `http_uri`.
/// Returns the Envoy.
fn run_envoyfilters(
    filters: &[Value],
    clusters: &[Value],
    module: &[u8],
    expect: &Expect,
    what: &str,
) -> Envoy {
    let remote = filters[0].pointer("/typed_config/config/vm_config/code/remote").unwrap();
    let uri = str_at(remote, "/http_uri/uri");
    let module_cluster = str_at(remote, "/http_uri/cluster");
    let (server, module_path) = module_server(uri, module);
    let services = start_services(expect);
    let upstream = EchoUpstream::start().unwrap();
    let mut builder = EnvoyBuilder::new().upstream(upstream.addr());
    for filter in filters {
        builder = builder.raw_filter(filter.clone());
    }
    let mut names: Vec<&str> = clusters.iter().map(|c| str_at(c, "/name")).collect();
    if module_cluster.starts_with("outbound|") {
        // Istio's own cluster for a mesh Service: there in a mesh, added here.
        names.push(module_cluster);
    }
    for cname in services.keys() {
        if !names.contains(&cname.as_str()) {
            names.push(cname);
        }
    }
    assert!(names.contains(&module_cluster), "{what}: no cluster {module_cluster} for the module");
    for cname in names {
        let addr = if cname == module_cluster {
            server.addr()
        } else {
            let service = services.get(cname);
            service.unwrap_or_else(|| panic!("{what}: expect.yaml must script cluster {cname}")).addr()
        };
        builder = builder.cluster(Cluster::new(cname, addr));
    }
    let envoy = builder.start().unwrap_or_else(|e| panic!("{what}: {e:#}"));
    let fetched = server.received();
    assert!(!fetched.is_empty(), "{what}: Envoy did not fetch the module");
    assert_eq!(fetched[0].path, module_path, "{what}");
    assert_eq!(fetched[0].header("host"), uri.split('/').nth(2), "{what}: Host of http_uri");
    check_requests(&envoy, expect, what);
    envoy
}

#[test]
fn each_envoyfilter_runs_in_envoy_with_the_module_fetched_by_sha256() {
    for (name, dir) in filters() {
        let module = module_bytes(&name);
        // The one change: the module's sha256 where the committed file has the placeholder
        // (what `./scripts/package manifests` writes).
        let what = format!("{name}/envoyfilter.yaml");
        let file = with_module_sha256(envoyfilter_file(&dir, &what), &sha256_hex(&module));
        // Each filter alone, held to its filter folder's expect.yaml.
        for (_, filter) in &file.filters {
            let root_id = str_at(filter, "/typed_config/config/root_id");
            let what = format!("{what} ({root_id})");
            drop(run_envoyfilters(
                std::slice::from_ref(filter),
                &file.clusters,
                &module,
                &expectations(&own_folder(root_id)),
                &what,
            ));
        }
        if file.filters.len() > 1 {
            // All of them, in the order their priorities give, as one gateway: the folder's
            // expect.yaml, and one module's VMs (the base VM, a clone on the main thread, one
            // per worker: 3 at one worker).
            let chain = envoyfilter_order(&file);
            let envoy = run_envoyfilters(&chain, &file.clusters, &module, &expectations(&dir), &what);
            assert_eq!(envoy.stat(ACTIVE_VMS).unwrap(), Some(3), "{what}: one module's VMs\n{}", envoy.log());
        }
    }
}

#[test]
fn each_wasmplugin_and_trafficextension_runs_in_envoy_as_istio_configures_it() {
    for ((name, dir), form) in filters().into_iter().flat_map(|f| Form::ALL.map(|form| (f.clone(), form))) {
        let module = module_bytes(&name);
        let uri = format!("http://gatewasm-modules.test/{name}.wasm");
        // Envoy fetches the module itself here and checks the module's sha256 (the agent's part,
        // image and manifest digest, is in `rendered_manifests_carry_the_packaged_digests_and_run`).
        let remote = json!({"http_uri": {"uri": uri, "cluster": "module-server", "timeout": "30s"}, "sha256": sha256_hex(&module)});
        let plugins = form_docs(&dir, form);
        let run = |plugins: &[Value], expect: &Expect, what: &str| {
            let (server, _) = module_server(&uri, &module);
            let services = start_services(expect);
            let upstream = EchoUpstream::start().unwrap();
            let mut builder = EnvoyBuilder::new()
                .upstream(upstream.addr())
                .cluster(Cluster::new("module-server", server.addr()));
            for wp in plugins {
                let filter = istio_filter(form, wp, json!({ "remote": remote }));
                assert_eq!(
                    serde_json::from_str::<Value>(str_at(
                        &filter,
                        "/typed_config/config/configuration/value"
                    ))
                    .unwrap(),
                    form.wasm(wp)["pluginConfig"]
                );
                builder = builder.raw_filter(filter);
            }
            for (cname, service) in &services {
                builder = builder.cluster(Cluster::new(cname, service.addr()));
            }
            let envoy = builder.start().unwrap_or_else(|e| panic!("{what}: {e:#}"));
            assert!(!server.received().is_empty(), "{what}: Envoy did not fetch the module");
            check_requests(&envoy, expect, what);
            envoy
        };
        // Each alone, held to its filter folder's expect.yaml.
        for wp in &plugins {
            let root_id = form.wasm(wp)["pluginName"].as_str().unwrap();
            let what = format!("{name}/{} ({root_id})", form.file());
            drop(run(std::slice::from_ref(wp), &expectations(&own_folder(root_id)), &what));
        }
        if plugins.len() > 1 {
            // All of them in Istio's order as one gateway: the folder's expect.yaml, in one
            // module's VMs (the base VM, a clone on the main thread, one on the worker).
            let what = format!("{name}/{}", form.file());
            let envoy = run(&istio_order(plugins), &expectations(&dir), &what);
            assert_eq!(envoy.stat(ACTIVE_VMS).unwrap(), Some(3), "{what}: one module's VMs\n{}", envoy.log());
        }
    }
}

#[test]
fn envoy_refuses_a_module_whose_sha256_differs() {
    // Each committed EnvoyFilter as is: its placeholder sha256 matches no module, so Envoy
    // refuses the real module it fetches (and each retry of it), and the filter does what its
    // failure_policy says. FAIL_CLOSED: every request is answered 503 and nothing reaches the
    // upstream. FAIL_OPEN: the filter is left out of every request, which reaches the upstream as
    // if the filter were absent.
    let mut policies = Vec::new();
    let every_filter = filters().into_iter().flat_map(|(folder, dir)| {
        let file = envoyfilter_file(&dir, &folder);
        file.filters.into_iter().map(move |(_, filter)| (folder.clone(), filter))
    });
    for (folder, filter) in every_filter {
        let config = filter.pointer("/typed_config/config").unwrap();
        let name = format!("{folder}/envoyfilter.yaml ({})", str_at(config, "/root_id"));
        let policy = str_at(config, "/failure_policy").to_string();
        let remote = config.pointer("/vm_config/code/remote").unwrap();
        let (server, _) = module_server(str_at(remote, "/http_uri/uri"), &module_bytes(&folder));
        let upstream = EchoUpstream::start().unwrap();
        let envoy = EnvoyBuilder::new()
            .raw_filter(filter.clone())
            .upstream(upstream.addr())
            .cluster(Cluster::new(str_at(remote, "/http_uri/cluster"), server.addr()))
            .component_log_level(Some("wasm:info,config:debug"))
            .start()
            .unwrap();
        // The fetch (and its retries) ends before the listener takes traffic.
        let response = envoy.get("/").unwrap();
        assert!(!server.received().is_empty(), "{name}: the module was served");
        let log = envoy.log();
        assert!(
            log.contains("]: data is invalid"),
            "{name}: Envoy fetched the module and found its sha256 wrong"
        );
        let plugin = str_at(config, "/name");
        assert!(log.contains(&format!("Plugin {plugin} failed to load")), "{name}: the refusal is logged");
        match policy.as_str() {
            "FAIL_CLOSED" => {
                assert_eq!(response.status, 503, "{name}: {}", response.text());
                assert_eq!(response.header("x-echo-upstream"), None, "{name}: nothing reached the upstream");
                assert!(log.contains("Plugin configured to fail closed failed to load"), "{name}");
            }
            "FAIL_OPEN" => {
                // Envoy 1.40 logs "Plugin configured to fail closed failed to load" here too (that
                // line reads the deprecated `fail_open` flag, not failure_policy); the request
                // passing is what shows the policy in force.
                assert_eq!(response.status, 200, "{name}: {}", response.text());
                let echo =
                    response.echo().unwrap_or_else(|e| panic!("{name}: not the upstream's answer: {e}"));
                assert_eq!(echo.path, "/", "{name}: the request reached the upstream unchanged");
                let stats = envoy.admin_get("/stats").unwrap();
                assert!(stats.contains("wasm.remote_load_fetch_failures: 1"), "{name}: {stats}");
                assert!(stats.contains("wasm.remote_load_fetch_successes: 0"), "{name}: {stats}");
                assert!(!stats.contains("wasmcustom."), "{name}: no module ran, so no filter stat exists");
            }
            other => panic!("{name}: failure_policy {other} is not one the manifests use"),
        }
        policies.push(policy);
    }
    // The committed manifests exercise both outcomes.
    assert!(
        policies.iter().any(|p| p == "FAIL_CLOSED") && policies.iter().any(|p| p == "FAIL_OPEN"),
        "{policies:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Native modules on Istio: envoyfilter-native.yaml, with native-loader.yaml's init container

/// A filter folder's `envoyfilter-native.yaml` filter, and the native module's file name, for
/// each folder of a filter with a native module.
fn native_folders() -> Vec<(String, PathBuf, String)> {
    let folders: Vec<_> = filters()
        .into_iter()
        .filter_map(|(name, dir)| shipped(&name).and_then(|f| f.native_file()).map(|file| (name, dir, file)))
        .collect();
    assert!(!folders.is_empty(), "no folder of a filter with a native module");
    folders
}

fn native_filter(dir: &Path, what: &str) -> Value {
    envoyfilter_parts(&one_doc(&dir.join("envoyfilter-native.yaml")), what).filter
}

#[test]
fn each_native_envoyfilter_runs_with_the_module_its_loader_checked() {
    for (name, dir, file) in native_folders() {
        let what = format!("{name}/envoyfilter-native.yaml");
        let module = native_module_bytes(&name);
        // The loader with the module's sha256 where the committed file has the placeholder (what
        // `./scripts/package manifests` writes), run as the pod would before istio-proxy starts.
        let init = with_loader_sha256(&loader_container(&dir, &name), &sha256_hex(&module));
        let modules = tempfile::tempdir().unwrap();
        let loaded = run_loader(&init, &module, modules.path(), &what);
        assert!(loaded.ok, "{what}: the loader refused the module:\n{}", loaded.output);
        assert_eq!(loaded.fetched.len(), 1, "{what}: one download");
        assert!(std::fs::read(modules.path().join(&file)).unwrap() == module, "{what}: {file} as built");
        let filter = with_module_dir(native_filter(&dir, &what), modules.path(), &what);
        let envoy = run_native(&[filter], None, &expectations(&dir), &what);
        // Counters reach Envoy from the module's flush, within a second.
        let wanted: &[&str] =
            if name == "hello" { &["\nhello_requests_total{method=\"GET\"} "] } else { &[] };
        let scrape = envoy.prometheus_until(wanted).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        assert!(
            !scrape.contains("dynamicmodulescustom"),
            "{what}: the loader's runtime flag names them\n{scrape}"
        );
    }
}

#[test]
fn the_native_loader_refuses_a_module_whose_sha256_differs() {
    // Each committed loader as is: its placeholder sha256 matches no module, so the init
    // container stops with the module unwritten, and Envoy, given the EnvoyFilter, refuses to
    // start without the file: the pod never serves without the filter.
    for (name, dir, file) in native_folders() {
        let what = format!("{name}/native-loader.yaml");
        let modules = tempfile::tempdir().unwrap();
        let loaded =
            run_loader(&loader_container(&dir, &name), &native_module_bytes(&name), modules.path(), &what);
        assert!(!loaded.ok, "{what}: the placeholder sha256 passed:\n{}", loaded.output);
        assert_eq!(loaded.fetched.len(), 1, "{what}: the module was downloaded");
        assert!(loaded.output.contains("FAILED"), "{what}: sha256sum says why:\n{}", loaded.output);
        assert!(
            !modules.path().join(&file).exists(),
            "{what}: a refused module is never where Envoy loads it"
        );
        let filter = with_module_dir(native_filter(&dir, &what), modules.path(), &what);
        let upstream = EchoUpstream::start().unwrap();
        let log = EnvoyBuilder::new()
            .raw_filter(filter)
            .upstream(upstream.addr())
            .start_expecting_failure()
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
        assert!(log.contains("Failed to load dynamic module"), "{name}/envoyfilter-native.yaml: {log}");
    }
}

// ---------------------------------------------------------------------------------------------
// envoy --mode validate

/// `envoy --mode validate -c <path>` from the repository root (configs name modules by paths
/// relative to it, as their comments tell users to run them).
fn validate_from_root(path: &Path) -> (bool, String) {
    let out = Command::new(gatewasm_envoy::envoy_binary().unwrap())
        .args(["--mode", "validate", "--disable-hot-restart", "--log-level", "warning", "-c"])
        .arg(path)
        .current_dir(workspace_root())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Every Envoy bootstrap file under `examples/`.
fn example_configs() -> Vec<PathBuf> {
    let files = yaml_files(&workspace_root().join("examples"));
    let configs: Vec<PathBuf> = files
        .into_iter()
        .filter(|p| yaml_docs(p).iter().any(|d| d.get("static_resources").is_some()))
        .collect();
    assert!(configs.len() >= 2, "{configs:?}");
    configs
}

#[test]
fn every_envoy_config_passes_envoy_validate() {
    for path in example_configs() {
        let (ok, output) = validate_from_root(&path);
        assert!(ok && output.contains("OK"), "{}:\n{output}", path.display());
    }
    // Each EnvoyFilter's patches as Envoy gets them: the HTTP filter before the router and the
    // CLUSTER patches' clusters verbatim (DNS names and all), next to a route to an upstream.
    for (name, dir) in filters() {
        let file = envoyfilter_file(&dir, &name);
        let mut builder = EnvoyBuilder::new().upstream("127.0.0.1:9".parse().unwrap());
        for (_, filter) in &file.filters {
            builder = builder.raw_filter(filter.clone());
        }
        let mut clusters =
            builder.bootstrap().unwrap()["static_resources"]["clusters"].as_array().unwrap().clone();
        clusters.extend(file.clusters);
        builder = builder.bootstrap_patch(json!({"static_resources": {"clusters": clusters}}));
        let validation = builder.validate().unwrap();
        assert!(validation.ok, "{name}/envoyfilter.yaml in Envoy:\n{}", validation.output);
    }
}

/// The first HTTP filter of a standalone example in `examples/`, and its `layered_runtime` (if
/// any) as a bootstrap patch.
fn example_filter(path: &str) -> (Value, Value) {
    let doc = one_doc(&workspace_root().join(path));
    let hcm = doc.pointer("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config").unwrap();
    (hcm.pointer("/http_filters/0").unwrap().clone(), json!({"layered_runtime": doc["layered_runtime"]}))
}

/// An example's remote filter running in front of the echo upstream, its module fetched from a
/// local server through the example's cluster.
struct RemoteRun {
    envoy: Envoy,
    /// What the module server received.
    fetched: Vec<gatewasm_envoy::Received>,
    /// The path of the example's module URL.
    module_path: String,
    _upstream: EchoUpstream,
}

/// Starts Envoy with `filter`, whose module source is at the JSON pointer `remote`, with
/// `sha256` in that source and `module` served at its URL.
fn run_remote_example(
    filter: &Value,
    remote: &str,
    sha256: &str,
    module: &[u8],
    runtime: &Value,
) -> RemoteRun {
    let mut filter = filter.clone();
    let source = filter.pointer_mut(remote).unwrap();
    source["sha256"] = json!(sha256);
    let (uri, cluster) =
        (str_at(source, "/http_uri/uri").to_string(), str_at(source, "/http_uri/cluster").to_string());
    let (server, module_path) = module_server(&uri, module);
    let upstream = EchoUpstream::start().unwrap();
    let envoy = EnvoyBuilder::new()
        .raw_filter(filter)
        .upstream(upstream.addr())
        .cluster(Cluster::new(&cluster, server.addr()))
        .bootstrap_patch(runtime.clone())
        .start()
        .unwrap();
    RemoteRun { envoy, fetched: server.received(), module_path, _upstream: upstream }
}

/// The example configuration of `hello`: a greeting for the host, `/admin` refused.
fn greets_and_blocks(envoy: &Envoy, what: &str) {
    let echo = envoy.send(&Request::get("/anything").header("host", "Shop.Example.com")).unwrap().echo();
    assert_eq!(echo.unwrap().header("x-greeting"), Some("hi shop.example.com"), "{what}");
    assert_eq!(envoy.get("/admin/users").unwrap().status, 403, "{what}");
}

#[test]
fn the_standalone_remote_example_loads_its_module_by_sha256() {
    // examples/remote-envoy.yaml's Wasm filter and module cluster, with the sha256 its comment
    // has users put in, in front of the echo upstream.
    let path = "examples/remote-envoy.yaml";
    let text = std::fs::read_to_string(workspace_root().join(path)).unwrap();
    assert_marked_placeholder(&text, MODULE_SHA256_MARK, path);
    let (filter, runtime) = example_filter(path);
    let module = module_bytes("hello");
    let remote = "/typed_config/config/vm_config/code/remote";
    let run = run_remote_example(&filter, remote, &sha256_hex(&module), &module, &runtime);
    assert_eq!(run.fetched[0].path, run.module_path);
    greets_and_blocks(&run.envoy, path);
}

#[test]
fn the_standalone_native_examples_load_their_module() {
    let module = native_module_bytes("hello");
    // From a local file, as the example names it (relative to the repository root, where its
    // comment runs Envoy), with the example's runtime flag for the metrics' names.
    let path = "examples/hello/envoy-native.yaml";
    let (mut filter, runtime) = example_filter(path);
    let file = filter.pointer_mut("/typed_config/dynamic_module_config/module/local/filename").unwrap();
    let built = gatewasm_envoy::native_module("hello").unwrap();
    // Where `cargo build --release -p hello` writes it in the default target directory (the test
    // loads the build wherever $CARGO_TARGET_DIR put it).
    assert_eq!(file.as_str(), Some("target/release/libhello.so"), "{path}: the module cargo builds");
    *file = json!(built.display().to_string());
    let upstream = EchoUpstream::start().unwrap();
    let envoy = EnvoyBuilder::new().raw_filter(filter).upstream(upstream.addr()).bootstrap_patch(runtime);
    let envoy = envoy.start().unwrap();
    greets_and_blocks(&envoy, path);
    envoy
        .prometheus_until(&["\nhello_requests_total{method=\"GET\"} 2\n"])
        .unwrap_or_else(|e| panic!("{path}: {e:#}"));

    // From an HTTP URL with the module's sha256 where the example has the marked placeholder.
    let path = "examples/remote-native-envoy.yaml";
    let text = std::fs::read_to_string(workspace_root().join(path)).unwrap();
    assert_marked_placeholder(&text, &format!("{NATIVE_SHA256_MARK} hello"), path);
    let (filter, runtime) = example_filter(path);
    let remote = "/typed_config/dynamic_module_config/module/remote";
    let run = run_remote_example(&filter, remote, &sha256_hex(&module), &module, &runtime);
    assert!(!run.fetched.is_empty() && run.fetched.iter().all(|r| r.path == run.module_path), "{path}");
    greets_and_blocks(&run.envoy, path);

    // The placeholder: Envoy refuses the module it fetched, and Envoy 1.40 then starts without the
    // filter (a remote module fails open; the example's comment says so): the request the filter
    // blocks reaches the upstream, and the refusal is counted.
    let run = run_remote_example(&filter, remote, PLACEHOLDER_DIGEST, &module, &runtime);
    assert!(!run.fetched.is_empty(), "{path}: the module was fetched");
    let log = run.envoy.log();
    assert!(log.contains("module will not be loaded"), "{path}: the refusal is logged\n{log}");
    let response = run.envoy.get("/admin/users").unwrap();
    assert_eq!(response.status, 200, "{path}: the filter is left out");
    assert_eq!(response.echo().unwrap().header("x-greeting"), None, "{path}: no filter ran");
    let stats = run.envoy.admin_get("/stats?filter=dynamic_modules").unwrap();
    assert!(stats.contains("dynamic_modules.remote_fetch_error.config_name.hello: 1"), "{path}: {stats}");
}

// ---------------------------------------------------------------------------------------------
// gatewasm-pack manifests

/// Runs the filters Istio makes of a folder's rendered WasmPlugins or TrafficExtensions, in its
/// order, at 2 workers, and checks the folder's `expect.yaml` and that they share one module's
/// VMs: the base VM, a clone on the main thread and one per worker.
fn run_rendered_chain(chain: Vec<Value>, expect: &Expect, what: &str) {
    let gateway = |chain: &[Value]| {
        let upstream = EchoUpstream::start().unwrap();
        let services = start_services(expect);
        let mut builder = EnvoyBuilder::new().upstream(upstream.addr()).concurrency(2);
        for filter in chain {
            builder = builder.raw_filter(filter.clone());
        }
        for (cname, service) in &services {
            builder = builder.cluster(Cluster::new(cname, service.addr()));
        }
        let envoy = builder.start().unwrap_or_else(|e| panic!("{what}: {e:#}"));
        check_requests(&envoy, expect, what);
        (envoy.stat(ACTIVE_VMS).unwrap(), envoy.stop())
    };
    let (active, log) = gateway(&chain);
    assert_eq!(active, Some(4), "{what}: one module's VMs\n{log}");
    if chain.len() > 1 {
        // Istio's agent strips the ISTIO_META_* variables istiod adds (each plugin's resource
        // version among them), so the five share the VMs; one whose vmConfig.env differs from the
        // others' gets VMs of its own (Envoy 1.40 keeps VMs with different environments apart).
        let mut chain = chain;
        chain[0]["typed_config"]["config"]["vm_config"]["environment_variables"] =
            json!({"key_values": {"REGION": "eu"}});
        let (active, log) = gateway(&chain);
        assert_eq!(active, Some(8), "{what}, one vmConfig.env apart\n{log}");
    }
}

#[test]
fn rendered_manifests_carry_the_packaged_digests_and_run() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    common::pack_ok(&["package", "--no-build", "--wasm-opt", "skip", "--out", dir, "--tag", "t1"]);
    let stdout = common::pack_ok(&["manifests", "--registry", "registry.test:5000/team", "--out", dir]);
    let validator = Validator::new();
    let rendered = out.path().join("istio");
    for f in SHIPPED {
        let (image, _) = gatewasm_pack::image::Image::read_layout(&out.path().join(f.name)).unwrap();
        let digest = image.digest().strip_prefix("sha256:").unwrap().to_string();
        let module = std::fs::read(out.path().join(format!("{}.wasm", f.name))).unwrap();
        let module_sha = sha256_hex(&module);
        assert!(stdout.contains(&digest) && stdout.contains(&module_sha), "{stdout}");

        for file in ["wasmplugin.yaml", "envoyfilter.yaml", "trafficextension.yaml"] {
            let path = &rendered.join(f.name).join(file);
            let text = std::fs::read_to_string(path).unwrap();
            assert!(!text.contains(PLACEHOLDER_DIGEST), "{}: a placeholder is left", path.display());
            assert!(
                !text.contains(PLACEHOLDER_REGISTRY),
                "{}: the placeholder registry is left",
                path.display()
            );
            for doc in yaml_docs(path) {
                let errors = validator.errors(&doc);
                assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
            }
        }
        // What Istio's agent does with the rendered WasmPlugins and TrafficExtensions: the image
        // whose manifest digest is their sha256 (the layout holds the bytes the registry serves,
        // byte for byte: see tests/registry.rs), plugin.wasm from its last layer, given to Envoy
        // as a local file.
        assert_eq!(image.digest(), format!("sha256:{digest}"));
        let entries = common::untar_gz(&image.layers.last().unwrap().data);
        let plugin = entries.iter().find(|e| e.0 == "plugin.wasm").unwrap();
        assert!(plugin.2 == module, "{}: plugin.wasm is the packaged module", f.name);
        let plugin_path = out.path().join(format!("{}.plugin.wasm", f.name));
        std::fs::write(&plugin_path, &plugin.2).unwrap();
        let expect = expectations(&manifests_dir().join(f.name));
        for form in Form::ALL {
            let what = format!("rendered {}/{}", f.name, form.file());
            let plugins = form_docs(&rendered.join(f.name), form);
            let committed_plugins = form_docs(&manifests_dir().join(f.name), form);
            assert_eq!(plugins.len(), committed_plugins.len(), "{what}");
            for (wp, mut committed) in plugins.iter().zip(committed_plugins) {
                let wasm = form.wasm(wp);
                assert_eq!(wasm["url"], format!("oci://registry.test:5000/team/{}:t1", f.name), "{what}");
                assert_eq!(wasm["sha256"], digest, "{what}: the image's manifest digest");
                // Everything else is the committed manifest.
                form.wasm_mut(&mut committed)["url"] = wasm["url"].clone();
                form.wasm_mut(&mut committed)["sha256"] = json!(digest);
                assert_eq!(wp, &committed, "{what}");
            }
            let chain: Vec<Value> = istio_order(plugins)
                .iter()
                .map(|wp| istio_filter(form, wp, json!({"local": {"filename": plugin_path}})))
                .collect();
            run_rendered_chain(chain, &expect, &what);
        }

        // The rendered EnvoyFilters run unchanged with the packaged module.
        let what = format!("rendered {}/envoyfilter.yaml", f.name);
        let file = envoyfilter_file(&rendered.join(f.name), &what);
        let filters = envoyfilter_order(&file);
        if f.name == BUNDLE {
            for filter in &filters {
                assert_eq!(
                    str_at(filter, "/typed_config/config/vm_config/vm_id"),
                    format!("{BUNDLE}-{}", vm_id_suffix(&module_sha)),
                    "{what}: the vm_id names the packaged build"
                );
            }
        }
        drop(run_envoyfilters(&filters, &file.clusters, &module, &expect, &what));
        assert_eq!(
            one_doc(&rendered.join(f.name).join("kustomization.yaml")),
            one_doc(&manifests_dir().join(f.name).join("kustomization.yaml"))
        );

        // The native forms: the loader with the packaged native module's sha256 and nothing else
        // changed, which then loads that module for the unchanged EnvoyFilter.
        let Some(file) = f.native_file() else {
            for file in NATIVE_FILES {
                assert!(
                    !rendered.join(f.name).join(file).exists(),
                    "{}: {file} without a native module",
                    f.name
                );
            }
            continue;
        };
        let native = std::fs::read(out.path().join(&file)).unwrap();
        let native_sha = sha256_hex(&native);
        assert!(stdout.contains(&format!("native loader    sha256: {native_sha}")), "{stdout}");
        for nf in NATIVE_FILES {
            let text = std::fs::read_to_string(rendered.join(f.name).join(nf)).unwrap();
            assert!(!text.contains(PLACEHOLDER_DIGEST), "rendered {}/{nf}: a placeholder is left", f.name);
        }
        let what = format!("rendered {}/envoyfilter-native.yaml", f.name);
        let native_ef = one_doc(&rendered.join(f.name).join("envoyfilter-native.yaml"));
        assert_eq!(validator.errors(&native_ef), Vec::<String>::new(), "{what}");
        assert_eq!(
            native_ef,
            one_doc(&manifests_dir().join(f.name).join("envoyfilter-native.yaml")),
            "{what}"
        );
        let init = loader_container(&rendered.join(f.name), f.name);
        let committed = loader_container(&manifests_dir().join(f.name), f.name);
        assert_eq!(init, with_loader_sha256(&committed, &native_sha), "{what}: the packaged module's sha256");
        let modules = tempfile::tempdir().unwrap();
        let loaded = run_loader(&init, &native, modules.path(), &what);
        assert!(loaded.ok, "{what}: {}", loaded.output);
        let filter = with_module_dir(native_filter(&rendered.join(f.name), &what), modules.path(), &what);
        drop(run_native(&[filter], None, &expect, &what));
    }
    let top = one_doc(&rendered.join("kustomization.yaml"));
    let names: Vec<&str> = SHIPPED.iter().map(|f| f.name).filter(|n| *n != BUNDLE).collect();
    assert_eq!(top["resources"], json!(names));
    assert!(rendered.join("module-server").join("module-server.yaml").is_file());

    // Without the layouts: an error that says what to run first.
    let empty = tempfile::tempdir().unwrap();
    let failed =
        common::pack(&["manifests", "--registry", "r.test", "--out", empty.path().to_str().unwrap()]);
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("run `gatewasm-pack package` first"), "{stderr}");
    let failed = common::pack(&["manifests", "--out", dir]);
    assert!(String::from_utf8_lossy(&failed.stderr).contains("--registry"), "registry required");
}

#[test]
fn expect_services_answer_under_istio_cluster_names() {
    // The `services` of an expect.yaml (for filters that call a JWKS endpoint, an auth service…):
    // scripted replies under a cluster named as Istio names it, which Envoy accepts as is.
    let expect: Expect = serde_json::from_value(
        yaml_docs_str(
            "requests: []\nservices:\n  outbound|8080||auth.test.svc.cluster.local:\n    \
             /check: {status: 201, headers: {x-user: alice}, body: allowed}\n",
        )
        .unwrap()
        .remove(0),
    )
    .unwrap();
    let services = start_services(&expect);
    let name = "outbound|8080||auth.test.svc.cluster.local";
    let upstream = EchoUpstream::start().unwrap();
    let envoy = EnvoyBuilder::new()
        .upstream(upstream.addr())
        .cluster(Cluster::new(name, services[name].addr()))
        .route_patch(json!({"route": {"cluster": name}}))
        .start()
        .unwrap();
    let response = envoy.get("/check").unwrap();
    assert_eq!((response.status, response.text().as_str()), (201, "allowed"));
    assert_eq!(response.header("x-user"), Some("alice"));
    assert_eq!(envoy.get("/other").unwrap().status, 404, "unscripted paths");
}

// ---------------------------------------------------------------------------------------------
// The bundle (bundle/): the five filters from one image, selected by pluginName / root_id

/// The Envoy gauge of live V8 VMs.
const ACTIVE_VMS: &str = "wasm.envoy.wasm.runtime.v8.active";

/// `gatewasm.wasm` packaged with the CLI as the image `gatewasm-bundle` (tag `t1`) in `out`:
/// the image's manifest digest (hex) and what Istio's agent hands Envoy, `plugin.wasm` from its
/// last layer, written to a file.
fn bundle_image(out: &Path) -> (String, PathBuf) {
    let module =
        gatewasm_envoy::wasm_artifact("gatewasm.wasm", "gatewasm-bundle").unwrap_or_else(|e| panic!("{e:#}"));
    let dir = out.to_str().unwrap();
    common::pack_ok(&[
        "file",
        module.to_str().unwrap(),
        "--name",
        "gatewasm-bundle",
        "--wasm-opt",
        "skip",
        "--out",
        dir,
        "--tag",
        "t1",
    ]);
    let (image, _) = gatewasm_pack::image::Image::read_layout(&out.join("gatewasm-bundle")).unwrap();
    let entries = common::untar_gz(&image.layers.last().unwrap().data);
    let plugin = &entries.iter().find(|e| e.0 == "plugin.wasm").unwrap().2;
    assert!(*plugin == std::fs::read(&module).unwrap(), "plugin.wasm is the module");
    let plugin_path = out.join("gatewasm-bundle.plugin.wasm");
    std::fs::write(&plugin_path, plugin).unwrap();
    (image.digest().strip_prefix("sha256:").unwrap().to_string(), plugin_path)
}

/// The fenced ```yaml blocks of a Markdown text.
fn yaml_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim_start().starts_with("```yaml") => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_start().starts_with("```") => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    blocks
}

#[test]
fn the_bundle_readme_forms_match_istio_crds_and_run() {
    let text = std::fs::read_to_string(workspace_root().join("bundle").join("README.md")).unwrap();
    let docs: Vec<Value> = yaml_blocks(&text)
        .iter()
        .flat_map(|b| yaml_docs_str(b).unwrap_or_else(|e| panic!("{e}\n{b}")))
        .collect();
    let ids: Vec<&str> = gatewasm_envoy::BUNDLED.iter().map(|(_, id)| *id).collect();
    let validator = Validator::new();
    let out = tempfile::tempdir().unwrap();
    let (_, plugin_path) = bundle_image(out.path());
    let module = std::fs::read(&plugin_path).unwrap();
    let (mut plugins, mut envoyfilters) = (0, 0);
    for doc in &docs {
        let name = str_at(doc, "/metadata/name");
        assert_eq!(validator.errors(doc), Vec::<String>::new(), "bundle/README.md: {name}");
        match str_at(doc, "/kind") {
            "WasmPlugin" => {
                plugins += 1;
                assert_committed_image(doc, BUNDLE, name);
                let root_id = str_at(doc, "/spec/pluginName");
                assert!(ids.contains(&root_id), "{name}: pluginName {root_id} is no root id of the bundle");
                // As Istio's agent runs it: the bundle from the image as a local file.
                let filter = istio_filter(Form::WasmPlugin, doc, json!({"local": {"filename": plugin_path}}));
                let upstream = EchoUpstream::start().unwrap();
                let envoy = EnvoyBuilder::new()
                    .raw_filter(filter)
                    .upstream(upstream.addr())
                    .start()
                    .unwrap_or_else(|e| panic!("bundle/README.md {name}: {e:#}"));
                let answer = envoy.send(&Request::get("/api/x")).unwrap();
                assert!(
                    answer.status == 200 && !envoy.log().contains("invalid plugin configuration"),
                    "{name}"
                );
            }
            _ => {
                envoyfilters += 1;
                let parts = envoyfilter_parts(doc, "bundle/README.md");
                let config = parts.filter.pointer("/typed_config/config").unwrap();
                assert!(ids.contains(&str_at(config, "/root_id")), "{name}: root_id");
                assert!(str_at(config, "/vm_config/vm_id").starts_with("gatewasm-bundle-"), "{name}: vm_id");
                let mut ef = doc.clone();
                for patch in ef.pointer_mut("/spec/configPatches").and_then(Value::as_array_mut).unwrap() {
                    if let Some(remote) =
                        patch.pointer_mut("/patch/value/typed_config/config/vm_config/code/remote")
                    {
                        remote["sha256"] = json!(sha256_hex(&module));
                    }
                }
                let expect: Expect = serde_json::from_value(json!({"requests": [{
                    "request": {"path": "/api/x"}, "status": 200,
                    "upstream": {"headers": {"x-gateway": "gatewasm"}}
                }]}))
                .unwrap();
                run_envoyfilter(&ef, &module, &expect, &format!("bundle/README.md {name}"));
            }
        }
    }
    assert!(plugins >= 2 && envoyfilters >= 1, "{plugins} WasmPlugins, {envoyfilters} EnvoyFilters");
}
