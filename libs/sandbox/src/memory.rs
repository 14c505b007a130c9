//! A memory limit per invocation.
//!
//! Rhai checks the size of strings, arrays and maps it builds, but not every
//! way a value grows (a map grown by `m[new_key] = v` is never re-measured).
//! So the sandbox also counts what its own thread allocates: binaries that
//! run scripts install [`CountingAlloc`] as the global allocator, which keeps
//! a per-thread tally of bytes allocated minus bytes freed. While an
//! invocation runs, its thread is armed with a ceiling (what it held at the
//! start plus `max_memory_bytes`): the allocation that passes the ceiling
//! raises the thread's flag there and then, and the progress callback reads
//! the flag on every operation. So a script ends at the first operation after
//! the allocation that broke its limit: it overshoots by at most that one
//! allocation, however few operations it spends building big values.
//!
//! Underneath is mimalloc rather than the C library's malloc: an HTTP call
//! allocates on one thread and frees on another (the request is built by a
//! tokio thread and dropped by a script worker), where glibc's malloc spent
//! about a tenth of PiCloud's CPU (docs/PERFORMANCE.md).
//!
//! The tally is per thread, so it is off both ways when memory crosses
//! threads: what a script's thread allocates and another thread frees stays
//! counted here (over-count), and what another thread allocated and the
//! script's thread frees (a request built by tokio, dropped by the worker) is
//! subtracted here (under-count: the script may hold that much more than its
//! limit before the ceiling trips). Without the allocator installed
//! (unit tests, or a binary that does not opt in) the tally stays zero and
//! the limit is inert; every other limit still applies.

// The one module of the sandbox that needs `unsafe`: a global allocator is
// an `unsafe impl` (checked by xtask's tidy test).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc as System;
use std::cell::Cell;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// The tally this thread may not pass (`isize::MAX`: not armed).
    static CEILING: Cell<isize> = const { Cell::new(isize::MAX) };
    /// Set by the allocation that passed [`CEILING`]; cleared by [`arm`].
    static OVER: Cell<bool> = const { Cell::new(false) };
}

/// mimalloc, counting per thread.
pub struct CountingAlloc;

// SAFETY: every call is forwarded to mimalloc unchanged; the tally is a
// const-initialised thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by mimalloc with this layout.
        unsafe { System.dealloc(ptr, layout) };
        add(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(new_size as isize - layout.size() as isize);
        }
        p
    }
}

fn add(delta: isize) {
    // `try_with`: the thread-local may already be gone while a thread exits.
    let Ok(live) = LIVE.try_with(|c| {
        let live = c.get().wrapping_add(delta);
        c.set(live);
        live
    }) else {
        return;
    };
    // Only growth can pass the ceiling; the flag stays up once raised (the
    // invocation is ending), so a free cannot hide an overshoot.
    if delta > 0 && CEILING.try_with(Cell::get).is_ok_and(|max| live > max) {
        let _ = OVER.try_with(|o| o.set(true));
    }
}

/// Arms this thread for one invocation: from now on, holding more than
/// `max_bytes` beyond what it holds now raises [`over_limit`].
pub fn arm(max_bytes: usize) {
    let ceiling =
        thread_live_bytes().saturating_add(isize::try_from(max_bytes).unwrap_or(isize::MAX));
    let _ = CEILING.try_with(|c| c.set(ceiling));
    let _ = OVER.try_with(|o| o.set(false));
}

/// Disarms this thread (the invocation ended).
pub fn disarm() {
    let _ = CEILING.try_with(|c| c.set(isize::MAX));
    let _ = OVER.try_with(|o| o.set(false));
}

/// Whether an allocation on this thread has passed the armed ceiling. A
/// thread-local read: cheap enough for every Rhai operation.
pub fn over_limit() -> bool {
    OVER.try_with(Cell::get).unwrap_or(false)
}

/// Bytes this thread holds now (allocated minus freed here).
pub fn thread_live_bytes() -> isize {
    LIVE.try_with(Cell::get).unwrap_or(0)
}
