//! The Rhai sandbox.
//!
//! A [`Sandbox`] owns one Rhai [`Engine`] configured for untrusted code: no
//! `eval`, no file-system module resolver, `print`/`debug`/`log` captured into
//! a capped per-invocation log, every limit of [`Limits`] applied, and a
//! wall-clock deadline enforced through the progress callback. It is meant to
//! live on one thread (an executor worker, or the manager's compile thread)
//! and serve one invocation at a time.
//!
//! - [`Sandbox::compile`] parses a script under the limits, running none of it.
//! - [`Sandbox::run`] evaluates a cached [`AST`] with a fresh scope holding
//!   `event` and `request`, and maps the program's value to a
//!   [`picloud_core::ScriptResponse`] (see [`response`]).
//!
//! Architecture invariant: this crate knows nothing of NATS, Postgres or HTTP
//! servers. It takes an invocation's inputs and returns its outcome.

#![deny(unsafe_code)]

mod capture;
mod higher_order;
pub mod host;
pub mod hostcall;
pub mod http;
mod kv;
pub mod memory;
pub mod modules;
pub mod response;

use std::sync::Arc;
use std::time::{Duration, Instant};

use picloud_core::effects::{Effects, KvEntry, KvVersion};
use picloud_core::{EventInput, HttpRequestInput, Limits, LogLevel, Outcome};
pub use rhai::AST;
use rhai::{Dynamic, Engine, EvalAltResult, Scope};

use capture::Capture;
pub use capture::{LogLine, log_lines};
pub use hostcall::{HostError, HttpBody, HttpCall, HttpReply};
use modules::Resolver;
pub use modules::{ModuleCache, ModuleSet};

/// How often (in Rhai operations) the progress callback reads the clock.
/// Reading it on every operation would cost more than the operation.
const CLOCK_CHECK_EVERY: u64 = 256;

/// A compile error with the position users need to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (line {line}, column {column})")]
pub struct CompileError {
    pub message: String,
    pub line: usize,
    pub column: usize,
}

/// What one invocation brings to [`Sandbox::run`].
pub struct RunInput<'a> {
    /// The script's name (its kv is scoped by it).
    pub script: &'a str,
    pub event: &'a EventInput,
    pub request: Option<&'a HttpRequestInput>,
    /// Which of `event` and `request` the program can see at all.
    pub inputs: Inputs,
    /// Pinned modules and the sources the module cache lacks.
    pub modules: ModuleSet,
    pub host: Arc<dyn Host>,
    /// When the invocation's wall time began: before the executor compiled
    /// the version (a first run's compile counts against `wall_time_ms`).
    pub started: Instant,
}

/// Which input values a program may read. A program reaches a variable only
/// by naming it (there is no `eval`, and with imports everything is built),
/// so building one its source never names would be wasted work on every
/// call. The test is on the text, so it errs only towards building: a
/// mention in a string or comment counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inputs {
    pub event: bool,
    pub request: bool,
}

impl Inputs {
    pub const ALL: Self = Self {
        event: true,
        request: true,
    };

    /// What a script of `source` importing `imports` modules may read. With
    /// imports, everything (a module's code is not looked at here).
    pub fn of(source: &str, imports: usize) -> Self {
        if imports > 0 {
            return Self::ALL;
        }
        Self {
            event: source.contains("event"),
            request: source.contains("request"),
        }
    }
}

/// Capabilities the embedding process lends a script for one invocation.
/// The sandbox calls them from its own thread; each must return by
/// `deadline`.
pub trait Host: Send + Sync {
    /// The value of secret `name`; `Ok(None)` when there is no such secret;
    /// `Err` (safe to show the script) when it cannot be fetched.
    fn secret(&self, name: &str, deadline: Instant) -> Result<Option<String>, HostError>;

    /// Sends an outbound HTTP call under `limits` (response size, timeout),
    /// by `deadline`.
    fn http(
        &self,
        call: HttpCall,
        limits: &Limits,
        deadline: Instant,
    ) -> Result<HttpReply, HostError> {
        let _ = (call, limits, deadline);
        Err(HostError::Failed(
            "outbound HTTP is not available here".into(),
        ))
    }

    /// The stored entry of `script`'s `key`, `None` when absent; `Err`
    /// (safe to show the script) when the store cannot be reached.
    fn kv_get(
        &self,
        script: &str,
        key: &str,
        deadline: Instant,
    ) -> Result<Option<KvEntry>, HostError> {
        let _ = (script, key, deadline);
        Err(HostError::Failed("kv is not available here".into()))
    }

