//! A delivery as the webhook judges it: signature, event, UTF-8, JSON, Cockpit's filter. The
//! input's first line is the event header (none if empty), the rest the body, signed with the
//! secret unless the line starts with `!` (so that most inputs get past the signature).
#![no_main]

use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzzing-secret";

fuzz_target!(|data: &[u8]| {
    let (line, body) = match data.iter().position(|&byte| byte == b'\n') {
        Some(end) => (&data[..end], &data[end + 1..]),
        None => (data, &[][..]),
    };
    let (forged, line) = match line.strip_prefix(b"!") {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let Ok(event) = std::str::from_utf8(line) else { return };
    let signature = if forged { line.to_vec() } else { webhook::sign_sha256(SECRET, body).into_bytes() };
    let received = webhook::Received {
        sha256: Some(&signature),
        sha1: None,
        event: Some(event).filter(|event| !event.is_empty()),
        body,
    };
    if let Ok(decision) = webhook::judge(SECRET, &received) {
        assert!(!forged, "a delivery with a forged signature was accepted: {decision:?}");
        // Syntax only: JSON numbers have no range (serde_json's `Value` refuses 1E3456, which
        // GitHub's JSON and Python's json take), and the webhook must not be stricter.
        let json = serde_json::from_slice::<serde::de::IgnoredAny>(body);
        assert!(json.is_ok(), "{decision:?} of a body that is not JSON");
    }
});
