//! Shared data on the native backend: one process, so one synchronized map for every worker,
//! with the compare-and-swap versions of proxy-wasm's shared data (a write with a version
//! succeeds only at that version; every write moves the version on).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use proxy_wasm::types::{Bytes, Status};

static DATA: Mutex<Option<HashMap<String, (Bytes, u32)>>> = Mutex::new(None);

/// The process's queues (`Root::queue_push`): how a worker's instance hands work to the main
/// thread's, the only one that ticks.
static QUEUES: Mutex<Option<HashMap<String, VecDeque<Bytes>>>> = Mutex::new(None);

/// Appends `item` to queue `name` unless it holds `capacity` items.
pub(super) fn queue_push(name: &str, item: &[u8], capacity: usize) -> bool {
    let mut queues = QUEUES.lock().unwrap_or_else(PoisonError::into_inner);
    let queue = queues.get_or_insert_with(HashMap::new).entry(name.to_string()).or_default();
    if queue.len() >= capacity {
        return false;
    }
    queue.push_back(item.to_vec());
    true
}

/// Takes every item of queue `name`.
pub(super) fn queue_drain(name: &str) -> Vec<Bytes> {
    let mut queues = QUEUES.lock().unwrap_or_else(PoisonError::into_inner);
    queues.as_mut().and_then(|q| q.get_mut(name)).map(|q| q.drain(..).collect()).unwrap_or_default()
}

/// The value of `key` and its version; `(None, None)` when absent.
pub(super) fn get(key: &str) -> (Option<Bytes>, Option<u32>) {
    let data = DATA.lock().unwrap_or_else(PoisonError::into_inner);
    match data.as_ref().and_then(|d| d.get(key)) {
        Some((value, version)) => (Some(value.clone()), Some(*version)),
        None => (None, None),
    }
}

/// Writes `key`; with `cas`, only if the entry is still at that version (`CasMismatch`
/// otherwise, also for an absent entry).
pub(super) fn set(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
    let mut data = DATA.lock().unwrap_or_else(PoisonError::into_inner);
    let data = data.get_or_insert_with(HashMap::new);
    let current = data.get(key).map(|(_, version)| *version);
    if cas.filter(|c| *c != 0).is_some_and(|cas| Some(cas) != current) {
        return Err(Status::CasMismatch);
    }
    // Version 0 means "no version" in proxy-wasm: skip it when wrapping.
    let next = current.map_or(1, |v| v.checked_add(1).unwrap_or(1));
    data.insert(key.to_string(), (value.to_vec(), next));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_move_the_version_and_stale_versions_are_refused() {
        let key = "shared-data-test-key";
        assert_eq!(get(key), (None, None));
        assert_eq!(set(key, b"a", Some(7)), Err(Status::CasMismatch));
        assert_eq!(set(key, b"a", None), Ok(()));
        let (value, version) = get(key);
        assert_eq!(value.as_deref(), Some(&b"a"[..]));
        let version = version.unwrap_or_default();
        assert_eq!(set(key, b"b", Some(version)), Ok(()));
        assert_eq!(set(key, b"c", Some(version)), Err(Status::CasMismatch));
        assert_eq!(get(key).0.as_deref(), Some(&b"b"[..]));
    }
}
