//! Progress lines for long steps: a spinner while waiting, the elapsed time when done.

use std::future::Future;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Runs `work`, showing `message` with a spinner, then a ✔/✘ line with the time it took.
pub async fn step<T, E>(message: &str, work: impl Future<Output = Result<T, E>>) -> Result<T, E> {
    let spinner = ProgressBar::new_spinner().with_message(message.to_owned());
    spinner.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let started = Instant::now();
    let result = work.await;
    spinner.finish_and_clear();
    let mark = if result.is_ok() { "✔" } else { "✘" };
    println!("{mark} {message} ({:.1} s)", started.elapsed().as_secs_f64());
    result
}
