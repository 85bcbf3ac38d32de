//! A message of a job queue, as run-queue reads it: whatever parses encodes again to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = serde_json::from_slice::<amqp::JobMessage>(data) {
        let encoded = serde_json::to_vec(&message).expect("a parsed message encodes");
        let again: amqp::JobMessage = serde_json::from_slice(&encoded).expect("an encoded message parses");
        assert_eq!(serde_json::to_vec(&again).unwrap(), encoded);
    }
});
