//! The manifests of `istio-envoyfilters/` as the tests read them: YAML files and documents, CRD
//! schemas, and each folder's `expect.yaml` (requests, the answers they must get, the services a
//! filter calls) sent through a running Envoy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gatewasm_envoy::{Envoy, Reply, Request, ScriptedUpstream};
use gatewasm_pack::compile::workspace_root;
use gatewasm_pack::manifests::{filter_dirs, MANIFESTS_DIR};
use serde::Deserialize;
use serde_json::{json, Value};

/// `istio-envoyfilters/` of this workspace.
pub fn manifests_dir() -> PathBuf {
    workspace_root().join(MANIFESTS_DIR)
}

/// Every filter folder: (name, path). Fails when there is none (the discovery itself is broken).
pub fn filters() -> Vec<(String, PathBuf)> {
    let dirs = filter_dirs(&manifests_dir()).unwrap();
    assert!(!dirs.is_empty(), "no filter folders found in {}", manifests_dir().display());
    dirs.into_iter().map(|d| (d.file_name().unwrap().to_string_lossy().into_owned(), d)).collect()
}

/// The YAML documents of a file, as JSON values.
pub fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    yaml_docs_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn yaml_docs_str(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).map_err(|e| e.to_string())?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

pub fn one_doc(path: &Path) -> Value {
    let mut docs = yaml_docs(path);
    assert_eq!(docs.len(), 1, "{}: one document expected", path.display());
    docs.remove(0)
}

/// The YAML files directly in `dir`, sorted.
pub fn yaml_files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    out.sort();
    out
}

/// Every YAML file under `dir` (recursively), but the CRD copy in `schemas/`.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "schemas") {
                continue;
            }
            out.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out.sort();
    out
}
/// The string at `pointer`; panics naming the pointer when there is none.
pub fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("no string at {pointer} in {v:#}"))
}

/// A kind's CRD schema as a Kubernetes API server applies it with strict field validation
/// (`kubectl apply`'s default): the `openAPIV3Schema` of the served, stored version, where an
/// object that lists `properties` and does not say `x-kubernetes-preserve-unknown-fields`
/// accepts no other field, plus the `apiVersion`, `kind` and `metadata` every object has. The
/// CRD is the one of `kind` among the YAML files directly in `dir`.
pub fn crd_schema(dir: &Path, kind: &str) -> Value {
    let crds: Vec<Value> = yaml_files_in(dir).iter().flat_map(|p| yaml_docs(p)).collect();
    let crd = crds
        .iter()
        .find(|c| c.pointer("/spec/names/kind").and_then(Value::as_str) == Some(kind))
        .unwrap_or_else(|| panic!("no CRD for {kind}"));
    let group = str_at(crd, "/spec/group");
    let version = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .and_then(|vs| vs.iter().find(|v| v["storage"] == true && v["served"] == true))
        .unwrap_or_else(|| panic!("{kind}: no served storage version"));
    let api_version = format!("{group}/{}", str_at(version, "/name"));
    let mut schema = version.pointer("/schema/openAPIV3Schema").unwrap().clone();
    strict(&mut schema);
    let props = schema["properties"].as_object_mut().unwrap();
    props.insert("apiVersion".into(), json!({"enum": [api_version]}));
    props.insert("kind".into(), json!({"enum": [kind]}));
    props.insert(
        "metadata".into(),
        json!({
            "type": "object",
            "required": ["name"],
            "additionalProperties": false,
            "properties": {
                // DNS-1123 subdomain, as Kubernetes requires of object names.
                "name": {"type": "string", "maxLength": 253,
                         "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"},
                "namespace": {"type": "string", "maxLength": 63, "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}}
            }
        }),
    );
    schema["required"] = json!(["apiVersion", "kind", "metadata", "spec"]);
    schema
}

/// The CRD schemas of some kinds, compiled once: what a Kubernetes API server checks before any
/// CEL rule (those are checked by hand, per test).
pub struct CrdSchemas {
    kinds: BTreeMap<String, jsonschema::Validator>,
}

impl CrdSchemas {
    /// The schemas of `kinds`, from the CRDs in the YAML files directly in `dir`.
    pub fn new(dir: &Path, kinds: &[&str]) -> Self {
        let mut compiled = BTreeMap::new();
        for kind in kinds {
            // OpenAPI 3.0 schemas extend a subset of JSON Schema Wright draft 00 (draft 5), which
            // validates as draft 4 for every keyword these CRDs use.
            let validator = jsonschema::draft4::new(&crd_schema(dir, kind))
                .unwrap_or_else(|e| panic!("{kind} schema: {e}"));
            compiled.insert(kind.to_string(), validator);
        }
        CrdSchemas { kinds: compiled }
    }

    /// Every schema problem with `doc`, each as `<path>: <message>`; a kind without a schema
    /// here is one.
    pub fn errors(&self, doc: &Value) -> Vec<String> {
        let kind = doc["kind"].as_str().unwrap_or_default();
        match self.kinds.get(kind) {
            Some(validator) => {
                validator.iter_errors(doc).map(|e| format!("{}: {e}", e.instance_path())).collect()
            }
            None => vec![format!("/kind: {kind:?} is none of {:?}", self.kinds.keys().collect::<Vec<_>>())],
        }
    }
}

/// A broken manifest: what is wrong with it, the valid document, the edit that breaks it, and
/// what the error must mention.
pub type BrokenCase<'a> = (&'a str, &'a Value, fn(&mut Value), &'a str);

