//! Customer 360 against the real binary over HTTP: an anonymous visitor identified, merged and
//! unmerged (on SQLite and PostgreSQL), read by any of its identities, with lookups and the
//! merge history on both sides.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Postgres, Shop};
use serde_json::{Value, json};

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect()
}

fn browsing(anon: &str) -> Value {
    json!([
        {"id": "b1", "source": "web", "type": "page.viewed", "subject": anon,
         "data": {"url": "https://shop.example/"}},
        {"id": "b2", "source": "web", "type": "page.viewed", "subject": anon,
         "data": {"url": "https://shop.example/shoes"}},
        {"id": "b3", "source": "web", "type": "product.viewed", "subject": anon,
         "data": {"product_id": "P-1", "sku": "SKU-SHOE", "category": "shoes"}},
        {"id": "b4", "source": "web", "type": "cart.item_added", "subject": anon,
         "data": {"sku": "SKU-SHOE", "quantity": 2, "unit_price": {"amount": 4500, "currency": "EUR"}}},
    ])
}

fn identified(id: &str, user: &str, anon: &str) -> Value {
    json!([{"id": id, "source": "web", "type": "customer.identified", "subject": user,
            "data": {"user_id": user, "anonymous_id": anon, "email": "Ada@Example.com",
                     "traits": {"plan": "Gold", "name": "Ada"}}}])
}

/// A profile with its merge history sorted (its order follows the identity asked for).
fn normalised(mut p: Value) -> Value {
    let mut merges = p["merges"].as_array().unwrap().clone();
    merges.sort_by_key(Value::to_string);
    p["merges"] = Value::Array(merges);
    p
}

