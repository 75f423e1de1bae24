//! The `--demo` producer: a simulated price feed on topic `demo`, at a rate that drifts
//! between about 1 and 9 events per second, so a newcomer sees events at once.

use std::future::Future;
use std::time::Duration;

use crate::cluster::{Cluster, ClusterError};
use crate::hub::{Hub, Publish, PublishError};
use crate::wire::publish::OwnedPublish;

/// Publishes to `demo` until the hub shuts down (run it under [`crate::producer::spawn`]).
pub async fn produce(hub: Hub) -> Result<(), PublishError> {
    run(|data| {
        let result =
            hub.publish(&Publish { topics: &["demo"], event: Some("tick"), data: &data, retry: None, routed: None });
        async move { result.map(drop) }
    })
    .await
}

/// Like [`produce`], through the cluster log (cluster mode: every node serves the demo).
pub async fn produce_to(cluster: std::sync::Arc<Cluster>) -> Result<(), ClusterError> {
    run(|data| {
        let cluster = std::sync::Arc::clone(&cluster);
        async move {
            let event = OwnedPublish {
                topics: vec!["demo".into()],
                event: Some("tick".into()),
                data,
                retry: None,
                routed: None,
            };
            cluster.publish(std::slice::from_ref(&event), None).await?;
            Ok(())
        }
    })
    .await
}

async fn run<F, Fut, E>(mut publish: F) -> Result<(), E>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let start = tokio::time::Instant::now();
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut price: i64 = 10_000; // cents
    for n in 1u64.. {
        let elapsed = start.elapsed().as_secs_f64();
        let rate = 5.0 + 4.0 * (elapsed / 10.0).sin();
        tokio::time::sleep(Duration::from_secs_f64(1.0 / rate)).await;
        // xorshift64: a deterministic wiggle, no randomness needed
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        price = (price + i64::try_from(state % 201).unwrap_or(100) - 100).max(1);
        let data = serde_json::json!({ "n": n, "price": format!("{}.{:02}", price / 100, price % 100), "rate": (rate * 10.0).round() / 10.0 });
        publish(data.to_string()).await?;
    }
    Ok(())
}
