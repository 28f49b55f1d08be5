//! Compiled modules: one process-wide engine, and a cache so each module compiles once.

use crate::Error;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::SystemTime;
use wasmtime::{Engine, Module};

type Result<T> = std::result::Result<T, Error>;

/// The process-wide engine: every emulator shares it, so compiled modules can be shared too.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(Engine::default)
}

#[derive(Hash, PartialEq, Eq)]
enum CacheKey {
    File(PathBuf, Option<SystemTime>, u64),
    Bytes(u64, usize),
}

/// One slot per module: the map's lock is held only to find the slot, the slot's lock while its
/// module compiles, so different modules compile at once (on several test threads, or from
/// [`load_modules`]) while a second load of the same module waits for the first compile instead
/// of repeating it.
type Slot = Arc<Mutex<Option<Module>>>;

fn cache() -> &'static Mutex<HashMap<CacheKey, Slot>> {
    static CACHE: OnceLock<Mutex<HashMap<CacheKey, Slot>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn cached(key: CacheKey, load: impl FnOnce() -> Result<Module>) -> Result<Module> {
    // A poisoned lock only means a test panicked while holding it; the data is still usable.
    let slot = {
        let mut map = cache().lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(key).or_default())
    };
    let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(m) = slot.as_ref() {
        return Ok(m.clone());
    }
    let m = load()?;
    *slot = Some(m.clone());
    Ok(m)
}

/// Compiles the modules at `paths` into the cache at once, one thread each (Cranelift compiles a
/// module on one core), so that the [`crate::Emulator::load`]s after it find them compiled: what
/// a test that starts several modules (a [`crate::gateway::Gateway`]) calls first. The first
/// failure is returned.
pub fn load_modules(paths: &[std::path::PathBuf]) -> Result<()> {
    std::thread::scope(|scope| {
        let loads: Vec<_> = paths.iter().map(|p| scope.spawn(move || load_module(p).map(drop))).collect();
        for load in loads {
            match load.join() {
                Ok(result) => result?,
                Err(_) => return Err(Error::Load("a module's compile thread panicked".to_string())),
            }
        }
        Ok(())
    })
}

/// Compiles (or takes from the process-wide cache) the module at `path`. The cache key includes
/// the file's modification time, so a rebuilt module is compiled again.
pub fn load_module(path: impl AsRef<Path>) -> Result<Module> {
    let path = path.as_ref();
    let meta = std::fs::metadata(path).map_err(|e| Error::Load(format!("{}: {e}", path.display())))?;
    let canon = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let key = CacheKey::File(canon, meta.modified().ok(), meta.len());
    cached(key, || {
        let bytes = std::fs::read(path).map_err(|e| Error::Load(format!("{}: {e}", path.display())))?;
        Module::new(engine(), &bytes).map_err(|e| Error::Load(format!("{}: {e:#}", path.display())))
    })
}

/// Compiles (or takes from the cache) a module from its bytes (binary or WAT text).
pub fn load_module_bytes(bytes: &[u8]) -> Result<Module> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    cached(CacheKey::Bytes(h.finish(), bytes.len()), || {
        Module::new(engine(), bytes).map_err(|e| Error::Load(format!("{e:#}")))
    })
}
