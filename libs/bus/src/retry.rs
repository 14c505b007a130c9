//! The one pause of every retry loop: [`pause_or_stop`] sleeps a
//! [`Backoff`]'s next pause unless shutdown comes first. (The core crate
//! holds the timing but does no I/O, timers included.)

use picloud_core::{Backoff, Shutdown};

/// Sleeps `backoff`'s next pause, or less if `shutdown` comes first:
/// `true` then.
pub async fn pause_or_stop(backoff: &mut Backoff, shutdown: &Shutdown) -> bool {
    let pause = backoff.next_pause();
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(pause) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn sleeps_the_pause_or_ends_at_shutdown() {
        let ms = Duration::from_millis(1);
        let shutdown = Shutdown::new();
        let mut b = Backoff::new(20 * ms, 20 * ms);
        let before = tokio::time::Instant::now();
        assert!(!pause_or_stop(&mut b, &shutdown).await);
        assert!(before.elapsed() >= 10 * ms, "{:?}", before.elapsed());
        assert_eq!(b.steps(), 1);
        shutdown.cancel();
        let hour = Duration::from_secs(3_600);
        assert!(pause_or_stop(&mut Backoff::new(hour, hour), &shutdown).await);
    }
}
