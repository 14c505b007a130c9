//! Shared modules: `import "name" as m;`.
//!
//! The sandbox never looks anything up by itself. Its module resolver works
//! in one of two modes:
//!
//! - **record** (deploy time, [`crate::Sandbox::imports`]): every literal
//!   `import` is noted and answered with an empty module, so a script's or
//!   module's imports are known without running any of its code, or any
//!   module's.
//! - **serve** (run time): an import resolves to the version the script
//!   version pinned, from a [`ModuleCache`] shared by the executor's
//!   threads, or, on first use, by compiling and evaluating the source the
//!   executor fetched ([`ModuleSet`]). A module's top-level code therefore
//!   runs in executors only, under the invocation's limits and deadline.
//!   A name that was not pinned is "module not found"; a module that imports
//!   itself (directly or not) is an "import cycle".

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use rhai::{Engine, EvalAltResult, Module, ModuleResolver, Position, Scope, Shared};

use crate::capture::Capture;

/// The modules one invocation may import: the script version's pins, and
/// the sources of pinned versions the cache does not hold yet.
#[derive(Debug, Clone, Default)]
pub struct ModuleSet {
    pub pinned: BTreeMap<String, u32>,
    pub sources: HashMap<String, String>,
}

type Evaluated = HashMap<(String, u32), Shared<Module>>;

/// Evaluated modules per (name, version), shared by every sandbox of an
/// executor. Versions are immutable, so an entry never goes stale.
#[derive(Clone, Default)]
pub struct ModuleCache {
    inner: Arc<Mutex<Evaluated>>,
}

impl ModuleCache {
    pub fn contains(&self, name: &str, version: u32) -> bool {
        self.lock().contains_key(&(name.to_owned(), version))
    }

    fn get(&self, name: &str, version: u32) -> Option<Shared<Module>> {
        self.lock().get(&(name.to_owned(), version)).cloned()
    }

    fn insert(&self, name: &str, version: u32, module: Shared<Module>) {
        self.lock().insert((name.to_owned(), version), module);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Evaluated> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Default)]
enum Mode {
    #[default]
    Idle,
    Record(Vec<String>),
    Serve {
        set: ModuleSet,
        loading: Vec<String>,
    },
}

#[derive(Clone)]
pub(crate) struct Resolver {
    mode: Arc<Mutex<Mode>>,
    cache: ModuleCache,
    capture: Arc<Capture>,
}

impl Resolver {
    pub(crate) fn new(cache: ModuleCache, capture: Arc<Capture>) -> Self {
        Self {
            mode: Arc::default(),
            cache,
            capture,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Mode> {
        self.mode.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn record(&self) {
        *self.lock() = Mode::Record(Vec::new());
    }

    pub(crate) fn serve(&self, set: ModuleSet) {
        *self.lock() = Mode::Serve {
            set,
            loading: Vec::new(),
        };
    }

    /// Back to idle; returns what record mode noted.
    pub(crate) fn finish(&self) -> Vec<String> {
        match std::mem::take(&mut *self.lock()) {
            Mode::Record(names) => names,
            _ => Vec::new(),
        }
    }
}

fn not_found(path: &str, pos: Position) -> Box<EvalAltResult> {
    EvalAltResult::ErrorModuleNotFound(path.to_owned(), pos).into()
}

fn runtime(message: String, pos: Position) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(message.into(), pos).into()
}

impl ModuleResolver for Resolver {
    fn resolve(
        &self,
        engine: &Engine,
        _source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<Shared<Module>, Box<EvalAltResult>> {
        let (version, source) = {
            let mut mode = self.lock();
            match &mut *mode {
                Mode::Idle => return Err(not_found(path, pos)),
                Mode::Record(names) => {
                    if !names.iter().any(|n| n == path) {
                        names.push(path.to_owned());
                    }
                    return Ok(Module::new().into());
                }
                Mode::Serve { set, loading } => {
                    let Some(&version) = set.pinned.get(path) else {
                        return Err(not_found(path, pos));
                    };
                    if let Some(m) = self.cache.get(path, version) {
                        return Ok(m);
                    }
                    if loading.iter().any(|l| l == path) {
                        return Err(runtime(
                            format!("import cycle through module {}", picloud_core::quote(path)),
                            pos,
                        ));
                    }
                    let Some(source) = set.sources.get(path).cloned() else {
                        return Err(not_found(path, pos));
                    };
                    loading.push(path.to_owned());
                    (version, source)
                }
            }
        };
        // Unlocked: evaluating the module may resolve its own imports.
        self.capture.enter_module(true);
        let evaluated = engine
            .compile(&source)
            .map_err(|e| {
                runtime(
                    format!("module {} does not compile: {e}", picloud_core::quote(path)),
                    pos,
                )
            })
            .map(|ast| crate::optimize(engine, &source, ast))
            .and_then(|ast| Module::eval_ast_as_new(Scope::new(), &ast, engine));
        self.capture.enter_module(false);
        if let Mode::Serve { loading, .. } = &mut *self.lock() {
            loading.retain(|l| l != path);
        }
        let module: Shared<Module> = evaluated?.into();
        self.cache.insert(path, version, module.clone());
        Ok(module)
    }
}
