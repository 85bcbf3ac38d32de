//! When a process of the deployment is asked to stop, in one place for the services and xtask:
//! SIGTERM (podman stop, Kubernetes, systemd, `cargo xtask down`) or SIGINT (Ctrl-C).

use tokio::signal::unix::{SignalKind, signal};

/// Resolves on the first SIGTERM or SIGINT after it is first polled (its handlers are
/// installed then).
pub async fn requested() {
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    /// A SIGTERM to this process (alone in its test binary) ends the wait.
    #[tokio::test]
    async fn a_sigterm_ends_the_wait() {
        let waiting = tokio::spawn(super::requested());
        // On this single-threaded runtime the task now runs to its first wait: its handlers
        // are in place before the signal is sent.
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let pid = std::process::id().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await;
        ended.expect("the SIGTERM ended the wait").unwrap();
    }
}
