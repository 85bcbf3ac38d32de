//! The `webhook` binary's command line: help, and clear errors before anything starts.

use std::process::Command;

fn webhook(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_webhook"))
        .args(args)
        .env_remove("AMQP_SERVER")
        .env_remove("COCKPIT_GITHUB_WEBHOOK_TOKEN_FILE")
        .output()
        .unwrap();
    (output.status.success(), String::from_utf8_lossy(&[output.stdout, output.stderr].concat()).into_owned())
}

#[test]
fn help_names_cockpits_variables() {
    let (ok, text) = webhook(&["--help"]);
    assert!(ok, "{text}");
    for expected in ["AMQP_SERVER", "COCKPIT_GITHUB_WEBHOOK_TOKEN_FILE", "--secrets-dir", "--listen", "127.0.0.1:8080"]
    {
        assert!(text.contains(expected), "--help lacks {expected}:\n{text}");
    }
}

#[test]
fn refuses_to_start_without_its_secret() {
    let (ok, text) = webhook(&["--secret-file", "/nonexistent/webhook-token"]);
    assert!(!ok);
    assert!(text.contains("cannot read the webhook secret /nonexistent/webhook-token"), "{text}");
    assert!(text.contains("COCKPIT_GITHUB_WEBHOOK_TOKEN_FILE"), "{text}");
}

#[test]
fn refuses_a_malformed_broker_address() {
    let (ok, text) = webhook(&["--amqp", "broker-without-port"]);
    assert!(!ok);
    assert!(text.contains("expected host:port"), "{text}");
}
