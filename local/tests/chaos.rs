//! The fault runs of `local::chaos` in their short form (`cargo xtask chaos` runs the full
//! ones): nothing answered as stored is lost.

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_under_load_loses_no_delivery_answered_200() {
    let dir = tempfile::tempdir().unwrap();
    let run = local::chaos::broker_restart_under_load(dir.path(), 100, 100, 25).await.unwrap();
    assert_eq!(run.sent, run.accepted + run.refused);
    assert!(run.stored >= run.accepted, "{run:?}");
    assert!(run.refused > 0, "the broker was away for some deliveries: {run:?}");
    assert!(run.accepted >= 200, "the deliveries before and after the restart were stored: {run:?}");
}