/// Checks that `errors` refuses each case's broken document, naming what the case expects.
pub fn assert_each_refused(cases: &[BrokenCase<'_>], errors: impl Fn(&Value) -> Vec<String>) {
    for (what, doc, edit, expected) in cases {
        let mut broken = (*doc).clone();
        edit(&mut broken);
        let errors = errors(&broken);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{what}: expected an error mentioning {expected:?}, got {errors:#?}"
        );
    }
}

/// Makes `schema` refuse unknown fields where a Kubernetes API server would.
pub fn strict(schema: &mut Value) {
    let Some(obj) = schema.as_object_mut() else { return };
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if obj.contains_key("properties") && !preserve && !obj.contains_key("additionalProperties") {
        obj.insert("additionalProperties".into(), Value::Bool(false));
    }
    for (key, value) in obj.iter_mut() {
        match key.as_str() {
            "properties" => value.as_object_mut().into_iter().flatten().for_each(|(_, v)| strict(v)),
            "items" | "additionalProperties" => strict(value),
            "anyOf" | "allOf" | "oneOf" => value.as_array_mut().into_iter().flatten().for_each(strict),
            _ => {}
        }
    }
}

/// A folder's `expect.yaml`: requests and what must come of them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub requests: Vec<Case>,
    /// Clusters the filter calls (JWKS, auth service, …), by the name its config uses, each
    /// answered by a scripted server: path → reply.
    #[serde(default)]
    pub services: BTreeMap<String, BTreeMap<String, ScriptedReply>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub request: CaseRequest,
    pub status: u16,
    #[serde(default)]
    pub upstream: Option<CaseUpstream>,
    /// Response headers: a value, or null for "absent".
    #[serde(default)]
    pub response_headers: BTreeMap<String, Option<String>>,
    #[serde(default)]
    pub body_contains: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseRequest {
    #[serde(default = "get")]
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
}

fn get() -> String {
    "GET".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseUpstream {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, Option<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedReply {
    #[serde(default = "ok")]
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
}

fn ok() -> u16 {
    200
}

/// A folder's `expect.yaml`, parsed.
pub fn expectations(dir: &Path) -> Expect {
    let doc = one_doc(&dir.join("expect.yaml"));
    serde_json::from_value(doc).unwrap_or_else(|e| panic!("{}/expect.yaml: {e}", dir.display()))
}

/// The scripted servers of `expect.services`, by cluster name.
pub fn start_services(expect: &Expect) -> BTreeMap<String, ScriptedUpstream> {
    expect
        .services
        .iter()
        .map(|(cluster, replies)| {
            let server = ScriptedUpstream::start().unwrap();
            for (path, r) in replies {
                let mut reply = Reply::status(r.status).body(r.body.clone());
                for (k, v) in &r.headers {
                    reply = reply.header(k, v);
                }
                server.set(path, reply);
            }
            (cluster.clone(), server)
        })
        .collect()
}

/// A server for the module at the path of `uri`, as the gateway's module server would.
pub fn module_server(uri: &str, module: &[u8]) -> (ScriptedUpstream, String) {
    let path =
        uri.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap_or_else(|| panic!("no path in {uri}"));
    let server = ScriptedUpstream::start().unwrap();
    server.set(&path, Reply::status(200).header("content-type", "application/wasm").body(module.to_vec()));
    (server, path)
}

/// Sends every request of `expect` and checks the answers.
pub fn check_requests(envoy: &Envoy, expect: &Expect, what: &str) {
    for case in &expect.requests {
        let r = &case.request;
        let mut request = Request::new(&r.method, &r.path).body(r.body.clone());
        for (k, v) in &r.headers {
            request = request.header(k, v);
        }
        let response = envoy.send(&request).unwrap();
        let label = format!("{what}: {} {}", r.method, r.path);
        assert_eq!(response.status, case.status, "{label}: {}", response.text());
        for (name, value) in &case.response_headers {
            assert_eq!(response.header(name), value.as_deref(), "{label}: response header {name}");
        }
        if let Some(needle) = &case.body_contains {
            assert!(response.text().contains(needle.as_str()), "{label}: body {:?}", response.text());
        }
        if let Some(upstream) = &case.upstream {
            let echo =
                response.echo().unwrap_or_else(|e| panic!("{label}: not the echo upstream's answer: {e}"));
            if let Some(path) = &upstream.path {
                assert_eq!(&echo.path, path, "{label}: upstream path");
            }
            for (name, value) in &upstream.headers {
                assert_eq!(echo.header(name), value.as_deref(), "{label}: upstream header {name}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Native modules: the init containers that put them on a gateway's pods

/// Where the native forms put the modules on a gateway's pods: the init containers write there,
/// Envoy loads from there.
pub const MODULE_MOUNT: &str = "/var/lib/gatewasm/modules";

/// The built native module of `package`; fails (never skips) naming the build when missing.
pub fn native_module_bytes(package: &str) -> Vec<u8> {
    let path = gatewasm_envoy::native_module(package).unwrap_or_else(|e| panic!("{e}"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What an init container of the native forms did, run on this machine.
pub struct Loaded {
    /// Whether the script exited 0 (the kubelet would then start the next container).
    pub ok: bool,
    /// Its standard output and error.
    pub output: String,
    /// What the server the script fetched from received.
    pub fetched: Vec<gatewasm_envoy::Received>,
}

/// Runs the script of an init container of the native forms (`command: [sh, -c]`, the script
/// in `args`) as the pod would, with its volume (mounted at [`MODULE_MOUNT`]) moved to `dir`
/// and the module server it names answered by a local server holding `module` at the path of
/// its URL. Checks that the container mounts the volume where the script writes.
pub fn run_loader(container: &Value, module: &[u8], dir: &Path, what: &str) -> Loaded {
    assert_eq!(container["command"], json!(["sh", "-c"]), "{what}: a shell script");
    assert_eq!(
        container.pointer("/volumeMounts/0/mountPath"),
        Some(&json!(MODULE_MOUNT)),
        "{what}: the modules' volume"
    );
    let script = str_at(container, "/args/0");
    let url_at = script.find("http://").unwrap_or_else(|| panic!("{what}: no http:// URL in {script}"));
    let url = script[url_at..].split_whitespace().next().unwrap_or_default();
    let (server, path) = module_server(url, module);
    let authority = url.trim_start_matches("http://").split('/').next().unwrap_or_default();
    let local = script
        .replace(&format!("http://{authority}/"), &format!("http://{}/", server.addr()))
        .replace(MODULE_MOUNT, &dir.display().to_string());
    let out = std::process::Command::new("sh").arg("-c").arg(&local).output().unwrap();
    let fetched = server.received();
    assert!(fetched.iter().all(|r| r.path == path), "{what}: fetched {fetched:?}");
    Loaded {
        ok: out.status.success(),
        output: format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        fetched,
    }
}

/// The HTTP filter of a native form (`envoy.filters.http.dynamic_modules`) with its module file
/// under [`MODULE_MOUNT`] moved to `dir`, as the init container wrote it there.
pub fn with_module_dir(mut filter: Value, dir: &Path, what: &str) -> Value {
    let file = filter
        .pointer_mut("/typed_config/dynamic_module_config/module/local/filename")
        .unwrap_or_else(|| panic!("{what}: no module.local.filename"));
    let name = file.as_str().and_then(|f| f.strip_prefix(&format!("{MODULE_MOUNT}/"))).map(str::to_string);
    let name = name.unwrap_or_else(|| panic!("{what}: the module is not under {MODULE_MOUNT}: {file}"));
    *file = json!(dir.join(name).display().to_string());
    filter
}

/// The init container `container` with `sha256` where the committed file has the placeholder
/// (what `gatewasm-pack manifests` writes).
pub fn with_loader_sha256(container: &Value, sha256: &str) -> Value {
    let mut container = container.clone();
    let script = str_at(&container, "/args/0").replace(gatewasm_pack::manifests::PLACEHOLDER_DIGEST, sha256);
    container["args"][0] = json!(script);
    container
}

/// Starts Envoy with the native `filters` (in order) in front of the echo upstream, the
/// services of `expect` under their cluster names, `route` merged into the route (per-route
/// filter configs) and the runtime flag that names the modules' metrics as the Wasm filters'
/// (what the native forms set: Istio's `runtimeValues`), then checks `expect`'s requests.
pub fn run_native(
    filters: &[Value],
    route: Option<Value>,
    expect: &Expect,
    what: &str,
) -> gatewasm_envoy::Envoy {
    let services = start_services(expect);
    let upstream = gatewasm_envoy::EchoUpstream::start().unwrap();
    let mut builder = gatewasm_envoy::EnvoyBuilder::new().upstream(upstream.addr()).bootstrap_patch(json!({
        "layered_runtime": {"layers": [{"name": "static",
            "static_layer": {gatewasm_envoy::STRIP_MODULE_STAT_PREFIX: true}}]}
    }));
    for filter in filters {
        builder = builder.raw_filter(filter.clone());
    }
    if let Some(route) = route {
        builder = builder.route_patch(route);
    }
    for (cname, service) in &services {
        builder = builder.cluster(gatewasm_envoy::Cluster::new(cname, service.addr()));
    }
    let envoy = builder.start().unwrap_or_else(|e| panic!("{what}: {e:#}"));
    check_requests(&envoy, expect, what);
    envoy
}
