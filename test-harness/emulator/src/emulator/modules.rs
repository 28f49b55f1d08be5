//! Compiled modules: one process-wide engine, and a cache so each module compiles once.

use crate::Error;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
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

fn cache() -> &'static Mutex<HashMap<CacheKey, Module>> {
    static CACHE: OnceLock<Mutex<HashMap<CacheKey, Module>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn cached(key: CacheKey, load: impl FnOnce() -> Result<Module>) -> Result<Module> {
    // Compiling under the lock makes parallel tests wait for one compile instead of repeating it.
    let mut map = cache().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(m) = map.get(&key) {
        return Ok(m.clone());
    }
    let m = load()?;
    map.insert(key, m.clone());
    Ok(m)
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