    /// `script`'s keys starting with `prefix`, sorted, with their versions.
    fn kv_list(
        &self,
        script: &str,
        prefix: &str,
        deadline: Instant,
    ) -> Result<Vec<(String, KvVersion)>, HostError> {
        let _ = (script, prefix, deadline);
        Err(HostError::Failed("kv is not available here".into()))
    }
}

/// A host that lends nothing (compile checks, tests, benchmarks).
pub struct NoHost;

impl Host for NoHost {
    fn secret(&self, _: &str, _: Instant) -> Result<Option<String>, HostError> {
        Err(HostError::Failed("secrets are not available here".into()))
    }
}

/// What one run produced: the outcome for the caller, and the details for
/// the invocation record.
#[derive(Debug)]
pub struct RunResult {
    pub outcome: Outcome,
    /// Captured `log`/`print`/`debug` output.
    pub log: String,
    /// Where each line of `log` ends, with its level and time (see
    /// [`log_lines`]).
    pub lines: Vec<LogLine>,
    /// The full error text, for the operator.
    pub error: Option<String>,
    /// What a successful run asks to commit (kv writes, emits, and the reads
    /// they depend on); always empty for a failed run.
    pub effects: Effects,
}

pub struct Sandbox {
    engine: Engine,
    capture: Arc<Capture>,
    resolver: Resolver,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    /// A sandbox with a module cache of its own.
    pub fn new() -> Self {
        Self::with_module_cache(ModuleCache::default())
    }

    /// A sandbox sharing `cache` (one per executor, for all its threads).
    pub fn with_module_cache(cache: ModuleCache) -> Self {
        let capture = Arc::new(Capture::default());
        let resolver = Resolver::new(cache, capture.clone());
        let mut engine = Engine::new();

        // Close what a default engine leaves open.
        engine.disable_symbol("eval");
        // Currying nests function pointers inside function pointers, past
        // Rhai's size checks (a deep chain overflows the stack when
        // dropped); capturing closures are compiled out (`no_closure`).
        engine.disable_symbol("curry");
        // Rhai's `sleep` parks the thread, past any deadline: replace it.
        engine.register_fn("sleep", |_: rhai::INT| -> Result<(), Box<EvalAltResult>> {
            no_sleep()
        });
        engine.register_fn(
            "sleep",
            |_: rhai::FLOAT| -> Result<(), Box<EvalAltResult>> { no_sleep() },
        );
        engine.set_module_resolver(resolver.clone());
        // Errors name types as a script's author knows them (`int`, not
        // Rust's `i64`): the engine looks registered names up first.
        // Compiles parse only; `optimize` runs the optimizer where it is
        // cheap (deploy checks, which keep no AST, skip it).
        engine.set_optimization_level(rhai::OptimizationLevel::None);
        engine.register_type_with_name::<rhai::INT>("int");
        engine.register_type_with_name::<rhai::FLOAT>("float");

        {
            // A log line with NUL is refused, never altered (the record
            // keeps the log as Postgres text, which cannot hold it): `log`
            // raises a catchable error; `print` and `debug`, whose hooks
            // cannot return one, end the invocation with that error.
            let c = capture.clone();
            engine.on_print(move |s| {
                if s.contains('\0') {
                    c.stop(format!("{REFUSED_TOKEN}{}", nul_in_log("print")));
                } else {
                    c.line(LogLevel::Info, s)
                }
            });
            let c = capture.clone();
            engine.on_debug(move |s, _, _| {
                if s.contains('\0') {
                    c.stop(format!("{REFUSED_TOKEN}{}", nul_in_log("debug")));
                } else {
                    c.line(LogLevel::Debug, s)
                }
            });
            let c = capture.clone();
            engine.register_fn(
                "log",
                move |msg: Dynamic| -> Result<(), Box<EvalAltResult>> {
                    let text = msg.to_string();
                    if text.contains('\0') {
                        return Err(runtime_error(nul_in_log("log")));
                    }
                    c.line(LogLevel::Info, &text);
                    Ok(())
                },
            );
            let c = capture.clone();
            engine.register_fn(
                "secret",
                move |name: &str| -> Result<String, Box<EvalAltResult>> {
                    match c.secret(name) {
                        Ok(Some(v)) => Ok(v),
                        Ok(None) => Err(runtime_error(format!(
                            "no secret named {}",
                            picloud_core::quote(name)
                        ))),
                        Err(e) => Err(runtime_error(e)),
                    }
                },
            );
            let c = capture.clone();
            engine.on_progress(move |ops| {
                // Once ended, ended on every operation: see `Capture::stop`.
                if let Some(token) = c.stopped() {
                    return Some(token.into());
                }
                // The memory flag is a thread-local the allocator raised:
                // read on every operation, so a script ends right after the
                // allocation that broke its limit.
                if let Some(limit) = c.memory_exceeded() {
                    let token = format!(
                        "{}memory limit of {} MiB exceeded",
                        hostcall::LIMIT_TOKEN,
                        limit >> 20
                    );
                    return Some(c.stop(token).into());
                }
                if ops.is_multiple_of(CLOCK_CHECK_EVERY) && c.deadline_passed() {
                    return Some(c.stop(DEADLINE_TOKEN.into()).into());
                }
                None
            });
        }
        response::register(&mut engine);
        http::register(&mut engine, &capture);
        kv::register(&mut engine, &capture);
        host::register(&mut engine);
        higher_order::register(&mut engine);

        let mut sandbox = Self {
            engine,
            capture,
            resolver,
        };
        sandbox.apply_limits(&Limits::default());
        sandbox
    }

