//! Publishes a few orders and processes them once each, surviving server restarts:
//!
//!     cargo run -p ferry-client --example orders -- ws://127.0.0.1:7700/ws
//!
//! Kill and restart the server while it runs: publishes are resent and stored once, the
//! subscription comes back, and each order is printed once.

use ferry_client::{ClientConfig, ClientEvent, FerryClient, PublishOutcome, StartFrom, SubscribeOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "ws://127.0.0.1:7700/ws".into());
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
    let (client, mut events) = FerryClient::start(ClientConfig::new(vec![url], seed));
    client.subscribe(SubscribeOptions { from: StartFrom::Earliest, ..SubscribeOptions::new("orders", "example") }).await.map_err(|e| format!("{e:?}"))?;

    let publisher = client.clone();
    tokio::spawn(async move {
        for n in 1..=10 {
            let body = format!(r#"{{"order": {n}, "total": {}}}"#, n * 10);
            match publisher.publish("orders", Some(&format!("customer-{}", n % 3)), &body).await {
                Ok(PublishOutcome::Stored { id, .. }) => println!("order {n} stored as {id}"),
                other => eprintln!("order {n}: {other:?}"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    });

    let mut processed = 0;
    while let Some(event) = events.next().await {
        match event {
            ClientEvent::Message(delivery) => {
                println!("processing {} (key {:?}): {}", delivery.id, delivery.key, delivery.body);
                if !delivery.repaired {
                    client.ack(&delivery).await.map_err(|e| format!("{e:?}"))?;
                }
                processed += 1;
                if processed == 10 {
                    break;
                }
            }
            ClientEvent::State { state, why } => eprintln!("connection: {state:?} {}", why.unwrap_or_default()),
            other => eprintln!("{other:?}"),
        }
    }
    client.close();
    Ok(())
}
