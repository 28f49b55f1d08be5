//! [`SharedCap`]: a cap on label sets that holds across every VM of a plugin.
//!
//! Each Envoy worker runs its own VM, and every VM defines the stats it uses; Envoy keeps one
//! stat per name, however many VMs define it. A per-VM cap would let N workers create N times
//! the cap. So a label set is admitted once, for all VMs, through the host's shared data (per
//! VM id): a count of admitted sets, raised with compare-and-swap, and one key per admitted set.
//! These host calls happen when a VM first sees a label set, never per request afterwards; once
//! the count reaches the cap, a label set the VM does not know costs one shared-data read (was
//! it admitted by another VM?).

use std::cell::Cell;
use std::rc::Rc;

use proxy_wasm::types::{Bytes, Status};

use crate::host::Host;

/// How many times a lost compare-and-swap race on the count is retried before the label set is
/// refused (the caller counts the request as overflow; a later request tries again).
const CAS_RETRIES: usize = 8;

/// A cap on distinct label sets shared by every VM of the plugin ([`super::Metrics::shared_cap`]).
/// Give it to [`super::Metrics::shared_family`], or ask it directly ([`SharedCap::admit`]) for
/// label sets that are more than one family's metrics. Families given the same cap share its
/// count: a label set counts once, however many of them use it. Cloning it is cheap; clones
/// are the same cap.
#[derive(Clone)]
pub struct SharedCap(Rc<State>);

struct State {
    host: Rc<dyn Host>,
    /// Prefix of every shared-data key: the plugin and its configuration.
    namespace: String,
    count_key: String,
    max: usize,
    /// The count reached the cap (it never goes down).
    full: Cell<bool>,
}

impl SharedCap {
    pub(crate) fn new(host: Rc<dyn Host>, namespace: String, max: usize) -> Self {
        let count_key = format!("{namespace}#count");
        let cap = Self(Rc::new(State { host, namespace, count_key, max, full: Cell::new(false) }));
        // Created before traffic, so that two VMs never both create it under load.
        if let Ok(None) = cap.read(&cap.0.count_key) {
            let _ = cap.0.host.set_shared_data(&cap.0.count_key, b"0", None);
        }
        cap
    }

    /// A shared-data value and its version; the cap never writes an empty value, so an empty
    /// one reads as absent.
    fn read(&self, key: &str) -> Result<Option<(Bytes, Option<u32>)>, Status> {
        let (value, cas) = self.0.host.shared_data(key)?;
        Ok(value.filter(|v| !v.is_empty()).map(|v| (v, cas)))
    }

    /// Most label sets admitted, over every VM.
    pub fn max(&self) -> usize {
        self.0.max
    }

    /// Whether the label set `key` (its label values, joined so that two sets never share a
    /// key) is admitted, admitting it when there is room. False when the cap is full, when the
    /// host has no shared data, or after a bounded number of lost races on the count (a later call
    /// tries again). Costs one shared-data read for a set another VM admitted, two reads and two
    /// writes to admit one, and one read once the cap is full.
    pub fn admit(&self, key: &str) -> bool {
        let set_key = format!("{}/{key}", self.0.namespace);
        match self.read(&set_key) {
            Ok(Some(_)) => return true,
            Ok(None) => {}
            Err(_) => return false,
        }
        if self.0.full.get() {
            return false;
        }
        for _ in 0..CAS_RETRIES {
            let Ok(current) = self.read(&self.0.count_key) else { return false };
            let (count, cas) = match current {
                Some((value, cas)) => (parse(&value).unwrap_or(0), cas),
                None => (0, None),
            };
            if count >= self.0.max as u64 {
                self.0.full.set(true);
                return false;
            }
            let next = (count + 1).to_string();
            match self.0.host.set_shared_data(&self.0.count_key, next.as_bytes(), cas) {
                Ok(()) => {
                    // Written after the count: a VM stopping in between leaves a counted set
                    // that no VM uses, never a used set that is not counted.
                    let _ = self.0.host.set_shared_data(&set_key, b"1", None);
                    return true;
                }
                Err(Status::CasMismatch) => continue,
                Err(_) => return false,
            }
        }
        false
    }

    /// Label sets admitted so far, over every VM (one shared-data read); `None` when the host
    /// cannot tell.
    pub fn admitted(&self) -> Option<u64> {
        self.read(&self.0.count_key).ok().flatten().and_then(|(value, _)| parse(&value))
    }
}

