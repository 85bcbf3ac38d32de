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
    fn cockpit_queue_names_and_order() {
        let names: Vec<_> = ALL_QUEUES.iter().map(|q| q.name).collect();
        assert_eq!(names, ["webhook", "rhel", "public", "statistics"]);
        assert_eq!((BASELINE_PRIORITY, MAX_PRIORITY), (5, 9));
    }
}
