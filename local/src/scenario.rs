//! The end-to-end scenarios run-local asserts, each against the running deployment.

use amqp::{ALL_QUEUES, Session};

/// A scenario that did not hold: what was expected and what happened.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error(transparent)]
    Amqp(#[from] amqp::Error),
    #[error("{0}")]
    Assertion(String),
}

fn check(holds: bool, what: impl FnOnce() -> String) -> Result<(), ScenarioError> {
    if holds { Ok(()) } else { Err(ScenarioError::Assertion(what())) }
}

/// `queue`: a persistent message round-trips through each of the four Cockpit queues, declared
/// with Cockpit's arguments, confirmed by the broker, and acknowledged.
pub async fn queue(config: &amqp::Config) -> Result<(), ScenarioError> {
    let session = Session::connect(config).await?;
    for queue in ALL_QUEUES {
        session.declare(queue).await?;
        let body = format!(r#"{{"command":"echo round trip through {}"}}"#, queue.name);
        session.publish(queue.name, body.as_bytes(), queue.max_priority).await?;
        // The queue may hold messages of others; ours is the last one published.
        let mut last = None;
        while let Some(delivery) = session.get(queue.name).await? {
            last = Some((delivery.body.clone(), delivery.persistent, delivery.priority));
            delivery.ack().await?;
        }
        let (got, persistent, priority) = last.ok_or_else(|| {
            ScenarioError::Assertion(format!("queue {}: the published message is missing", queue.name))
        })?;
        check(got == body.as_bytes(), || {
            format!("queue {}: expected {body}, got {}", queue.name, String::from_utf8_lossy(&got))
        })?;
        check(persistent, || format!("queue {}: the message came back non-persistent", queue.name))?;
        check(priority == queue.max_priority, || {
            format!("queue {}: priority {priority:?}, expected {:?}", queue.name, queue.max_priority)
        })?;
    }
    session.close().await;
    Ok(())
}
