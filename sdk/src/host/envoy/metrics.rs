//! Metrics on the native backend, with real labels.
//!
//! The SDK names a labelled series `family;label=value;...` (the form Envoy's `stats_tags` turn
//! into Prometheus labels on the Wasm target). Here each family is defined once in Envoy with its
//! label names, on the main thread while the configuration loads, and each series is that
//! family's id with the label values taken from the name (already escaped by the SDK), so
//! `/stats/prometheus` shows the same series as the Wasm target's without any `stats_tags`.
//! Series are the SDK's ids into a table shared by every thread of the configuration; updates
//! go through the configuration's callbacks, which Envoy allows from any thread.
//!
//! Counter increments are counted here, in one atomic per series, and reach Envoy from the main
//! thread once a second (and when the configuration goes), as the Wasm target's local counters
//! do: Envoy resolves a labelled series' name on every update (about 6,000 instructions, three
//! quarters of what a native filter may add to a request), and a counter needs only the sum.
//! Gauges and histogram samples go to Envoy at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use proxy_wasm::types::{MetricType, Status};

use super::abi::{self, ModuleBuffer};
use super::ConfigShared;

/// Families defined in Envoy and the series handed out, per configuration.
#[derive(Default)]
pub(super) struct Table(RwLock<Inner>);

#[derive(Default)]
struct Inner {
    /// Envoy's id for each (kind, family, label names).
    families: HashMap<(u8, String, Vec<String>), usize>,
    /// The SDK's id (index + 1) for each (kind, full series name).
    by_name: HashMap<(u8, String), u32>,
    series: Vec<Series>,
}

struct Series {
    kind: MetricType,
    envoy: usize,
    values: Vec<String>,
    /// A counter's increments not yet given to Envoy.
    pending: AtomicU64,
}

fn kind_key(kind: MetricType) -> u8 {
    match kind {
        MetricType::Counter => 0,
        MetricType::Gauge => 1,
        MetricType::Histogram => 2,
        _ => 3,
    }
}

/// `family;a=x;b=y` as the family, its label names and values; a name whose parts are not all
/// `label=value` is a family without labels.
fn split(name: &str) -> (&str, Vec<&str>, Vec<&str>) {
    let mut parts = name.split(';');
    let family = parts.next().unwrap_or(name);
    let mut labels = Vec::new();
    let mut values = Vec::new();
    for part in parts {
        match part.split_once('=') {
            Some((label, value)) => {
                labels.push(label);
                values.push(value);
            }
            None => return (name, Vec::new(), Vec::new()),
        }
    }
    (family, labels, values)
}

/// Istio's form of a series name, `family` then `label=.=value;.;` per label (the form Istio's
/// `extraStatTags` regexes take apart), split with the label names of a declared family of
/// `kind`: the family name runs into the first label's, so only the declared names tell them
/// apart.
fn split_istio(inner: &Inner, kind: u8, name: &str) -> Option<(String, Vec<String>, Vec<String>)> {
    inner.families.keys().filter(|(k, _, labels)| *k == kind && !labels.is_empty()).find_map(
        |(_, family, labels)| {
            let mut rest = name.strip_prefix(family.as_str())?;
            let mut values = Vec::with_capacity(labels.len());
            for label in labels {
                rest = rest.strip_prefix(label.as_str())?.strip_prefix("=.=")?;
                let (value, after) = rest.split_once(";.;")?;
                values.push(value.to_string());
                rest = after;
            }
            rest.is_empty().then(|| (family.clone(), labels.clone(), values))
        },
    )
}

