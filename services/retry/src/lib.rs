//! The one retry policy of every service, in one place. A request that fails for a reason that
//! may pass ([`Transient`], said by each error type from its source) is tried again at once a
//! few times, the pauses doubling (backon's exponential backoff; Cockpit's job-runner tries a
//! GitHub write 5 times, 1, 2, 4 and 8 s apart: cockpit-protocol.md 4.7), and never sooner than
//! a rate limit's end. Work that still fails is put off: its message goes back to the broker to
//! be tried again later ([`put_off`]), and after [`MAX_RETRIES`] it is parked where an operator
//! sees it.

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use prometheus_client::metrics::counter::Counter;

/// A failure that may pass, and may say when to try again.
pub trait Transient: std::fmt::Display {
    fn is_transient(&self) -> bool;
    /// At the earliest (a rate limit's end), if the failure says.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// How a request is tried: pauses from `first`, doubling up to `longest`, `attempts` tries in
/// all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub first: Duration,
    pub longest: Duration,
    pub attempts: u32,
}

impl Policy {
    /// This policy with `attempts` tries in all.
    pub const fn attempts(self, attempts: u32) -> Policy {
        Policy { attempts, ..self }
    }
}

/// Cockpit's: five tries, 1, 2, 4 and 8 s apart, about 15 s of outage.
pub const COCKPIT: Policy = Policy { first: Duration::from_secs(1), longest: LONGEST_PAUSE, attempts: 5 };
/// A job's final status, all that is left of its outcome: pauses double up to a minute, about
/// 15 minutes of outage.
pub const FINAL_STATUS: Policy = COCKPIT.attempts(20);
/// Reaching the broker, which starts in seconds: from 0.1 s doubling up to 5 s (give the
/// attempts).
pub const BROKER: Policy =
    Policy { first: Duration::from_millis(100), longest: Duration::from_secs(5), attempts: u32::MAX };

/// The longest pause between two tries, rate limits included: a longer wait is the caller's,
/// who puts the work off rather than hold a worker's slot.
const LONGEST_PAUSE: Duration = Duration::from_secs(64);

/// Refusals that named a wait (GitHub limiting our rate) this process saw. A process-wide
/// count, as a rate limit is: the worker's `/metrics` shows it, its job processes' added.
pub static RATE_LIMITED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Runs `op` until it succeeds, fails for good, has been tried as `policy` says, or is rate
/// limited for longer than a minute. `what` names it in the log of each retry.
pub async fn transient<T, E: Transient, F: Future<Output = Result<T, E>>>(
    what: &str,
    policy: Policy,
    mut op: impl FnMut() -> F,
) -> Result<T, E> {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(policy.first)
        .with_max_delay(policy.longest)
        .with_factor(2.0)
        .with_max_times(usize::try_from(policy.attempts.saturating_sub(1)).unwrap_or(usize::MAX));
    let counted = || {
        let attempt = op();
        async {
            let result = attempt.await;
            if result.as_ref().is_err_and(|err| err.retry_after().is_some()) {
                RATE_LIMITED.inc();
            }
            result
        }
    };
    counted
        .retry(backoff)
        .when(|err: &E| err.is_transient())
        // Never before a rate limit's end; a limit longer than the longest pause ends the tries.
        .adjust(|err: &E, pause| {
            let pause = pause?.max(err.retry_after().unwrap_or_default());
            (pause <= LONGEST_PAUSE).then_some(pause)
        })
        .notify(|err: &E, pause| tracing::warn!(what, %err, ?pause, "retrying"))
        .await
}

/// How often a message's work is put off before it is parked: with [`put_off`]'s pauses, about
/// an hour of outage.
pub const MAX_RETRIES: u32 = 12;

/// How long to put off work that failed for the `retries`th time (0 the first), at least until
/// `not_before` (a rate limit's end): 5 s, doubling, up to 10 minutes.
pub fn put_off(retries: u32, not_before: Option<Duration>) -> Duration {
    let backoff = Duration::from_secs(5u64.saturating_mul(1 << retries.min(10))).min(Duration::from_secs(600));
    backoff.max(not_before.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failure that is transient or not, and may name a wait.
    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Failure(bool, Option<Duration>);

    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl Transient for Failure {
        fn is_transient(&self) -> bool {
            self.0
        }
        fn retry_after(&self) -> Option<Duration> {
            self.1
        }
    }

    /// Runs an operation that always fails with `err` under `policy`; returns the result, how
    /// many times it ran, and how long (in paused time) that took.
    async fn always_failing(policy: Policy, err: Failure) -> (Result<(), Failure>, u32, Duration) {
        let start = tokio::time::Instant::now();
        let mut calls = 0;
        let result = transient("test", policy, || {
            calls += 1;
            std::future::ready(Err(err))
        })
        .await;
        (result, calls, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_with_cockpits_pauses_then_gives_up() {
        let (result, calls, took) = always_failing(COCKPIT, Failure(true, None)).await;
        assert_eq!((result, calls), (Err(Failure(true, None)), 5));
        assert_eq!(took, Duration::from_secs(1 + 2 + 4 + 8));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_fail_at_once_and_success_stops_retrying() {
        let (_, calls, _) = always_failing(COCKPIT, Failure(false, None)).await;
        assert_eq!(calls, 1);
        let mut calls = 0;
        let result: Result<u32, Failure> = transient("test", COCKPIT, || {
            calls += 1;
            std::future::ready(if calls < 3 { Err(Failure(true, None)) } else { Ok(calls) })
        })
        .await;
        assert_eq!(result, Ok(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_status_is_tried_for_about_a_quarter_of_an_hour() {
        let (_, calls, took) = always_failing(FINAL_STATUS, Failure(true, None)).await;
        assert_eq!(calls, 20);
        // 1 + 2 + ... + 32, then 64 s thirteen times.
        assert_eq!(took, Duration::from_secs(63 + 13 * 64));
    }

    #[tokio::test(start_paused = true)]
    async fn the_broker_is_asked_often_at_first() {
        let (_, calls, took) = always_failing(BROKER.attempts(8), Failure(true, None)).await;
        assert_eq!(calls, 8);
        // 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 3.2, then 5 s (give or take the timer's milliseconds).
        assert!(took >= Duration::from_millis(11_300) && took < Duration::from_millis(11_400), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_rate_limit_is_waited_out_a_long_one_is_the_callers() {
        let before = RATE_LIMITED.get();
        let (_, calls, took) = always_failing(COCKPIT, Failure(true, Some(Duration::from_secs(30)))).await;
        assert_eq!((calls, took), (5, Duration::from_secs(4 * 30)));
        let (_, calls, took) = always_failing(COCKPIT, Failure(true, Some(Duration::from_secs(3600)))).await;
        assert_eq!((calls, took), (1, Duration::ZERO));
        assert!(RATE_LIMITED.get() >= before + 6, "each refusal that named a wait is counted");
    }

    #[test]
    fn put_off_doubles_to_ten_minutes_and_waits_for_a_rate_limit() {
        let waits: Vec<u64> = (0..MAX_RETRIES).map(|n| put_off(n, None).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 600, 600, 600, 600, 600]);
        assert_eq!(waits.iter().sum::<u64>(), 3635, "about an hour in all");
        assert_eq!(put_off(0, Some(Duration::from_secs(42))), Duration::from_secs(42));
    }
}
