//! Riding out outages of GitHub and S3: Cockpit's job-runner tries a GitHub write up to 5
//! times, sleeping 1, 2, 4 and 8 s between, on 5xx answers and transport errors, and fails at
//! once on anything else (cockpit-protocol.md 4.7). S3 uploads get the same treatment here; a
//! job's final status, all that is left of its outcome, is tried for longer.

use std::time::Duration;

/// Cockpit's number of tries: about 15 s of outage.
pub const COCKPIT: u32 = 5;
/// Tries of a job's final status: pauses double up to a minute, about 15 minutes of outage.
pub const FINAL_STATUS: u32 = 20;

/// The longest pause between two tries.
const LONGEST_PAUSE: Duration = Duration::from_secs(64);

/// Runs `op` until it succeeds, fails for good, or has been tried `attempts` times.
pub async fn transient<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    attempts: u32,
    is_transient: impl Fn(&E) -> bool,
    mut op: impl FnMut() -> F,
) -> Result<T, E> {
    let mut attempt = 1;
    loop {
        match op().await {
            Err(err) if attempt < attempts && is_transient(&err) => {
                let pause = Duration::from_secs(1 << (attempt - 1).min(6)).min(LONGEST_PAUSE);
                tracing::warn!(what, attempt, %err, ?pause, "retrying");
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs an operation that always fails with `err` under `attempts`; returns the result, how
    /// many times it ran, and how long (in paused time) that took.
    async fn always_failing(attempts: u32, err: &str, transient_err: bool) -> (Result<(), &str>, u32, Duration) {
        let start = tokio::time::Instant::now();
        let mut calls = 0;
        let result = transient(
            "test",
            attempts,
            |_| transient_err,
            || {
                calls += 1;
                std::future::ready(Err(err))
            },
        )
        .await;
        (result, calls, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_with_cockpits_pauses_then_gives_up() {
        let (result, calls, took) = always_failing(COCKPIT, "503", true).await;
        assert_eq!((result, calls), (Err("503"), 5));
        assert_eq!(took, Duration::from_secs(1 + 2 + 4 + 8));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_fail_at_once_and_success_stops_retrying() {
        let (result, calls, _) = always_failing(COCKPIT, "404", false).await;
        assert_eq!((result, calls), (Err("404"), 1));
        let mut calls = 0;
        let result: Result<u32, &str> = transient(
            "test",
            COCKPIT,
            |_| true,
            || {
                calls += 1;
                std::future::ready(if calls < 3 { Err("502") } else { Ok(calls) })
            },
        )
        .await;
        assert_eq!(result, Ok(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_status_is_tried_for_about_a_quarter_of_an_hour() {
        let (result, calls, took) = always_failing(FINAL_STATUS, "502", true).await;
        assert_eq!((result, calls), (Err("502"), 20));
        // 1 + 2 + ... + 32, then 64 s thirteen times.
        assert_eq!(took, Duration::from_secs(63 + 13 * 64));
    }
}