    fn apply_limits(&mut self, l: &Limits) {
        let e = &mut self.engine;
        e.set_max_operations(l.max_operations);
        e.set_max_call_levels(l.max_call_depth);
        e.set_max_expr_depths(l.max_expr_depth, l.max_function_expr_depth);
        e.set_max_string_size(l.max_string_bytes);
        e.set_max_array_size(l.max_array_len);
        e.set_max_map_size(l.max_map_len);
        e.set_max_variables(l.max_variables);
        e.set_max_functions(l.max_functions);
        // Every import goes through the resolver, which (until shared
        // modules arrive) finds nothing: a clear "module not found".
        e.set_max_modules(16);
    }

    /// Parses `source` under `limits`. Runs no script code.
    pub fn compile(&mut self, source: &str, limits: &Limits) -> Result<AST, CompileError> {
        self.apply_limits(limits);
        let ast = self.engine.compile(source).map_err(|e| {
            let pos = e.position();
            CompileError {
                message: e.err_type().to_string(),
                line: pos.line().unwrap_or(0),
                column: pos.position().unwrap_or(0),
            }
        })?;
        Ok(optimize(&self.engine, source, ast))
    }

    /// Parses `source` under `limits` and returns the modules it imports
    /// (literal `import "name"` statements), running none of its code and
    /// none of theirs.
    pub fn imports(&mut self, source: &str, limits: &Limits) -> Result<Vec<String>, CompileError> {
        self.apply_limits(limits);
        self.resolver.record();
        let compiled = self
            .engine
            .compile_into_self_contained(&Scope::new(), source);
        let names = self.resolver.finish();
        compiled.map(|_| names).map_err(|e| {
            let pos = e.position();
            let message = match *e {
                EvalAltResult::ErrorParsing(kind, _) => kind.to_string(),
                other => other.to_string(),
            };
            CompileError {
                message,
                line: pos.line().unwrap_or(0),
                column: pos.position().unwrap_or(0),
            }
        })
    }

    /// Runs `ast` once with a fresh scope, under `limits`, until `deadline`
    /// at the latest; its imports resolve from `modules`.
    pub fn run(
        &mut self,
        ast: &AST,
        limits: &Limits,
        deadline: Instant,
        input: RunInput<'_>,
    ) -> RunResult {
        let RunInput {
            script,
            event,
            request,
            inputs,
            modules,
            host,
            started,
        } = input;
        self.apply_limits(limits);
        self.resolver.serve(modules);
        let wall = started + Duration::from_millis(limits.wall_time_ms);
        // The caller's deadline may come first (the job waited in a queue):
        // then it is the caller who gave up, not the script's limit.
        let caller_first = deadline < wall;
        self.capture.begin(script, deadline.min(wall), limits, host);

        let mut scope = Scope::new();
        if inputs.event {
            scope.push_constant_dynamic("event", event_value(event));
        }
        if inputs.request {
            scope.push_constant_dynamic("request", request.map_or(Dynamic::UNIT, request_value));
        }

        let mut evaluated = self.engine.eval_ast_with_scope::<Dynamic>(&mut scope, ast);
        // A stop raised by the last statement (from a hook that cannot
        // fail, such as `print`'s) still ends the run.
        if evaluated.is_ok()
            && let Some(token) = self.capture.stopped()
        {
            evaluated =
                Err(EvalAltResult::ErrorTerminated(token.into(), rhai::Position::NONE).into());
        }
        self.resolver.finish();
        let (log, lines, secrets, effects) = self.capture.finish();
        let mut result = match evaluated {
            Ok(value) => match response::from_value(value, limits) {
                Ok(resp) => RunResult {
                    outcome: Outcome::Response(resp),
                    log,
                    lines,
                    error: None,
                    effects,
                },
                Err(fail) => fail.into_result(log, lines),
            },
            Err(err) => classify(*err, limits, caller_first).into_result(log, lines),
        };
        // The response body is the author's business; the operator's detail
        // is not a place for secrets.
        result.error = result.error.map(|e| capture::mask(&e, &secrets));
        result
    }
}

