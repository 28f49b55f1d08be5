//! The Envoy Gateway forms of `istio-envoyfilters/envoy-gateway/`, proven without a cluster: the
//! `EnvoyProxy` and the `EnvoyExtensionPolicy` against Envoy Gateway's CRD schemas (the copy in
//! `istio-envoyfilters/schemas/envoy-gateway/`), their agreement with the filter folders, the
//! EnvoyProxy's init containers run on this machine to put the native modules where the policy's
//! filters load them, the Envoy config Envoy Gateway makes of the policy run in a real Envoy 1.40,
//! and `gatewasm-pack manifests` filling in the modules' sha256s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};

use common::manifests::{
    assert_each_refused, expectations, filters, manifests_dir, native_module_bytes, one_doc, run_loader,
    run_native, str_at, with_loader_sha256, with_module_dir, yaml_docs, BrokenCase, CrdSchemas, MODULE_MOUNT,
};
use gatewasm_pack::manifests::{
    ENVOY_GATEWAY_DIR, ENVOY_GATEWAY_FILES, NATIVE_SHA256_MARK, PLACEHOLDER_DIGEST, PLACEHOLDER_REGISTRY,
};
use gatewasm_pack::{sha256_hex, Filter, BUNDLE, SHIPPED};
use serde_json::{json, Value};

/// The Envoy Gateway kinds of the folder, each checked against its CRD.
const KINDS: [&str; 2] = ["EnvoyProxy", "EnvoyExtensionPolicy"];

/// The Envoy whose ABI the native modules are built for, as an image tag prefix.
const ENVOY_IMAGE: &str = "docker.io/envoyproxy/envoy:distroless-v1.40.";

/// What Envoy Gateway names a policy's dynamic module filter (`internal/xds/translator/
/// dynamicmodule.go`, `dynamicModuleFilterName`, and `irConfigNameForDynamicModule` in
/// `internal/gatewayapi/envoyextensionpolicy.go`, v1.9.0).
fn eg_filter_name(policy: &Value, index: usize) -> String {
    format!(
        "envoy.filters.http.dynamic_modules/envoyextensionpolicy/{}/{}/dynamic-module/{index}",
        str_at(policy, "/metadata/namespace"),
        str_at(policy, "/metadata/name")
    )
}

fn folder() -> PathBuf {
    manifests_dir().join(ENVOY_GATEWAY_DIR)
}

fn schemas() -> PathBuf {
    manifests_dir().join("schemas").join("envoy-gateway")
}

/// Every shipped filter with a native module.
fn natives() -> Vec<Filter> {
    SHIPPED.iter().copied().filter(|f| f.native).collect()
}

/// Checks manifests against Envoy Gateway's CRDs: JSON Schema with the API server's strict
/// field validation, then the CRDs' CEL rules (`x-kubernetes-validations`) that concern these
/// manifests, by hand.
struct Validator {
    crds: CrdSchemas,
}

impl Validator {
    fn new() -> Self {
        Validator { crds: CrdSchemas::new(&schemas(), &KINDS) }
    }

