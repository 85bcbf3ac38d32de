//! `publish-queue` and `inspect-queue`: the debugging tools of the interactive shell, as in
//! Cockpit (cockpit-protocol.md 1.6).

use std::io::Read;

use amqp::{ALL_QUEUES, MAX_PRIORITY, Session};
use anyhow::{Context, bail};

#[derive(clap::Args)]
pub struct PublishArgs {
    /// The queue to publish to.
    #[arg(short, long)]
    queue: String,
    /// Declare the queue (with Cockpit's arguments) if it does not exist.
    #[arg(long)]
    create: bool,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    /// Show only each job's one-line summary.
    #[arg(long)]
    pub human: bool,
}

pub async fn publish(config: &amqp::Config, args: &PublishArgs) -> anyhow::Result<()> {
    let mut body = String::new();
    std::io::stdin().read_to_string(&mut body).context("reading the message from standard input")?;
    let body = body.trim();
    serde_json::from_str::<serde_json::Value>(body).context("the message on standard input is not JSON")?;
    let session = Session::connect(config).await?;
    match ALL_QUEUES.iter().find(|queue| queue.name == args.queue) {
        Some(queue) if args.create => {
            session.declare(*queue).await?;
        }
        _ => {
            if session.depth(&args.queue).await?.is_none() {
                bail!("queue {} does not exist; pass --create to declare it", args.queue);
            }
        }
    }
    session.publish(&args.queue, body.as_bytes(), Some(MAX_PRIORITY)).await?;
    session.close().await;
    Ok(())
}

/// Writes every message of Cockpit's queues to `out` as Cockpit's `inspect-queue` does, then
/// those parked in our dead-letter queue, each with the queue it came from and why. Messages
/// are only looked at: each goes back to its queue untouched.
pub async fn inspect(config: &amqp::Config, args: &InspectArgs, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let session = Session::connect(config).await?;
    let mut taken = Vec::new();
    for queue in ["public", "rhel", "statistics", "webhook", amqp::DEAD_LETTER.name] {
        writeln!(out, "{queue} queue:")?;
        if session.depth(queue).await?.is_none_or(|depth| depth == 0) {
            writeln!(out, "queue {queue} does not exist or is empty")?;
            continue;
        }
        while let Some(delivery) = session.get(queue).await? {
            let body: serde_json::Value = serde_json::from_slice(&delivery.body)
                .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&delivery.body).into_owned()));
            match body.get("human").and_then(|human| human.as_str()) {
                Some(human) if args.human => write!(out, "{human}")?,
                _ => write!(out, "{body}")?,
            }
            match (delivery.header(amqp::QUEUE_HEADER), delivery.header(amqp::ERROR_HEADER)) {
                (Some(from), error) => writeln!(out, "  (parked from {from}: {})", error.unwrap_or_default())?,
                _ => writeln!(out)?,
            }
            // Held unacknowledged until the session closes, then redelivered untouched.
            taken.push(delivery);
        }
    }
    session.close().await;
    drop(taken);
    Ok(())
}
