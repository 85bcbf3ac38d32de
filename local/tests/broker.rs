//! The private broker against real RabbitMQ: certificate login, the Cockpit queues, refusals,
//! and that stopping it leaves nothing behind.

use std::time::Duration;

use amqp::{ALL_QUEUES, Error, PUBLIC, Queue, ServerVerification, Session};
use local::{Broker, secrets};
use tempfile::TempDir;

/// A broker with fresh secrets, in a temporary directory removed after the test.
struct Fixture {
    broker: Broker,
    ca: secrets::Ca,
    _dir: TempDir,
}

async fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (secrets, ca) = secrets::generate(&dir.path().join("secrets"), false).unwrap();
    let broker = Broker::start(&dir.path().join("broker"), &secrets).await.unwrap();
    Fixture { broker, ca, _dir: dir }
}

#[tokio::test]
async fn round_trips_persistent_messages_on_the_cockpit_queues() {
    let fixture = start().await;
    let config = fixture.broker.client_config();
    local::scenario::queue(&config).await.unwrap();
    // Declaring again with the same arguments is accepted, and every queue was drained.
    let session = Session::connect(&config).await.unwrap();
    for queue in ALL_QUEUES {
        assert_eq!(session.declare(queue).await.unwrap(), 0, "{} is drained", queue.name);
    }

    // Read the queues back from the broker itself: durable, with exactly Cockpit's arguments.
    let listing = fixture.broker.ctl(&["list_queues", "--quiet", "--no-table-headers", "name", "durable", "arguments"]);
    let mut lines: Vec<String> =
        listing.unwrap().lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "public true [{\"x-max-priority\",9}]",
            "rhel true [{\"x-max-priority\",9}]",
            "statistics true [{\"x-max-priority\",9},{\"x-single-active-consumer\",true}]",
            "webhook true []",
        ]
    );
}

