//! The four Cockpit queues and their declare arguments. Arguments must match exactly on every
//! declare, or the broker closes the channel with 406 PRECONDITION_FAILED.

use lapin::types::{AMQPValue, FieldTable, ShortString};

/// Priority of ordinary jobs (Cockpit's `BASELINE_PRIORITY`).
pub const BASELINE_PRIORITY: u8 = 5;
/// Priority of `/devel` jobs, statistics commands and hand-published messages.
pub const MAX_PRIORITY: u8 = 9;

/// A durable queue and the optional arguments it is declared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queue {
    pub name: &'static str,
    /// `x-max-priority`, sent as a signed 32-bit integer (pika's encoding, field type `I`).
    pub max_priority: Option<u8>,
    /// `x-single-active-consumer`, sent as a boolean (field type `t`).
    pub single_active_consumer: bool,
}

/// Raw GitHub events published by the webhook.
pub const WEBHOOK: Queue = Queue { name: "webhook", max_priority: None, single_active_consumer: false };
/// Jobs that need no internal network.
pub const PUBLIC: Queue = Queue { name: "public", max_priority: Some(MAX_PRIORITY), single_active_consumer: false };
/// "Internal" jobs: contexts containing `rhel`.
pub const RHEL: Queue = Queue { name: "rhel", max_priority: Some(MAX_PRIORITY), single_active_consumer: false };
/// Statistics commands, run by one designated worker at a time.
pub const STATISTICS: Queue =
    Queue { name: "statistics", max_priority: Some(MAX_PRIORITY), single_active_consumer: true };

/// The queues in the order Cockpit's run-queue declares them.
pub const ALL_QUEUES: [Queue; 4] = [WEBHOOK, RHEL, PUBLIC, STATISTICS];

/// Where a message whose work failed for a while is parked after its last try, for an operator
/// to see (`inspect-queue`, the worker's metrics) and to publish again by hand. A queue of ours:
/// Cockpit's tools never declare it.
pub const DEAD_LETTER: Queue =
    Queue { name: "workbench.dead-letter", max_priority: None, single_active_consumer: false };

/// How long a message may wait before it is tried again: the delay queues of each Cockpit
/// queue, one per wait, each handing its messages back to that queue when their time is up.
pub const DELAYS: [u64; 8] = [5, 10, 20, 40, 80, 160, 320, 600];

/// The delay queue where a message of `queue` waits `seconds` (one of [`DELAYS`]) before it is
/// back in `queue`: `workbench.delay.<queue>.<seconds>s`. Its messages live `seconds` and are
/// then dead-lettered, through the default exchange, to `queue`. One queue per wait, as a
/// message expires only at the head of its queue.
pub(crate) fn delay_queue(queue: &str, seconds: u64) -> (String, FieldTable) {
    let mut table = FieldTable::default();
    let ms = i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
    table.insert(ShortString::from("x-message-ttl"), AMQPValue::LongLongInt(ms));
    table.insert(ShortString::from("x-dead-letter-exchange"), AMQPValue::LongString("".into()));
    table.insert(ShortString::from("x-dead-letter-routing-key"), AMQPValue::LongString(queue.into()));
    (delay_queue_name(queue, seconds), table)
}

/// The name of the delay queue where messages of `queue` wait `seconds`.
pub fn delay_queue_name(queue: &str, seconds: u64) -> String {
    format!("workbench.delay.{queue}.{seconds}s")
}

impl Queue {
    /// The declare arguments as they go on the wire.
    pub(crate) fn arguments(&self) -> FieldTable {
        let mut table = FieldTable::default();
        if let Some(priority) = self.max_priority {
            table.insert(ShortString::from("x-max-priority"), AMQPValue::LongInt(priority.into()));
        }
        if self.single_active_consumer {
            table.insert(ShortString::from("x-single-active-consumer"), AMQPValue::Boolean(true));
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(queue: Queue) -> Vec<(String, AMQPValue)> {
        queue.arguments().inner().iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn cockpit_declare_arguments() {
        assert_eq!(wire(WEBHOOK), vec![]);
        let priority = ("x-max-priority".to_owned(), AMQPValue::LongInt(9));
        assert_eq!(wire(PUBLIC), vec![priority.clone()]);
        assert_eq!(wire(RHEL), vec![priority.clone()]);
        assert_eq!(wire(STATISTICS), vec![priority, ("x-single-active-consumer".to_owned(), AMQPValue::Boolean(true))]);
    }

    #[test]
    fn delay_queues_hand_their_messages_back() {
        let (name, arguments) = delay_queue("public", 40);
        assert_eq!(name, "workbench.delay.public.40s");
        let arguments: Vec<(String, AMQPValue)> =
            arguments.inner().iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        assert_eq!(
            arguments,
            [
                ("x-dead-letter-exchange".to_owned(), AMQPValue::LongString("".into())),
                ("x-dead-letter-routing-key".to_owned(), AMQPValue::LongString("public".into())),
                ("x-message-ttl".to_owned(), AMQPValue::LongLongInt(40_000)),
            ]
        );
        assert_eq!(wire(DEAD_LETTER), vec![]);
    }

    #[test]
    fn cockpit_queue_names_and_order() {
        let names: Vec<_> = ALL_QUEUES.iter().map(|q| q.name).collect();
        assert_eq!(names, ["webhook", "rhel", "public", "statistics"]);
        assert_eq!((BASELINE_PRIORITY, MAX_PRIORITY), (5, 9));
    }
}
