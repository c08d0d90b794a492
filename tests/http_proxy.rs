//! L7 proxying through a running fulcrum to real origins.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_300_gets_evenly() {
    let o = fleet(3).await;
    let p = Proxy::start(&http_config(
        &servers(&[&o[0], &o[1], &o[2]]),
        "",
        NO_HEALTH,
    ))
    .await;
    let c = client();
    let counts = spread(&c, &p.url("web", "/"), 300).await;
    let mut v: Vec<usize> = ["o0", "o1", "o2"]
        .iter()
        .map(|n| counts.get(*n).copied().unwrap_or(0))
        .collect();
    v.sort();
    assert_eq!(
        v,
        [100, 100, 100],
        "round robin over 300 requests: {counts:?}"
    );
}