#[tokio::test]
async fn refuses_a_declare_with_other_arguments() {
    let fixture = start().await;
    let session = Session::connect(&fixture.broker.client_config()).await.unwrap();
    session.declare(PUBLIC).await.unwrap();
    let other = Queue { max_priority: Some(5), ..PUBLIC };
    let err = session.declare(other).await.unwrap_err();
    assert!(matches!(err, Error::ArgumentsMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("PRECONDITION_FAILED") || err.to_string().contains("406"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_certificate_user_gets_in() {
    let fixture = start().await;
    // No certificate, another CA's, our CA's for no user, plain AMQP; one user, TLS only, no
    // management: as the `amqp-refusals` scenario checks on either runtime.
    let eval = |expr: &str| fixture.broker.eval(expr).map_err(|e| e.to_string());
    local::scenario::amqp_refusals(&fixture.broker.client_config(), &fixture.ca, false, eval).await.unwrap();
    // What the scenario asks is answered by the node, not made up: a string comes back as it
    // is, and an expression that fails there is an error that says which.
    assert_eq!(fixture.broker.eval("atom_to_list(node()).\n").unwrap(), fixture.broker.node());
    let err = fixture.broker.eval("no_such_module:call().\n").unwrap_err().to_string();
    assert!(err.contains("no_such_module:call()"), "{err}");
}

#[tokio::test]
async fn verifies_the_broker_certificate_against_our_ca() {
    let fixture = start().await;
    let amqp::Address::Tls { port, .. } = fixture.broker.address() else { unreachable!() };
    // The same listener reached by a name its certificate does not carry (an IPv4-mapped IPv6
    // address): refused when the host name is checked, accepted with chain-only verification.
    let mut config = fixture.broker.client_config();
    config.address = amqp::Address::Tls { host: "::ffff:127.0.0.1".into(), port };
    let err = Session::connect(&config).await.err().expect("the host name is checked by default");
    assert!(err.to_string().contains("not valid for name"), "{err}");
    config.verification = ServerVerification::ChainOnly;
    Session::connect(&config).await.expect("chain-only verification ignores the name").close().await;

    // A broker certificate from another CA is refused, however little is checked.
    let other = tempfile::tempdir().unwrap();
    let (other_secrets, _) = secrets::generate(other.path(), false).unwrap();
    config.files.ca = other_secrets.ca_cert();
    let err = Session::connect(&config).await.err().expect("the chain is always checked");
    assert!(err.to_string().contains("invalid peer certificate"), "{err}");
}

/// Stopped cleanly, or dropped (its node halted at once), a broker leaves no process and no
/// open port behind.
#[tokio::test]
async fn two_brokers_side_by_side_and_nothing_left_after_stop_or_drop() {
    let (mut stopped, dropped) = tokio::join!(start(), start());
    for fixture in [&stopped, &dropped] {
        let session = Session::connect(&fixture.broker.client_config()).await.unwrap();
        session.declare(PUBLIC).await.unwrap();
        session.publish("public", b"{}", Some(5)).await.unwrap();
        session.close().await;
    }
    assert_ne!(stopped.broker.address(), dropped.broker.address());
    let left = |pids: &[u32]| -> Vec<u32> {
        pids.iter().copied().filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists()).collect()
    };

    let pids = stopped.broker.process_ids();
    assert!(pids.len() >= 2, "the node and its epmd run: {pids:?}");
    stopped.broker.stop().await;
    assert!(left(&pids).is_empty(), "left running after stop: {:?}", left(&pids));
    assert!(stopped.broker.process_ids().is_empty());

    let (pids, address) = (dropped.broker.process_ids(), dropped.broker.socket_address());
    assert!(pids.len() >= 2, "the node and its epmd run: {pids:?}");
    drop(dropped);
    assert!(left(&pids).is_empty(), "left after drop: {:?}", left(&pids));
    assert!(std::net::TcpStream::connect(address).is_err(), "{address} still takes connections after the drop");
}

/// `halt` ends the node by itself, with no signal from us: it stops taking connections.
#[tokio::test]
async fn a_halted_broker_ends_without_a_signal() {
    let fixture = start().await;
    let address = fixture.broker.socket_address();
    assert!(std::net::TcpStream::connect(address).is_ok());

    fixture.broker.halt();

    let mut refused = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(address).is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "{address} still takes connections 10 s after the halt");
}

/// A message published to a queue nobody declared is handed back and said so: the broker
/// acknowledges it all the same, and taking that for stored would lose it.
#[tokio::test]
async fn a_message_no_queue_takes_is_an_error_not_a_loss() {
    let fixture = start().await;
    let session = Session::connect(&fixture.broker.client_config()).await.unwrap();
    let err = session.publish(PUBLIC.name, b"{}", Some(5)).await.expect_err("no queue public yet");
    assert!(matches!(&err, Error::Unroutable { queue } if queue == "public"), "{err:?}");
    assert!(retry::Transient::is_transient(&err), "a queue may be declared later");
    session.declare(PUBLIC).await.unwrap();
    session.publish(PUBLIC.name, b"{}", Some(5)).await.unwrap();
    assert_eq!(session.declare(PUBLIC).await.unwrap(), 1, "the second one is stored");
}

/// Work put off goes to a delay queue of its queue's, and comes back to that queue when its
/// time is up, with its tries and last error recorded and its priority kept; a parked message
/// says where it came from. Cockpit's queues keep their arguments.
#[tokio::test]
async fn a_message_put_off_comes_back_to_its_queue_after_its_delay() {
    let fixture = start().await;
    let session = Session::connect(&fixture.broker.client_config()).await.unwrap();
    session.declare(PUBLIC).await.unwrap();
    session.publish(PUBLIC.name, br#"{"job": "x"}"#, Some(9)).await.unwrap();
    let taken = session.get(PUBLIC.name).await.unwrap().unwrap();
    assert_eq!(taken.retries, 0);
    session.retry_later(PUBLIC.name, &taken, std::time::Duration::from_secs(3), 1, "GitHub is away").await.unwrap();
    taken.ack().await.unwrap();
    assert!(session.get(PUBLIC.name).await.unwrap().is_none(), "away while it waits");
    let delay_queue = amqp::delay_queue_name(PUBLIC.name, 5);
    assert_eq!(fixture.broker.messages(&delay_queue).unwrap(), Some((1, 0)), "waiting in {delay_queue}");
    let back = local::client::wait_until("the message back in public", std::time::Duration::from_secs(30), || async {
        Ok::<_, local::client::TimedOut>(match session.get(PUBLIC.name).await.unwrap() {
            Some(back) => local::client::Check::Done(back),
            None => local::client::Check::NotYet("public is empty".into()),
        })
    });
    let back = back.await.unwrap();
    assert_eq!((back.body.as_slice(), back.priority, back.retries), (&br#"{"job": "x"}"#[..], Some(9), 1));
    assert_eq!(back.header(amqp::ERROR_HEADER).as_deref(), Some("GitHub is away"));
    session.park(PUBLIC.name, &back, "given up").await.unwrap();
    back.ack().await.unwrap();
    let parked = session.get(amqp::DEAD_LETTER.name).await.unwrap().unwrap();
    assert_eq!(parked.header(amqp::QUEUE_HEADER).as_deref(), Some("public"));
    assert_eq!(parked.header(amqp::ERROR_HEADER).as_deref(), Some("given up"));
    assert_eq!(session.declare(PUBLIC).await.unwrap(), 0, "Cockpit's arguments, unchanged");
}

/// Clients ask for a 15 s heartbeat and RabbitMQ (default 60 s) agrees to it; a broker that goes
/// silent (stopped, not closed: as behind a partition) is then noticed by the heartbeat, within
/// a few of them rather than RabbitMQ's default two minutes, and once it is back a new session
/// works.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_broker_is_noticed_by_the_heartbeat() {
    use rustix::process::{Pid, Signal, kill_process};
    let fixture = start().await;
    let session = Session::connect(&fixture.broker.client_config()).await.unwrap();
    assert_eq!((amqp::HEARTBEAT_SECONDS, session.heartbeat()), (15, 15));
    session.close().await;

    let mut config = fixture.broker.client_config();
    config.heartbeat = 1;
    let session = Session::connect(&config).await.unwrap();
    assert_eq!(session.heartbeat(), 1);
    let signal_all = |signal| {
        for pid in fixture.broker.process_ids() {
            let _ = kill_process(Pid::from_raw(pid as i32).unwrap(), signal);
        }
    };
    signal_all(Signal::STOP);
    let noticed =
        local::client::wait_until("the session noticing the silent broker", Duration::from_secs(30), || async {
            Ok::<_, local::client::TimedOut>(match session.is_connected() {
                false => local::client::Check::Done(()),
                true => local::client::Check::NotYet("the session still looks connected".into()),
            })
        })
        .await;
    // The broker runs again before anything can fail.
    signal_all(Signal::CONT);
    noticed.unwrap();
    let again = Session::connect(&config).await.unwrap();
    again.close().await;
}

/// A start on other ports, after one whose AMQP port was taken, appends to the same log as the
/// failed one: what that one logged does not fail the new start (it failed every try, so a
/// taken port failed the whole start).
#[tokio::test]
async fn a_failed_listener_in_an_earlier_start_s_log_does_not_fail_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let (secrets, _) = secrets::generate(&dir.path().join("secrets"), false).unwrap();
    let broker_dir = dir.path().join("broker");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let earlier = "2026-12-01 14:15:59.539515+00:00 [error] <0.667.0> Failed to start Ranch listener \
                   {acceptor,{127,0,0,1},41071} in ranch_ssl:listen(...) for reason eaddrinuse\n";
    std::fs::write(broker_dir.join("rabbit.log"), earlier).unwrap();
    let broker = Broker::start(&broker_dir, &secrets).await.unwrap();
    local::scenario::queue(&broker.client_config()).await.unwrap();
}