fn runtime_error(message: String) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(message.into(), rhai::Position::NONE).into()
}

fn no_sleep() -> Result<(), Box<EvalAltResult>> {
    Err(EvalAltResult::ErrorRuntime(
        "sleep is not available: a script may not hold a worker idle".into(),
        rhai::Position::NONE,
    )
    .into())
}

/// The value returned by the progress callback when the clock runs out.
const DEADLINE_TOKEN: &str = "picloud:deadline";
/// Ends an invocation with a script error: the message follows the prefix.
const REFUSED_TOKEN: &str = "picloud:refused:";

/// An error text (a thrown value's, say) holding NUL cannot be stored as
/// it is: it is refused, and said so, with each NUL written `\u0000`.
fn no_nul_in_error(detail: String) -> String {
    if !detail.contains('\0') {
        return detail;
    }
    format!(
        "the error message held U+0000 (NUL), which cannot be stored; here with each \
         NUL written \\u0000: {}",
        detail.replace('\0', "\\u0000")
    )
}

fn nul_in_log(what: &str) -> String {
    format!(
        "{what}: the line holds U+0000 (NUL), which the invocation log cannot store; \
         remove it first, e.g. with .replace(\"\\0\", \"\")"
    )
}

/// A failed run, before it becomes a [`RunResult`].
pub(crate) struct Failure {
    /// Safe for the caller.
    public: String,
    /// For the operator.
    detail: String,
    kind: FailureKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    Script,
    Limit,
    Expired,
}

impl Failure {
    pub(crate) fn script(detail: impl Into<String>) -> Self {
        Self {
            public: "the script failed".into(),
            detail: detail.into(),
            kind: FailureKind::Script,
        }
    }

    pub(crate) fn limit(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            public: name.into(),
            detail: detail.into(),
            kind: FailureKind::Limit,
        }
    }

    pub(crate) fn expired(detail: impl Into<String>) -> Self {
        Self {
            public: String::new(),
            detail: detail.into(),
            kind: FailureKind::Expired,
        }
    }

    fn into_result(self, log: String, lines: Vec<LogLine>) -> RunResult {
        let outcome = match self.kind {
            FailureKind::Limit => Outcome::LimitExceeded {
                message: self.public,
            },
            FailureKind::Script => Outcome::ScriptError {
                message: self.public,
            },
            FailureKind::Expired => Outcome::Expired,
        };
        RunResult {
            outcome,
            log,
            lines,
            error: Some(no_nul_in_error(self.detail)),
            effects: Effects::default(),
        }
    }
}

/// The error under the "in call to function" / "in module" wrappers Rhai
/// puts around an error raised inside a function (a callback of `map`, a
/// module's function): what ended the invocation.
fn innermost(err: EvalAltResult) -> EvalAltResult {
    match err {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
        | EvalAltResult::ErrorInModule(_, inner, _) => innermost(*inner),
        other => other,
    }
}

/// Sources with more statements than this are run unoptimized: Rhai's
/// optimizer takes time quadratic in a block's statements (80,000 `a;` take
/// 2 s, 256 KiB of them 9 s), while parsing alone stays linear. Below it the
/// optimizer costs at most a few tens of milliseconds. See
/// docs/PERFORMANCE.md, "Compile time".
pub const MAX_OPTIMIZED_STATEMENTS: usize = 8_192;

/// `ast` through Rhai's optimizer (constant folding, dead code), unless
/// `source` may hold more than [`MAX_OPTIMIZED_STATEMENTS`] statements. Every
/// statement but a block's last ends in `;` or `}`, so counting those bytes
/// bounds the statements from above (a `;` in a string only makes the
/// count safer).
pub(crate) fn optimize(engine: &Engine, source: &str, ast: AST) -> AST {
    let ends = source.bytes().filter(|b| matches!(b, b';' | b'}')).count();
    if ends > MAX_OPTIMIZED_STATEMENTS {
        return ast;
    }
    engine.optimize_ast(&Scope::new(), ast, rhai::OptimizationLevel::Simple)
}