fn parse(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::rc::Rc;

    use crate::metrics::{Counter, Family, SharedCap};
    use crate::testing::{FakeHost, Harness};
    use crate::{config, ConfigErrors, Flow, HttpFilter, Plugin, Root, Stream};

    /// Counts requests by path, at most `max` paths over every VM sharing the host.
    #[derive(serde::Deserialize)]
    struct Paths {
        max: usize,
        #[serde(skip)]
        cap: Option<SharedCap>,
        #[serde(skip)]
        by_path: Option<Family<Counter>>,
    }

    impl config::Validate for Paths {}

    impl Plugin for Paths {
        const NAME: &'static str = "paths";
        type Filter = PathsFilter;
        fn configure(raw: &[u8], root: &Root) -> Result<Self, ConfigErrors> {
            let mut paths: Paths = config::parse(raw)?;
            let cap = root.metrics().shared_cap("paths.test", paths.max);
            paths.by_path = Some(root.metrics().shared_family("paths_total", &["path"], &cap));
            paths.cap = Some(cap);
            Ok(paths)
        }
        fn new_filter(self: &Rc<Self>) -> PathsFilter {
            PathsFilter(Rc::clone(self))
        }
    }

    struct PathsFilter(Rc<Paths>);

    impl HttpFilter for PathsFilter {
        fn on_request_headers(&mut self, stream: &mut Stream, _eos: bool) -> Flow {
            if let Some(family) = &self.0.by_path {
                family.get(&[stream.request().path()]).0.inc();
            }
            Flow::Continue
        }
    }

    /// Sends a request; the host calls it cost, the plugin's included.
    fn get<P: Plugin>(vm: &Harness<P>, path: &str) -> u64 {
        let before = vm.host().calls();
        vm.stream().request_headers(&[(":method", "GET"), (":path", path)], true);
        vm.host().calls() - before
    }

    fn count(host: &FakeHost, path: &str) -> Option<u64> {
        host.counter(&format!("paths_total;path={path}"))
    }

    #[test]
    fn the_cap_holds_across_vms() {
        let host = FakeHost::new();
        let vm1 = Harness::<Paths>::with_host(host.clone(), r#"{"max": 3}"#).unwrap();
        let vm2 = Harness::<Paths>::with_host(host.clone(), r#"{"max": 3}"#).unwrap();
        get(&vm1, "/a");
        get(&vm2, "/b");
        get(&vm1, "/b"); // admitted by the other VM: not counted twice
        get(&vm2, "/c");
        get(&vm1, "/d"); // full
        get(&vm1, "/c"); // admitted elsewhere: still usable when full
        get(&vm2, "/e");
        assert_eq!(count(&host, "/a"), Some(1));
        assert_eq!(count(&host, "/b"), Some(2));
        assert_eq!(count(&host, "/c"), Some(2));
        assert_eq!(count(&host, "/d"), None);
        assert_eq!(count(&host, "overflow"), Some(2));
        assert_eq!(vm1.plugin().cap.as_ref().unwrap().admitted(), Some(3));
        assert_eq!(vm2.plugin().by_path.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn host_calls_go_to_new_label_sets_only() {
        let host = FakeHost::new();
        let vm1 = Harness::<Paths>::with_host(host.clone(), r#"{"max": 2}"#).unwrap();
        let vm2 = Harness::<Paths>::with_host(host.clone(), r#"{"max": 2}"#).unwrap();
        // The headers' read and the increment, plus: is the set known (no), read the count,
        // raise it, mark the set, define the counter.
        assert_eq!(get(&vm1, "/a"), 2 + 5);
        assert_eq!(get(&vm1, "/a"), 2, "a known set costs nothing more");
        // Another VM: the set is known (one read), then defined here.
        assert_eq!(get(&vm2, "/a"), 2 + 2);
        get(&vm2, "/b");
        // Full, and this VM never saw /c: is it known (no), read the count (full), define the
        // overflow counter; from then on, one read.
        assert_eq!(get(&vm1, "/c"), 2 + 2 + 1);
        assert_eq!(get(&vm1, "/d"), 2 + 1);
        // A VM that holds the whole cap itself asks no other VM.
        get(&vm1, "/b");
        assert_eq!(get(&vm1, "/e"), 2);
    }

    #[test]
    fn lost_races_on_the_count_are_retried() {
        let host = FakeHost::new();
        let vm = Harness::<Paths>::with_host(host.clone(), r#"{"max": 5}"#).unwrap();
        host.lose_cas_races(3);
        get(&vm, "/a");
        assert_eq!(count(&host, "/a"), Some(1));
        assert_eq!(host.shared("paths.test#count").as_deref(), Some(&b"1"[..]));
        // A VM that keeps losing gives up and counts the request as overflow...
        host.lose_cas_races(100);
        get(&vm, "/b");
        assert_eq!(count(&host, "overflow"), Some(1));
        // ...and admits the set on a later request.
        host.lose_cas_races(0);
        get(&vm, "/b");
        assert_eq!(count(&host, "/b"), Some(1));
    }

    #[test]
    fn the_count_is_created_once() {
        let host = FakeHost::new();
        let vm1 = Harness::<Paths>::with_host(host.clone(), r#"{"max": 5}"#).unwrap();
        get(&vm1, "/a");
        let _vm2 = Harness::<Paths>::with_host(host.clone(), r#"{"max": 5}"#).unwrap();
        assert_eq!(host.shared("paths.test#count").as_deref(), Some(&b"1"[..]), "not reset by a new VM");
    }
}
