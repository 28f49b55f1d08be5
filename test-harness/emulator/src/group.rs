//! State shared by the VMs of one group: shared data and shared queues. Envoy keeps these
//! process-wide (proxy-wasm-cpp-host `shared_data.cc`, `shared_queue.cc`), keyed by VM id, so
//! every worker thread's VM sees them; a [`Group`] stands for that process.

use crate::abi::status;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct QueueKey {
    pub vm_id: String,
    pub name: Vec<u8>,
}

#[derive(Debug)]
pub(crate) struct Queue {
    pub member: usize,
    pub root_id: u32,
    pub items: VecDeque<Vec<u8>>,
}

/// The shared state behind a [`Group`].
#[derive(Debug, Default)]
pub(crate) struct GroupState {
    pub shared_data: HashMap<(String, Vec<u8>), (Vec<u8>, u32)>,
    pub next_cas: u32,
    pub queue_ids: HashMap<QueueKey, u32>,
    pub queues: HashMap<u32, Queue>,
    pub next_queue_id: u32,
    /// `(member, root context, queue id)` notifications not yet delivered.
    pub ready: Vec<(usize, u32, u32)>,
    pub members: usize,
}

impl GroupState {
    /// proxy-wasm-cpp-host SharedData::set: CAS 0 always writes; a different CAS on an existing
    /// key is CasMismatch (the probe: 8); every write takes the next global CAS (from 1).
    pub fn set_shared_data(&mut self, vm: String, key: Vec<u8>, value: Vec<u8>, cas: u32) -> u32 {
        let k = (vm, key);
        if let Some(entry) = self.shared_data.get(&k) {
            if cas != 0 && cas != entry.1 {
                return status::CAS_MISMATCH;
            }
        }
        let next = self.take_cas();
        self.shared_data.insert(k, (value, next));
        status::OK
    }

    fn take_cas(&mut self) -> u32 {
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        let v = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        v
    }

    /// Registering an existing name returns its id and moves its notifications to the caller,
    /// keeping queued items (SharedQueue::registerQueue).
    pub fn register_queue(&mut self, key: QueueKey, member: usize, root_id: u32) -> u32 {
        let id = match self.queue_ids.get(&key) {
            Some(id) => *id,
            None => {
                self.next_queue_id += 1;
                let id = self.next_queue_id;
                self.queue_ids.insert(key, id);
                id
            }
        };
        let q = self.queues.entry(id).or_insert(Queue { member, root_id, items: VecDeque::new() });
        q.member = member;
        q.root_id = root_id;
        id
    }

    pub fn enqueue(&mut self, id: u32, value: Vec<u8>) -> u32 {
        let Some(q) = self.queues.get_mut(&id) else { return status::NOT_FOUND };
        q.items.push_back(value);
        self.ready.push((q.member, q.root_id, id));
        status::OK
    }

    pub fn dequeue(&mut self, id: u32) -> Result<Vec<u8>, u32> {
        let Some(q) = self.queues.get_mut(&id) else { return Err(status::NOT_FOUND) };
        q.items.pop_front().ok_or(status::EMPTY)
    }
}

/// A group of emulated VMs that share data and queues, like the worker threads of one Envoy
/// (`--concurrency N`). Build several [`crate::Emulator`]s with the same group to emulate them.
#[derive(Debug, Clone, Default)]
pub struct Group {
    pub(crate) state: Arc<Mutex<GroupState>>,
}

impl Group {
    /// A new, empty group (an Envoy process).
    pub fn new() -> Group {
        Group::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GroupState> {
        // A poisoned lock only means a test panicked while holding it; the data is still usable.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Shared data under `key` for VM id `vm_id`: value and CAS.
    pub fn shared_data(&self, vm_id: &str, key: &str) -> Option<(Vec<u8>, u32)> {
        self.lock().shared_data.get(&(vm_id.to_string(), key.as_bytes().to_vec())).cloned()
    }

    /// Sets shared data as a module would (CAS 0: unconditional). Returns the ABI status.
    pub fn set_shared_data(&self, vm_id: &str, key: &str, value: &[u8], cas: u32) -> u32 {
        self.lock().set_shared_data(vm_id.to_string(), key.as_bytes().to_vec(), value.to_vec(), cas)
    }

    /// Id of queue `name` registered by VM `vm_id`.
    pub fn queue_id(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.lock()
            .queue_ids
            .get(&QueueKey { vm_id: vm_id.to_string(), name: name.as_bytes().to_vec() })
            .copied()
    }

    /// Enqueues to a queue as a module would (the registering VM gets `on_queue_ready` when it
    /// next runs). Returns the ABI status.
    pub fn enqueue(&self, queue_id: u32, value: &[u8]) -> u32 {
        self.lock().enqueue(queue_id, value.to_vec())
    }

    /// Dequeues from a queue as a module would.
    pub fn dequeue(&self, queue_id: u32) -> Option<Vec<u8>> {
        self.lock().dequeue(queue_id).ok()
    }

    /// Items waiting in a queue.
    pub fn queue_len(&self, queue_id: u32) -> usize {
        self.lock().queues.get(&queue_id).map(|q| q.items.len()).unwrap_or(0)
    }
}