fn merge_of<'a>(p: &'a Value, a: &str, b: &str) -> Vec<&'a Value> {
    p["merges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| {
            let ids = strs(&m["identities"]);
            ids.contains(&a) && ids.contains(&b)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn customer_360_merge_and_unmerge_round_trip() {
    customer_360_merge_and_unmerge_round_trip_on(&[]).await;
}

/// The same on the PostgreSQL state store (the cluster mode's).
#[tokio::test(flavor = "multi_thread")]
async fn customer_360_merge_and_unmerge_round_trip_on_postgres() {
    let pg = Postgres::schema("customer_360_merge_a");
    customer_360_merge_and_unmerge_round_trip_on(&pg.env()).await;
}

async fn customer_360_merge_and_unmerge_round_trip_on(backend: &[(&str, &str)]) {
    let env = Shop::start(backend);
    let (anon, user, email) = ("anon-7f3", "user-42", "ada@example.com");
    let c = env.ingest(browsing(anon)).await;
    let p = env
        .read(&format!("/v1/customers/{anon}?min_offset={c}"))
        .await;
    assert_eq!(p["id"], anon);
    assert_eq!(
        (
            p["stats"]["page_views"].as_u64(),
            p["stats"]["product_views"].as_u64()
        ),
        (Some(2), Some(1))
    );

    let c1 = env.ingest(identified("i1", user, anon)).await;
    let consent = env
        .run(
            "customer.update_consent",
            json!({"customer_id": user, "channel": "email", "granted": true, "source": "checkout"}),
        )
        .await;
    let c = format!("{c1},{}", consent.cursor());
    let by_anon = env
        .read(&format!("/v1/customers/{anon}?min_offset={c}"))
        .await;
    let by_user = env
        .read(&format!("/v1/customers/{user}?min_offset={c}"))
        .await;
    let by_email = env
        .read(&format!("/v1/customers/{email}?min_offset={c}"))
        .await;
    let by_upper = env.read("/v1/customers/ADA@example.COM").await;
    let by_user = normalised(by_user);
    assert_eq!(
        normalised(by_anon),
        by_user,
        "one profile whatever identity is asked"
    );
    assert_eq!(normalised(by_email), by_user);
    assert_eq!(by_upper["id"], user, "e-mail lookup ignores case");
    let p = &by_user;
    assert_eq!(p["id"], user);
    assert_eq!(
        strs(&p["identities"]["all"]),
        [anon, "email:ada@example.com", user]
    );
    assert_eq!(strs(&p["identities"]["user_ids"]), [user]);
    assert_eq!(strs(&p["identities"]["anonymous_ids"]), [anon]);
    assert_eq!(strs(&p["identities"]["emails"]), [email]);
    assert_eq!(p["stats"]["page_views"], 2);
    assert_eq!(p["stats"]["product_views"], 1);
    assert_eq!(strs(&p["stats"]["favourite_categories"]), ["shoes"]);
    assert_eq!(
        p["cart"]["items"],
        json!([{"sku": "SKU-SHOE", "quantity": 2, "unit_price": {"amount": 4500, "currency": "EUR"}}])
    );
    assert_eq!(
        p["cart"]["value"],
        json!({"amount": 9000, "currency": "EUR"})
    );
    assert_eq!(p["consent"]["email"], true);
    assert_eq!(p["consent_details"]["email"]["source"], "checkout");
    assert_eq!(p["traits"]["plan"], "Gold");
    assert_eq!(p["traits"]["email"], "Ada@Example.com");
    assert_eq!(merge_of(p, anon, user).len(), 1, "{p}");

    // The anonymous visitor buys as the user.
    env.run("inventory.adjust", json!({"sku": "SKU-SHOE", "set": 10}))
        .await;
    env.run(
        "order.place",
        json!({"order_id": "ord-ada", "customer_id": user, "currency": "EUR", "email": email,
               "lines": [{"sku": "SKU-SHOE", "quantity": 2, "unit_price": 4500, "category": "shoes"}]}),
    )
    .await;
    let paid = env.run("order.pay", json!({"order_id": "ord-ada"})).await;
    let p = env
        .read(&format!(
            "/v1/customers/{anon}?min_offset={}",
            paid.offset()
        ))
        .await;
    assert_eq!(p["id"], user);
    assert_eq!(p["stats"]["orders"], 1);
    assert_eq!(
        p["stats"]["lifetime_value"],
        json!({"amount": 9000, "currency": "EUR"})
    );
    assert_eq!(p["stats"]["last_order"]["order_id"], "ord-ada");
    assert!(
        p["cart"].is_null(),
        "the order empties the cart: {}",
        p["cart"]
    );
    let orders = env.read(&format!("/v1/customers/{email}/orders")).await;
    assert_eq!(orders["customer"], user);
    let orders = orders["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 1);
    assert_eq!(
        (orders[0]["order_id"].as_str(), orders[0]["status"].as_str()),
        (Some("ord-ada"), Some("paid"))
    );

    // Lookups.
    let found = env.read("/v1/customers?trait=plan&value=gold").await;
    let found = found["customers"].as_array().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["id"], user);
    assert!(
        env.read("/v1/customers?trait=plan&value=silver").await["customers"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let found = env.read("/v1/customers?email=ADA@example.com").await;
    assert_eq!(found["customers"][0]["id"], user);
    assert_eq!(found["customers"].as_array().unwrap().len(), 1);
    env.get("/v1/customers?trait=plan")
        .await
        .err(400, "invalid_query");
    env.get("/v1/customers/nobody-at-all")
        .await
        .err(404, "customer_not_found");

    // The timeline holds the anonymous events too.
    let tl = env.read(&format!("/v1/customers/{user}/events")).await;
    let ids: Vec<&str> = tl["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    for id in ["b1", "b2", "b3", "b4", "i1"] {
        assert!(ids.contains(&id), "{id} missing from the timeline {ids:?}");
    }
    assert!(
        tl["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "order.placed"),
        "{ids:?}"
    );

    // Unmerge: the anonymous fragment goes back to being its own customer.
    let un = env
        .post(
            &format!("/v1/customers/{user}/unmerge"),
            &json!({"identity": anon}),
        )
        .await;
    let un = un.ok();
    assert_eq!(
        (un["customer"].as_str(), un["unmerged"].as_str()),
        (Some(user), Some(anon))
    );
    let c = un["cursor"].as_str().unwrap();
    let a = env
        .read(&format!("/v1/customers/{anon}?min_offset={c}"))
        .await;
    assert_eq!(a["id"], anon, "{a}");
    assert_eq!(strs(&a["identities"]["all"]), [anon]);
    assert!(strs(&a["identities"]["emails"]).is_empty());
    assert_eq!(a["stats"]["orders"], 0);
    assert_eq!(a["stats"]["page_views"], 2);
    // The consent was the user's: the anonymous profile has none recorded, and reads false.
    assert_eq!(a["consent"]["email"], false, "{a}");
    assert!(a["consent_details"].get("email").is_none(), "{a}");
    assert!(a["traits"].get("plan").is_none(), "{a}");
    assert_eq!(
        a["cart"]["items"][0]["sku"], "SKU-SHOE",
        "its own cart is its own again"
    );
    let m = merge_of(&a, anon, user);
    assert_eq!(m.len(), 1, "{a}");
    assert!(
        m[0]["unmerged_at"].is_string(),
        "the history keeps the undone merge: {a}"
    );
    assert!(m[0]["merged_at"].is_string());
    let u = env
        .read(&format!("/v1/customers/{user}?min_offset={c}"))
        .await;
    assert_eq!(u["id"], user);
    assert_eq!(
        strs(&u["identities"]["all"]),
        ["email:ada@example.com", user]
    );
    assert_eq!(u["stats"]["page_views"], 0);
    assert_eq!(u["stats"]["orders"], 1);
    assert_eq!(u["consent"]["email"], true);
    let tl = env.read(&format!("/v1/customers/{user}/events")).await;
    assert!(
        tl["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["subject"] != anon),
        "the anonymous events left the user's timeline: {tl}"
    );
    let e = env
        .post(
            &format!("/v1/customers/{user}/unmerge"),
            &json!({"identity": anon}),
        )
        .await;
    // The request is well formed; the customer's state refuses it.
    e.err(409, "not_merged");

    // A new identify merges them again; the old merge stays in the history.
    let c = env.ingest(identified("i2", user, anon)).await;
    let p = env
        .read(&format!("/v1/customers/{anon}?min_offset={c}"))
        .await;
    assert_eq!(p["id"], user);
    assert_eq!(
        strs(&p["identities"]["all"]),
        [anon, "email:ada@example.com", user]
    );
    assert_eq!(
        (
            p["stats"]["page_views"].as_u64(),
            p["stats"]["orders"].as_u64()
        ),
        (Some(2), Some(1))
    );
    let m = merge_of(&p, anon, user);
    assert_eq!(m.len(), 2, "{p}");
    assert_eq!(
        m.iter().filter(|m| m["unmerged_at"].is_null()).count(),
        1,
        "{p}"
    );
    assert_eq!(
        normalised(p),
        normalised(env.read(&format!("/v1/customers/{user}")).await)
    );
}

/// After an unmerge, each side of the undone merge still shows it in its history.
#[tokio::test(flavor = "multi_thread")]

async fn unmerged_history_is_visible_from_both_sides() {
    let env = Shop::start(&[]);
    let (anon, user) = ("anon-7f3", "user-42");
    env.ingest(browsing(anon)).await;
    let c = env.ingest(identified("i1", user, anon)).await;
    env.read(&format!("/v1/customers/{user}?min_offset={c}"))
        .await;
    let un = env
        .post(
            &format!("/v1/customers/{user}/unmerge"),
            &json!({"identity": anon}),
        )
        .await;
    let c = un.ok()["cursor"].as_str().unwrap().to_owned();
    let a = env
        .read(&format!("/v1/customers/{anon}?min_offset={c}"))
        .await;
    let u = env
        .read(&format!("/v1/customers/{user}?min_offset={c}"))
        .await;
    assert_eq!(
        merge_of(&a, anon, user).len(),
        1,
        "anonymous side: {}",
        a["merges"]
    );
    assert_eq!(
        merge_of(&u, anon, user).len(),
        1,
        "user side: {}",
        u["merges"]
    );
}