/// Defines a family in Envoy unless it is defined; only the main thread may.
fn ensure_family(
    config: &ConfigShared,
    kind: MetricType,
    family: &str,
    labels: &[&str],
) -> Result<usize, Status> {
    let key =
        (kind_key(kind), family.to_string(), labels.iter().map(|l| (*l).to_string()).collect::<Vec<_>>());
    if let Some(id) = config.metrics.0.read().unwrap_or_else(PoisonError::into_inner).families.get(&key) {
        return Ok(*id);
    }
    if !config.on_main_thread() {
        // Envoy defines metrics only while the configuration loads; a worker's plugin defines
        // exactly what the main thread's did, so this is a family the SDK never declared.
        return Err(Status::NotFound);
    }
    let api = super::api()?;
    let mut names: Vec<ModuleBuffer> = labels.iter().map(|l| ModuleBuffer::of(l.as_bytes())).collect();
    let define = match kind {
        MetricType::Counter => api.http_filter_config_define_counter,
        MetricType::Gauge => api.http_filter_config_define_gauge,
        MetricType::Histogram => api.http_filter_config_define_histogram,
        _ => return Err(Status::BadArgument),
    };
    let mut id = 0usize;
    // SAFETY: the configuration is live (its hook or plugin runs); the buffers live for the call.
    let result = unsafe {
        define(config.envoy, ModuleBuffer::of(family.as_bytes()), names.as_mut_ptr(), names.len(), &mut id)
    };
    if result != abi::metrics_result::SUCCESS {
        return Err(Status::BadArgument);
    }
    config.metrics.0.write().unwrap_or_else(PoisonError::into_inner).families.insert(key, id);
    Ok(id)
}

/// Declares a labelled family (from `Metrics::family`, while the plugin is configured).
pub(super) fn define_family(
    config: &ConfigShared,
    kind: MetricType,
    name: &str,
    labels: &[&str],
) -> Result<(), Status> {
    ensure_family(config, kind, name, labels).map(|_| ())
}

/// The SDK's id for the series `name`, defining its family when needed.
pub(super) fn define(config: &ConfigShared, kind: MetricType, name: &str) -> Result<u32, Status> {
    let key = (kind_key(kind), name.to_string());
    if let Some(id) = config.metrics.0.read().unwrap_or_else(PoisonError::into_inner).by_name.get(&key) {
        return Ok(*id);
    }
    let (family, labels, values) = split(name);
    let istio = if labels.is_empty() && name.ends_with(";.;") {
        split_istio(&config.metrics.0.read().unwrap_or_else(PoisonError::into_inner), kind_key(kind), name)
    } else {
        None
    };
    let (family, labels, values): (&str, Vec<&str>, Vec<&str>) = match &istio {
        Some((family, labels, values)) => {
            (family, labels.iter().map(String::as_str).collect(), values.iter().map(String::as_str).collect())
        }
        None => (family, labels, values),
    };
    let envoy = ensure_family(config, kind, family, &labels)?;
    let mut table = config.metrics.0.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(id) = table.by_name.get(&key) {
        return Ok(*id);
    }
    let id = u32::try_from(table.series.len() + 1).map_err(|_| Status::InternalFailure)?;
    table.series.push(Series {
        kind,
        envoy,
        values: values.into_iter().map(str::to_string).collect(),
        pending: AtomicU64::new(0),
    });
    table.by_name.insert(key, id);
    Ok(id)
}

type Update = unsafe extern "C" fn(abi::ConfigEnvoyPtr, usize, *mut ModuleBuffer, usize, u64) -> u32;

/// Calls `call` on Envoy's series for `series` with `value`.
fn send(config: &ConfigShared, series: &Series, call: Update, value: u64) -> Result<(), Status> {
    let mut values: Vec<ModuleBuffer> =
        series.values.iter().map(|v| ModuleBuffer::of(v.as_bytes())).collect();
    // SAFETY: the configuration is live; the buffers live for the call.
    let result = unsafe { call(config.envoy, series.envoy, values.as_mut_ptr(), values.len(), value) };
    if result == abi::metrics_result::SUCCESS {
        Ok(())
    } else {
        Err(Status::BadArgument)
    }
}