fn classify(err: EvalAltResult, limits: &Limits, caller_first: bool) -> Failure {
    let detail = err.to_string();
    match innermost(err) {
        EvalAltResult::ErrorTooManyOperations(_) => {
            Failure::limit("operation limit exceeded", detail)
        }
        EvalAltResult::ErrorTerminated(token, _)
            if token
                .clone()
                .into_immutable_string()
                .is_ok_and(|s| s == DEADLINE_TOKEN) =>
        {
            if caller_first {
                Failure::expired(format!("{detail}: the caller's deadline passed first"))
            } else {
                Failure::limit(wall_time_message(limits.wall_time_ms), detail)
            }
        }
        EvalAltResult::ErrorTerminated(token, _)
            if token
                .clone()
                .into_immutable_string()
                .is_ok_and(|s| s.starts_with(hostcall::LIMIT_TOKEN)) =>
        {
            let token = token.into_immutable_string().unwrap_or_default();
            let message = token
                .strip_prefix(hostcall::LIMIT_TOKEN)
                .unwrap_or_default();
            Failure::limit(message, detail)
        }
        EvalAltResult::ErrorTerminated(token, _)
            if token
                .clone()
                .into_immutable_string()
                .is_ok_and(|s| s.starts_with(REFUSED_TOKEN)) =>
        {
            let token = token.into_immutable_string().unwrap_or_default();
            Failure::script(token.strip_prefix(REFUSED_TOKEN).unwrap_or_default())
        }
        EvalAltResult::ErrorStackOverflow(_) => Failure::limit("call depth limit exceeded", detail),
        EvalAltResult::ErrorDataTooLarge(what, _) => {
            Failure::limit(format!("data size limit exceeded ({what})"), detail)
        }
        EvalAltResult::ErrorTooManyVariables(_) => {
            Failure::limit("variable limit exceeded", detail)
        }
        EvalAltResult::ErrorTooManyModules(_) => Failure::limit("module limit exceeded", detail),
        _ => Failure::script(detail),
    }
}

fn wall_time_message(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("wall time limit of {}s exceeded", ms / 1000)
    } else {
        format!("wall time limit of {ms}ms exceeded")
    }
}

fn event_value(event: &EventInput) -> Dynamic {
    let mut map = rhai::Map::new();
    map.insert("id".into(), event.id.to_string().into());
    map.insert("kind".into(), event.kind.as_str().into());
    map.insert(
        "topic".into(),
        event.topic.clone().map_or(Dynamic::UNIT, Dynamic::from),
    );
    map.insert("payload".into(), json_to_dynamic(&event.payload));
    map.insert(
        "scheduled_at".into(),
        event
            .scheduled_at
            .map_or(Dynamic::UNIT, |t| picloud_core::time::rfc3339(&t).into()),
    );
    map.insert("attempt".into(), (event.attempt as rhai::INT).into());
    map.insert("trace_id".into(), event.trace_id.to_string().into());
    map.into()
}

fn request_value(req: &HttpRequestInput) -> Dynamic {
    let strings = |m: &std::collections::BTreeMap<String, String>| -> Dynamic {
        m.iter()
            .map(|(k, v)| (k.as_str().into(), Dynamic::from(v.clone())))
            .collect::<rhai::Map>()
            .into()
    };
    let json = if req.body.trim().is_empty() {
        Dynamic::UNIT
    } else {
        serde_json::from_str::<serde_json::Value>(&req.body)
            .map_or(Dynamic::UNIT, |v| json_to_dynamic(&v))
    };
    let mut map = rhai::Map::new();
    map.insert("method".into(), req.method.clone().into());
    map.insert("path".into(), req.path.clone().into());
    map.insert("params".into(), strings(&req.params));
    map.insert("query".into(), strings(&req.query));
    map.insert("headers".into(), strings(&req.headers));
    map.insert("body".into(), req.body.clone().into());
    map.insert("json".into(), json);
    map.into()
}

/// JSON → Rhai value. Integers that fit stay integers; other numbers are
/// floats.
pub fn json_to_dynamic(v: &serde_json::Value) -> Dynamic {
    rhai::serde::to_dynamic(v).unwrap_or(Dynamic::UNIT)
}

#[cfg(test)]
mod tests;
