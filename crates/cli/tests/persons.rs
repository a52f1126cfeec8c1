//! The person through the real server (8 partitions, SQLite): carts filled under an anonymous
//! id, then identify, then an order under the user id. The buyers get no reminder, every other
//! shopper exactly one, addressed to the person; the journeys read by the anonymous id show the
//! run handed over.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Server, create_key, http};
use serde_json::{Value, json};

const FILE: &str = r#"
[[connector]]
name = "mail"
type = "log"

[[trigger]]
name = "abandoned-cart"
on = "cart.item_added"
wait = { for = "order.placed", within = "4s" }
on_timeout = [ { deliver = "mail", channel = "email", template = "abandoned_cart" } ]
"#;

async fn get(url: &str, key: &str, path: &str) -> Value {
    let r = http()
        .get(format!("{url}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.unwrap()
}

async fn send(url: &str, key: &str, events: &[Value]) {
    let body: Vec<String> = events.iter().map(Value::to_string).collect();
    let r = http()
        .post(format!("{url}/v1/events"))
        .bearer_auth(key)
        .header("content-type", "application/x-ndjson")
        .body(body.join("\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

fn ev(id: String, ty: &str, subject: &str, data: Value) -> Value {
    json!({ "id": id, "source": "shop", "type": ty, "subject": subject, "data": data })
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_carts_follow_the_person_to_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path(), "admin");
    let server = Server::start(dir.path(), &[]);
    let url = server.url.clone();
    let r = http()
        .put(format!("{url}/v1/triggers"))
        .bearer_auth(&key)
        .header("content-type", "application/toml")
        .body(FILE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let shoppers = 20;
    for i in 0..shoppers {
        let (anon, user) = (format!("anon-{i}"), format!("cus-{i}"));
        send(
            &url,
            &key,
            &[
                ev(
                    format!("c-{i}"),
                    "cart.item_added",
                    &anon,
                    json!({ "sku": "A", "quantity": 1 }),
                ),
                ev(
                    format!("i-{i}"),
                    "customer.identified",
                    &user,
                    json!({ "user_id": user, "anonymous_id": anon }),
                ),
                ev(
                    format!("k-{i}"),
                    "customer.consent_changed",
                    &user,
                    json!({ "channel": "email", "granted": true }),
                ),
            ],
        )
        .await;
        if i % 2 == 0 {
            // Checkout right after identify: the order races the hand-over of the cart's run.
            let order = json!({ "order_id": format!("o-{i}"), "customer_id": user,
                "total": { "amount": 1000, "currency": "EUR" },
                "lines": [ { "sku": "A", "quantity": 1, "unit_price": { "amount": 1000, "currency": "EUR" } } ] });
            send(
                &url,
                &key,
                &[ev(format!("o-{i}"), "order.placed", &user, order)],
            )
            .await;
        }
    }
    // The waits end 4 s after the cart adds; then the deliveries are recorded.
    let expected: Vec<String> = (0..shoppers)
        .filter(|i| i % 2 == 1)
        .map(|i| format!("cus-{i}"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got: Vec<String>;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let d = get(&url, &key, "/v1/deliveries?limit=100").await;
        got = d["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["trigger"] == "abandoned-cart")
            .map(|d| d["customer"].as_str().unwrap_or("").to_owned())
            .collect();
        got.sort();
        if got.len() >= expected.len() || Instant::now() > deadline {
            break;
        }
    }
    // A little longer: nothing more may come (no buyer, no second reminder).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d = get(&url, &key, "/v1/deliveries?limit=100").await;
    let mut again: Vec<String> = d["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["trigger"] == "abandoned-cart")
        .map(|d| d["customer"].as_str().unwrap_or("").to_owned())
        .collect();
    again.sort();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(again, expected_sorted, "reminders by customer");

    // Read by the anonymous id, the journeys are the person's: the run was handed over.
    let j = get(&url, &key, "/v1/customers/anon-1/journeys").await;
    let text = j.to_string();
    assert!(text.contains("handed_over"), "{j:#}");
}
