//! Metrics: counters, gauges and histograms with Envoy's ids and answers.

use super::import::import;
use super::memory::mem;
use super::state::{HostState, Metric};
use crate::abi::{status, MetricType};
use crate::wasi::{read, write_u32, write_u64};
use wasmtime::{Linker, Result};

fn define_metric(st: &mut HostState, kind: u32, name: String) -> Option<u32> {
    let (k, idx) = match kind {
        0 => (MetricType::Counter, 0),
        1 => (MetricType::Gauge, 1),
        2 => (MetricType::Histogram, 2),
        _ => return None,
    };
    // Envoy: ids step by 4 from the type (counter 4, 8, ...; gauge 5; histogram 6); defining
    // the same name again gives a new id for the same stat (the probe: c1 -> 4, then 8).
    let slot = st.next_metric_id.get_mut(idx)?;
    *slot += 4;
    let id = *slot;
    st.metric_ids.insert(id, name.clone());
    st.metrics.entry(name.clone()).or_insert(Metric { name, kind: k, value: 0, recorded: Vec::new() });
    Some(id)
}

fn metric_mut(st: &mut HostState, id: u32) -> Option<&mut Metric> {
    let name = st.metric_ids.get(&id)?;
    st.metrics.get_mut(name)
}

/// Registers the metric imports.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    import!(linker, "proxy_define_metric", |c, kind: u32, np: u32, ns: u32, out: u32| {
        let name = String::from_utf8_lossy(&mem!(&mut c, np, ns)).into_owned();
        // The probe: type 3 -> BadArgument.
        let Some(id) = define_metric(c.data_mut(), kind, name) else { return Ok(status::BAD_ARGUMENT) };
        Ok(if write_u32(&mut c, out, id) { status::OK } else { status::INVALID_MEMORY_ACCESS })
    })?;
    import!(linker, "proxy_increment_metric", |c, id: u32, offset: i64| {
        let kind = id & 3;
        let Some(m) = metric_mut(c.data_mut(), id) else {
            // The probe: an unknown counter id -> NotFound; histogram ids never increment.
            return Ok(if kind == 2 || kind == 3 { status::BAD_ARGUMENT } else { status::NOT_FOUND });
        };
        match m.kind {
            // The probe: counter += 0 or += -1 -> BadArgument.
            MetricType::Counter if offset > 0 => m.value = m.value.wrapping_add(offset as u64),
            MetricType::Counter => return Ok(status::BAD_ARGUMENT),
            // The probe: gauge -3 from 0 reads 18446744073709551613 (u64 wrap).
            MetricType::Gauge => m.value = m.value.wrapping_add(offset as u64),
            // The probe: increment on a histogram -> BadArgument.
            MetricType::Histogram => return Ok(status::BAD_ARGUMENT),
        }
        Ok(status::OK)
    })?;
    import!(linker, "proxy_record_metric", |c, id: u32, value: u64| {
        let Some(m) = metric_mut(c.data_mut(), id) else { return Ok(status::NOT_FOUND) };
        match m.kind {
            // The probe: record 5 on a counter adds 5.
            MetricType::Counter => m.value = m.value.wrapping_add(value),
            MetricType::Gauge => m.value = value,
            MetricType::Histogram => {
                m.value = value;
                m.recorded.push(value);
            }
        }
        Ok(status::OK)
    })?;
    import!(linker, "proxy_get_metric", |c, id: u32, out: u32| {
        let kind = id & 3;
        if kind >= 2 {
            // The probe: get on a histogram -> BadArgument.
            return Ok(status::BAD_ARGUMENT);
        }
        let Some(v) = metric_mut(c.data_mut(), id).map(|m| m.value) else { return Ok(status::NOT_FOUND) };
        Ok(if write_u64(&mut c, out, v) { status::OK } else { status::INVALID_MEMORY_ACCESS })
    })?;
    Ok(())
}