    /// Every problem with `doc`, each as `<path>: <message>`.
    fn errors(&self, doc: &Value) -> Vec<String> {
        let kind = doc["kind"].as_str().unwrap_or_default();
        let mut errors = self.crds.errors(doc);
        let spec = &doc["spec"];
        let set = |v: &Value, field: &str| v.get(field).is_some_and(|f| !f.is_null());
        if kind == "EnvoyExtensionPolicy" {
            if set(spec, "targetRef") == set(spec, "targetRefs") && !set(spec, "targetSelectors") {
                errors.push("/spec: either targetRef or targetRefs must be used".into());
            }
            const TARGET_KINDS: [&str; 7] =
                ["Gateway", "ListenerSet", "HTTPRoute", "GRPCRoute", "UDPRoute", "TCPRoute", "TLSRoute"];
            for (i, target) in spec["targetRefs"].as_array().into_iter().flatten().enumerate() {
                if target["group"] != "gateway.networking.k8s.io"
                    || !TARGET_KINDS.contains(&target["kind"].as_str().unwrap_or_default())
                {
                    errors.push(format!(
                        "/spec/targetRefs/{i}: this policy can only target {TARGET_KINDS:?} of \
                         gateway.networking.k8s.io"
                    ));
                }
            }
        } else {
            for (i, module) in spec["dynamicModules"].as_array().into_iter().flatten().enumerate() {
                let source = &module["source"];
                // `type` defaults to Local before the rules run.
                let remote = source["type"] == "Remote";
                if remote != set(source, "remote") {
                    errors.push(format!(
                        "/spec/dynamicModules/{i}/source: If type is Remote, remote field needs to be set."
                    ));
                }
                if !remote && !set(source, "local") {
                    errors.push(format!(
                        "/spec/dynamicModules/{i}/source: If type is Local, local field needs to be set."
                    ));
                }
                if remote && set(source, "local") {
                    errors.push(format!(
                        "/spec/dynamicModules/{i}/source: If type is Remote, local field must not be set."
                    ));
                }
            }
            let kubernetes = spec.pointer("/provider/kubernetes").unwrap_or(&Value::Null);
            if set(kubernetes, "envoyDeployment") && set(kubernetes, "envoyDaemonSet") {
                errors.push(
                    "/spec/provider/kubernetes: only one of envoyDeployment or envoyDaemonSet can be specified"
                        .into(),
                );
            }
            let container = kubernetes.pointer("/envoyDeployment/container").unwrap_or(&Value::Null);
            if set(container, "image") && set(container, "imageRepository") {
                errors.push(
                    "/spec/provider/kubernetes/envoyDeployment/container: Either image or imageRepository \
                     can be set."
                        .into(),
                );
            }
        }
        errors
    }
}

/// The committed (or rendered, in `dir`) EnvoyProxy and EnvoyExtensionPolicy.
fn forms(dir: &Path) -> (Value, Value) {
    let proxy = one_doc(&dir.join("envoyproxy.yaml"));
    let policy = one_doc(&dir.join("envoyextensionpolicy.yaml"));
    assert_eq!(
        (proxy["kind"].as_str(), policy["kind"].as_str()),
        (Some("EnvoyProxy"), Some("EnvoyExtensionPolicy"))
    );
    (proxy, policy)
}

/// The EnvoyProxy's init container that loads `f`'s native module.
fn init_container<'a>(proxy: &'a Value, f: &str) -> &'a Value {
    let inits = proxy.pointer("/spec/provider/kubernetes/envoyDeployment/initContainers").unwrap();
    let name = format!("gatewasm-native-{f}");
    inits
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name.as_str())
        .unwrap_or_else(|| panic!("no init container {name}"))
}

/// The init container of a filter folder's `native-loader.yaml`.
fn folder_init_container(dir: &Path) -> Value {
    one_doc(&dir.join("native-loader.yaml")).pointer("/spec/template/spec/initContainers/0").unwrap().clone()
}

#[test]
fn the_envoy_gateway_forms_match_the_crds() {
    let validator = Validator::new();
    let mut checked = 0;
    for file in ENVOY_GATEWAY_FILES {
        for doc in yaml_docs(&folder().join(file)) {
            let errors = validator.errors(&doc);
            assert!(
                errors.is_empty(),
                "{ENVOY_GATEWAY_DIR}/{file} does not match Envoy Gateway's CRD:\n{}",
                errors.join("\n")
            );
            checked += 1;
        }
    }
    assert_eq!(checked, KINDS.len());
}

