//! Progress lines for long steps: a spinner while waiting, the elapsed time when done.

use std::future::Future;
use std::time::{Duration, Instant};

use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// A step in progress, shown as a spinner until it is finished.
pub struct Spinner {
    bar: ProgressBar,
    /// The display it shares with steps running beside it, if any.
    multi: Option<MultiProgress>,
    message: String,
    started: Instant,
    /// Whether its line was printed: a spinner dropped before says it was stopped.
    ended: bool,
}

impl Spinner {
    pub fn start(message: &str) -> Spinner {
        Spinner::start_in(None, message)
    }

    /// A spinner among others that run at the same time, in `multi`'s display if given.
    pub fn start_in(multi: Option<&MultiProgress>, message: &str) -> Spinner {
        let mut bar = ProgressBar::new_spinner().with_message(message.to_owned());
        if let Some(multi) = multi {
            bar = multi.add(bar);
        }
        bar.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"));
        bar.enable_steady_tick(Duration::from_millis(100));
        Spinner { bar, multi: multi.cloned(), message: message.to_owned(), started: Instant::now(), ended: false }
    }

    /// Shows what the step is doing now after its name.
    pub fn detail(&self, detail: &str) {
        self.bar.set_message(format!("{}: {detail}", self.message));
    }

    /// Whether the spinner is drawn nowhere (no terminal): then the caller says what matters.
    pub fn is_hidden(&self) -> bool {
        self.bar.is_hidden()
    }

    /// Prints `line` above the spinners ([`say`]).
    pub fn say(&self, line: &str) {
        say(self.multi.as_ref(), line);
    }

    /// Replaces the spinner by a ✔/✘ line with the time the step took. Beside other steps on
    /// a terminal, the line is printed by their shared display, above the spinners still
    /// running: a line printed past it would leave their old frames behind.
    pub fn finish(mut self, ok: bool) {
        self.end(if ok { "✔" } else { "✘" }, "");
    }

    fn end(&mut self, mark: &str, note: &str) {
        let line = format!("{mark} {} ({:.1} s{note})", self.message, self.started.elapsed().as_secs_f64());
        self.bar.finish_and_clear();
        if let Some(multi) = &self.multi {
            multi.remove(&self.bar);
        }
        say(self.multi.as_ref(), &line);
        self.ended = true;
    }
}

impl Drop for Spinner {
    /// A step cut short (another step failed, or Ctrl-C) still ends as a line of its own.
    fn drop(&mut self) {
        if !self.ended {
            self.end("✘", ", stopped");
        }
    }
}

/// Prints `line`: through `display` if it is drawn, so that its spinners' old frames are not
/// left behind, else (no terminal) as it is.
pub fn say(display: Option<&MultiProgress>, line: &str) {
    match display {
        Some(display) if !display.is_hidden() => {
            let _ = display.println(line);
        }
        _ => println!("{line}"),
    }
}

/// Runs `work` as a step shown with a spinner.
pub async fn step<T, E>(message: &str, work: impl Future<Output = Result<T, E>>) -> Result<T, E> {
    let spinner = Spinner::start(message);
    let result = work.await;
    spinner.finish(result.is_ok());
    result
}

/// Steps that may run at the same time, each shown with its own spinner.
#[derive(Default)]
pub struct Steps {
    multi: MultiProgress,
    spinners: Mutex<Vec<Option<Spinner>>>,
}

impl Steps {
    /// The display the steps share, for steps of xtask's own that run beside them.
    pub fn display(&self) -> &MultiProgress {
        &self.multi
    }
}

impl local::deployment::Progress for Steps {
    fn start(&self, step: &str) -> usize {
        let mut spinners = self.spinners.lock().expect("spinners");
        spinners.push(Some(Spinner::start_in(Some(&self.multi), step)));
        spinners.len() - 1
    }

    fn done(&self, step: usize, ok: bool) {
        if let Some(spinner) = self.spinners.lock().expect("spinners")[step].take() {
            spinner.finish(ok);
        }
    }
}