fn update(
    config: &ConfigShared,
    id: u32,
    pick: impl FnOnce(MetricType) -> Option<(Update, u64)>,
) -> Result<(), Status> {
    let table = config.metrics.0.read().unwrap_or_else(PoisonError::into_inner);
    let index = usize::try_from(id).ok().and_then(|i| i.checked_sub(1)).ok_or(Status::NotFound)?;
    let series = table.series.get(index).ok_or(Status::NotFound)?;
    let (call, value) = pick(series.kind).ok_or(Status::BadArgument)?;
    send(config, series, call, value)
}

/// Adds `offset` to a counter (not below zero; counted here until the next flush) or a gauge.
pub(super) fn increment(config: &ConfigShared, id: u32, offset: i64) -> Result<(), Status> {
    let api = super::api()?;
    {
        let table = config.metrics.0.read().unwrap_or_else(PoisonError::into_inner);
        let index = usize::try_from(id).ok().and_then(|i| i.checked_sub(1)).ok_or(Status::NotFound)?;
        let series = table.series.get(index).ok_or(Status::NotFound)?;
        if series.kind == MetricType::Counter {
            let value = u64::try_from(offset).map_err(|_| Status::BadArgument)?;
            series.pending.fetch_add(value, Ordering::Relaxed);
            return Ok(());
        }
    }
    update(config, id, |kind| match kind {
        MetricType::Gauge if offset >= 0 => {
            Some((api.http_filter_config_increment_gauge as Update, offset.unsigned_abs()))
        }
        MetricType::Gauge => Some((api.http_filter_config_decrement_gauge, offset.unsigned_abs())),
        _ => None,
    })
}

/// Gives Envoy the counters' increments counted since the last flush (main thread: the flush
/// event, and the configuration's destruction).
pub(super) fn flush(config: &ConfigShared) {
    let Ok(api) = super::api() else { return };
    let table = config.metrics.0.read().unwrap_or_else(PoisonError::into_inner);
    for series in table.series.iter().filter(|s| s.kind == MetricType::Counter) {
        let value = series.pending.swap(0, Ordering::Relaxed);
        if value > 0 && send(config, series, api.http_filter_config_increment_counter, value).is_err() {
            log::warn!("{}: Envoy refused a counter update of {value}", config.name);
        }
    }
}

/// Sets a gauge or records a histogram value.
pub(super) fn record(config: &ConfigShared, id: u32, value: u64) -> Result<(), Status> {
    let api = super::api()?;
    update(config, id, |kind| match kind {
        MetricType::Gauge => Some((api.http_filter_config_set_gauge as Update, value)),
        MetricType::Histogram => Some((api.http_filter_config_record_histogram_value, value)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::{split, split_istio, Inner};

    #[test]
    fn istio_form_names_split_with_the_declared_label_names() {
        let mut inner = Inner::default();
        inner.families.insert((0, "req_total".into(), vec!["host".into(), "code".into()]), 1);
        inner.families.insert((0, "req".into(), vec!["x".into()]), 2);
        let split = |name: &str| split_istio(&inner, 0, name);
        assert_eq!(
            split("req_totalhost=.=a.example;.;code=.=200;.;"),
            Some((
                "req_total".into(),
                vec!["host".into(), "code".into()],
                vec!["a.example".into(), "200".into()]
            ))
        );
        assert_eq!(split("reqx=.=1;.;"), Some(("req".into(), vec!["x".into()], vec!["1".into()])));
        assert_eq!(split("req_totalhost=.=a;.;"), None, "a label missing");
        assert_eq!(split_istio(&inner, 2, "reqx=.=1;.;"), None, "another kind");
    }

    #[test]
    fn series_names_split_into_family_labels_and_values() {
        assert_eq!(split("a_total"), ("a_total", vec![], vec![]));
        assert_eq!(split("a_total;method=GET;code=%"), ("a_total", vec!["method", "code"], vec!["GET", "%"]));
        assert_eq!(split("odd;name"), ("odd;name", vec![], vec![]));
    }
}
