//! Issue #12 §3: with every worker busy on a memory-hungry script, the
//! process stays under the sum of the workers' `max_memory_bytes` plus its
//! baseline (and a stated allowance for the allocator). Its own test binary,
//! so the process RSS read here is this test's alone.
//!
//! The scripts build memory in many small allocations (the case a check every
//! N operations missed: each push is one operation, and hundreds of them
//! could pass before a periodic check). With the check at allocation time a
//! worker overshoots its limit by at most one allocation.
//!
//! docs/PERFORMANCE.md ("Memory under load") has its figures in release.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use picloud_core::{EventInput, Limits, Outcome, Uuid};
use picloud_executor::pool::Pool;
use picloud_sandbox::{ModuleSet, RunInput, Sandbox};

#[global_allocator]
static ALLOC: picloud_sandbox::memory::CountingAlloc = picloud_sandbox::memory::CountingAlloc;

const WORKERS: usize = 4;
const LIMIT: usize = 32 << 20;
const ROUNDS: usize = 3;
/// What the allocator may hold beyond the scripts' live bytes (segments
/// not yet returned, per-thread caches), plus one allocation per worker.
const ALLOWANCE: u64 = 48 << 20;

/// This process's resident set, in bytes (`VmRSS` in /proc/self/status).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

#[test]
fn busy_memory_hungry_workers_stay_under_the_sum_of_their_limits() {
    let pool = Pool::start(WORKERS, WORKERS * 2, Default::default()).expect("pool");
    let limits = Limits {
        max_memory_bytes: LIMIT,
        max_operations: 1_000_000_000,
        wall_time_ms: 60_000,
        max_array_len: 1_000_000,
        max_map_len: 1_000_000,
        ..Limits::default()
    };
    // A map grown one key at a time with a fresh 256-byte string each: many
    // small allocations, none big (an index assignment is not re-measured
    // by Rhai's size checks, so only the memory limit ends it).
    let source = r#"let m = #{}; let s = ""; s.pad(256, "x"); let i = 0;
        loop { m[`k${i}`] = s + i; i += 1; }"#;
    // Warm the pool (each worker's engine, the allocator's first segments)
    // before the baseline is read.
    let (tx, rx) = mpsc::channel();
    for _ in 0..WORKERS {
        let tx = tx.clone();
        pool.try_submit(Box::new(move |sb: &mut Sandbox| {
            let ast = sb
                .compile(r#""warm""#, &Limits::default())
                .expect("compiles");
            let _ = tx.send(ast);
        }))
        .expect("submit");
    }
    for _ in 0..WORKERS {
        rx.recv_timeout(Duration::from_secs(30)).expect("warm");
    }
    let baseline = rss();

    let peak = Arc::new(AtomicU64::new(baseline));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let started = Instant::now();
    for _ in 0..ROUNDS {
        let (tx, rx) = mpsc::channel();
        for _ in 0..WORKERS {
            let (tx, limits) = (tx.clone(), limits.clone());
            pool.try_submit(Box::new(move |sb: &mut Sandbox| {
                let ast = sb.compile(source, &limits).expect("compiles");
                let r = sb.run(
                    &ast,
                    &limits,
                    Instant::now() + Duration::from_secs(120),
                    RunInput {
                        inputs: picloud_sandbox::Inputs::ALL,
                        script: "hungry",
                        event: &EventInput::http(Uuid::nil()),
                        request: None,
                        modules: ModuleSet::default(),
                        host: Arc::new(picloud_sandbox::NoHost),
                        started: Instant::now(),
                    },
                );
                let _ = tx.send(r.outcome);
            }))
            .expect("submit");
        }
        for _ in 0..WORKERS {
            let outcome = rx.recv_timeout(Duration::from_secs(120)).expect("ends");
            assert!(
                matches!(&outcome, Outcome::LimitExceeded { message } if message.contains("memory limit")),
                "{outcome:?}"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let peak = peak.load(Ordering::Relaxed);
    let bound = baseline + (WORKERS * LIMIT) as u64 + ALLOWANCE;
    eprintln!(
        "memory: {WORKERS} workers × {} MiB limit, {ROUNDS} rounds in {:?}: baseline {} MiB, \
         peak RSS {} MiB, bound {} MiB",
        LIMIT >> 20,
        started.elapsed(),
        baseline >> 20,
        peak >> 20,
        bound >> 20
    );
    assert!(
        peak <= bound,
        "peak RSS {} MiB is over baseline + workers × limit + allowance = {} MiB",
        peak >> 20,
        bound >> 20
    );
}