#[test]
fn the_validator_rejects_broken_envoy_gateway_forms() {
    let validator = Validator::new();
    let (proxy, policy) = forms(&folder());
    let cases: &[BrokenCase<'_>] = &[
        (
            "misspelt field",
            &policy,
            |d| d["spec"]["dynamicModules"] = d["spec"]["dynamicModule"].clone(),
            "dynamicModules",
        ),
        (
            "upper-case module name",
            &policy,
            |d| d["spec"]["dynamicModule"][0]["name"] = json!("Gatewasm"),
            "/spec/dynamicModule/0/name",
        ),
        (
            "no module name",
            &policy,
            |d| drop(d["spec"]["dynamicModule"][0].as_object_mut().unwrap().remove("name")),
            "name",
        ),
        (
            "seventeen modules",
            &policy,
            |d| d["spec"]["dynamicModule"] = json!(vec![d["spec"]["dynamicModule"][0].clone(); 17]),
            "/spec/dynamicModule",
        ),
        (
            "no target",
            &policy,
            |d| drop(d["spec"].as_object_mut().unwrap().remove("targetRefs")),
            "either targetRef or targetRefs",
        ),
        (
            "a Service target",
            &policy,
            |d| d["spec"]["targetRefs"][0]["kind"] = json!("Service"),
            "can only target",
        ),
        ("wrong apiVersion", &policy, |d| d["apiVersion"] = json!("gateway.envoyproxy.io/v1"), "/apiVersion"),
        (
            "a module source type",
            &proxy,
            |d| d["spec"]["dynamicModules"][0]["source"]["type"] = json!("File"),
            "/spec/dynamicModules/0/source/type",
        ),
        (
            "Remote without remote",
            &proxy,
            |d| d["spec"]["dynamicModules"][0]["source"]["type"] = json!("Remote"),
            "If type is Remote, remote field needs to be set",
        ),
        (
            "Local without local",
            &proxy,
            |d| drop(d["spec"]["dynamicModules"][0]["source"].as_object_mut().unwrap().remove("local")),
            "If type is Local, local field needs to be set",
        ),
        (
            "a prefixed remote sha256",
            &proxy,
            |d| {
                d["spec"]["dynamicModules"][0]["source"] = json!({"type": "Remote", "remote": {
                    "url": "https://modules.example.com/libx.so", "sha256": format!("sha256:{PLACEHOLDER_DIGEST}")}});
            },
            "/spec/dynamicModules/0/source/remote/sha256",
        ),
        (
            "an init container field",
            &proxy,
            |d| {
                d["spec"]["provider"]["kubernetes"]["envoyDeployment"]["initContainers"][0]["cmd"] =
                    json!(["sh"])
            },
            "cmd",
        ),
        (
            "image and imageRepository",
            &proxy,
            |d| {
                d["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]["imageRepository"] =
                    json!("envoyproxy/envoy")
            },
            "Either image or imageRepository",
        ),
    ];
    assert_each_refused(cases, |doc| validator.errors(doc));
}

#[test]
fn the_envoy_gateway_forms_agree_with_the_filter_folders() {
    let (proxy, policy) = forms(&folder());
    let text = std::fs::read_to_string(folder().join("envoyproxy.yaml")).unwrap();
    let deployment = proxy.pointer("/spec/provider/kubernetes/envoyDeployment").unwrap();
    assert!(
        str_at(deployment, "/container/image").starts_with(ENVOY_IMAGE),
        "the Envoy the modules' ABI is for"
    );
    assert_eq!(
        deployment["container"]["volumeMounts"],
        json!([{"name": "gatewasm-modules", "mountPath": MODULE_MOUNT, "readOnly": true}]),
        "Envoy reads the modules, read-only"
    );
    assert_eq!(deployment["pod"]["volumes"], json!([{"name": "gatewasm-modules", "emptyDir": {}}]));
    let registry = proxy["spec"]["dynamicModules"].as_array().unwrap();
    assert_eq!(registry.len(), natives().len(), "every native module registered, once");
    assert_eq!(
        deployment["initContainers"].as_array().unwrap().len(),
        natives().len(),
        "one init container per module"
    );
    for f in natives() {
        let file = f.native_file().unwrap();
        let entry = registry
            .iter()
            .find(|e| e["name"] == format!("gatewasm-{}", f.name))
            .unwrap_or_else(|| panic!("{}: not registered", f.name));
        assert_eq!(
            entry["source"],
            json!({"type": "Local", "local": {"path": format!("{MODULE_MOUNT}/{file}")}}),
            "{}: the file its init container writes",
            f.name
        );
        // The init container of the filter folder's native-loader.yaml, sha256 mark and all.
        assert_eq!(
            init_container(&proxy, f.name),
            &folder_init_container(&manifests_dir().join(f.name)),
            "{}",
            f.name
        );
        let marked = format!("{NATIVE_SHA256_MARK} {}", f.name);
        let lines: Vec<&str> = text.lines().filter(|l| l.ends_with(&marked)).collect();
        assert!(
            lines.len() == 1 && lines[0].contains(PLACEHOLDER_DIGEST),
            "{}: one marked placeholder",
            f.name
        );
    }

    // The policy: the five filters of the bundle and rate-limit in the order the Istio forms run
    // them (rate-limit in AUTHZ at priority 10: after jwt-auth, before ext-auth), each its
    // folder's configuration on a registered module.
    let targets = policy["spec"]["targetRefs"].as_array().unwrap();
    assert!(
        targets.iter().all(|t| t["kind"] == "Gateway" && t["group"] == "gateway.networking.k8s.io"),
        "{targets:?}"
    );
    let mut order: Vec<String> = yaml_docs(&manifests_dir().join(BUNDLE).join("wasmplugin.yaml"))
        .iter()
        .map(|wp| str_at(wp, "/spec/pluginName").to_string())
        .collect();
    let after_jwt = order.iter().position(|n| n == "jwt-auth").map_or(0, |i| i + 1);
    order.insert(after_jwt, "rate-limit".to_string());
    let entries = policy["spec"]["dynamicModule"].as_array().unwrap();
    let names: Vec<String> =
        entries.iter().map(|e| str_at(e, "/name").trim_start_matches("gatewasm-").to_string()).collect();
    assert_eq!(names, order, "the bundle's filters and rate-limit, in the order Istio runs them");
    for entry in entries {
        let name = str_at(entry, "/name");
        assert!(registry.iter().any(|e| e["name"] == name), "{name}: registered in the EnvoyProxy");
        let f = name.trim_start_matches("gatewasm-");
        assert_eq!(entry["filterName"], f.replace('-', "_"), "{name}: the plugin's name");
        let wp = one_doc(&manifests_dir().join(f).join("wasmplugin.yaml"));
        assert_eq!(
            entry["config"], wp["spec"]["pluginConfig"],
            "{name}: config = {f}/wasmplugin.yaml's pluginConfig"
        );
    }
}

/// The HTTP filters and the route config Envoy Gateway makes of `policy` with `proxy`'s module
/// registry (`internal/xds/translator/dynamicmodule.go`, v1.9.0): each entry a
/// `DynamicModuleFilter` on the listener, disabled there, loading the registered module file,
/// with `filterName` and `config` as a JSON `StringValue`; enabled on the route by an empty
/// `FilterConfig` under the filter's name.
fn envoy_gateway_config(policy: &Value, proxy: &Value, entries: &[usize]) -> (Vec<Value>, Value) {
    let registry = proxy["spec"]["dynamicModules"].as_array().unwrap();
    let mut filters = Vec::new();
    let mut per_route = serde_json::Map::new();
    for &i in entries {
        let entry = &policy["spec"]["dynamicModule"][i];
        let module = registry.iter().find(|m| m["name"] == entry["name"]).unwrap();
        assert_eq!(module["source"]["type"], "Local", "the native forms load local files");
        let name = eg_filter_name(policy, i);
        let mut typed_config = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {"module": {"local": {"filename": module["source"]["local"]["path"]}}},
            "filter_name": entry["filterName"],
        });
        if !entry["config"].is_null() {
            typed_config["filter_config"] = json!({
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": entry["config"].to_string(),
            });
        }
        filters.push(json!({"name": name, "disabled": true, "typed_config": typed_config}));
        per_route.insert(
            name,
            json!({"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}}),
        );
    }
    (filters, json!({"typed_per_filter_config": per_route}))
}

/// Runs the EnvoyProxy's init container of every native module into `dir`, each module's
/// sha256 where the committed file has the placeholder (what `manifests` writes).
fn load_all(proxy: &Value, dir: &Path) {
    for f in natives() {
        let module = native_module_bytes(f.name);
        let init = with_loader_sha256(init_container(proxy, f.name), &sha256_hex(&module));
        let loaded = run_loader(&init, &module, dir, f.name);
        assert!(loaded.ok, "{}: {}", f.name, loaded.output);
    }
}

#[test]
fn the_envoy_extension_policy_runs_in_envoy_as_envoy_gateway_configures_it() {
    let (proxy, policy) = forms(&folder());
    let modules = tempfile::tempdir().unwrap();
    load_all(&proxy, modules.path());
    let run = |entries: &[usize], dir: &Path, what: &str| {
        let (filters, route) = envoy_gateway_config(&policy, &proxy, entries);
        let filters: Vec<Value> =
            filters.into_iter().map(|f| with_module_dir(f, modules.path(), what)).collect();
        drop(run_native(&filters, Some(route), &expectations(dir), what));
    };
    let count = policy["spec"]["dynamicModule"].as_array().unwrap().len();
    // Each entry alone, held to its filter folder's expect.yaml.
    for i in 0..count {
        let f = str_at(&policy, &format!("/spec/dynamicModule/{i}/name"))
            .trim_start_matches("gatewasm-")
            .to_string();
        run(&[i], &manifests_dir().join(&f), &format!("{ENVOY_GATEWAY_DIR}/envoyextensionpolicy.yaml ({f})"));
    }
    // All of them as one gateway: the chain the bundle's folder expects of the five filters.
    let all: Vec<usize> = (0..count).collect();
    run(&all, &manifests_dir().join(BUNDLE), &format!("{ENVOY_GATEWAY_DIR}/envoyextensionpolicy.yaml"));

    // A route the policy does not enable runs none of the filters: Envoy Gateway turns them on
    // per route. jwt-auth would refuse this request without a token.
    let (filters, _) = envoy_gateway_config(&policy, &proxy, &all);
    let filters: Vec<Value> =
        filters.into_iter().map(|f| with_module_dir(f, modules.path(), "disabled")).collect();
    let upstream = gatewasm_envoy::EchoUpstream::start().unwrap();
    let mut builder = gatewasm_envoy::EnvoyBuilder::new().upstream(upstream.addr());
    for filter in filters {
        builder = builder.raw_filter(filter);
    }
    let envoy = builder.start().unwrap();
    assert_eq!(
        envoy.get("/extauth/nodebackend/").unwrap().status,
        200,
        "disabled unless the route enables them"
    );
}

#[test]
fn rendered_envoy_gateway_forms_carry_the_native_modules_sha256s() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    common::pack_ok(&["package", "--no-build", "--wasm-opt", "skip", "--out", dir]);
    common::pack_ok(&["manifests", "--registry", "registry.test:5000/team", "--out", dir]);
    let rendered = out.path().join("istio").join(ENVOY_GATEWAY_DIR);
    let validator = Validator::new();
    let (proxy, policy) = forms(&rendered);
    let (mut committed_proxy, committed_policy) = forms(&folder());
    assert_eq!(policy, committed_policy, "nothing to fill in in the policy");
    for doc in [&proxy, &policy] {
        assert_eq!(validator.errors(doc), Vec::<String>::new());
    }
    for file in ENVOY_GATEWAY_FILES {
        let text = std::fs::read_to_string(rendered.join(file)).unwrap();
        assert!(
            !text.contains(PLACEHOLDER_DIGEST) && !text.contains(PLACEHOLDER_REGISTRY),
            "rendered {file}"
        );
    }
    let modules = tempfile::tempdir().unwrap();
    for f in natives() {
        let native = std::fs::read(out.path().join(f.native_file().unwrap())).unwrap();
        let init = init_container(&proxy, f.name);
        let run = run_loader(init, &native, modules.path(), f.name);
        assert!(run.ok, "rendered {}: the packaged module passes its init container: {}", f.name, run.output);
        let inits =
            committed_proxy.pointer_mut("/spec/provider/kubernetes/envoyDeployment/initContainers").unwrap();
        for c in inits
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .filter(|c| c["name"] == format!("gatewasm-native-{}", f.name))
        {
            *c = with_loader_sha256(c, &sha256_hex(&native));
        }
    }
    assert_eq!(proxy, committed_proxy, "the packaged modules' sha256s, nothing else changed");

    // A selection of filters leaves the EnvoyProxy, which loads every module, unrendered.
    let some = tempfile::tempdir().unwrap();
    let some_dir = some.path().to_str().unwrap();
    common::pack_ok(&["package", "--no-build", "--filter", "hello", "--out", some_dir]);
    common::pack_ok(&["manifests", "--registry", "r.test", "--filter", "hello", "--out", some_dir]);
    assert!(!some.path().join("istio").join(ENVOY_GATEWAY_DIR).exists());
    assert!(some.path().join("istio").join("hello").join("native-loader.yaml").is_file());
}

#[test]
fn every_native_filter_folder_is_loaded_by_the_envoy_proxy() {
    // The filter folders with native forms are exactly the modules the EnvoyProxy loads.
    let (proxy, _) = forms(&folder());
    let mut with_loader: Vec<String> = filters()
        .into_iter()
        .filter(|(_, dir)| dir.join("native-loader.yaml").is_file())
        .map(|(name, _)| name)
        .collect();
    with_loader.sort();
    let mut loaded: Vec<String> = proxy
        .pointer("/spec/provider/kubernetes/envoyDeployment/initContainers")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .map(|c| str_at(c, "/name").trim_start_matches("gatewasm-native-").to_string())
        .collect();
    loaded.sort();
    assert_eq!(with_loader, loaded);
}
