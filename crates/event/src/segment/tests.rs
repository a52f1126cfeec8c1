//! Tests of the parent module.
use super::*;
use crate::{Defaults, Event, Incoming, Mode};
use proptest::prelude::*;

fn opts() -> SegmentOptions {
    let default_currency = Currency::parse("EUR").expect("EUR is a currency");
    let source = "segment".into();
    SegmentOptions {
        source,
        default_currency,
    }
}

/// Maps `msg` and checks that Storeline accepts the result as the API will: as JSON text,
/// parsed as `Incoming`, validated in plain mode (which validates catalog payloads).
fn accepted(kind: Option<&str>, msg: Value) -> Value {
    let out = map_message(kind, &msg, &opts()).unwrap_or_else(|e| panic!("{e} for {msg}"));
    let text = serde_json::to_string(&out).expect("serializes");
    let inc: Incoming = serde_json::from_str(&text).expect("parses as an incoming event");
    let now = chrono::Utc::now();
    let defaults = Defaults {
        source: "x".into(),
        now,
    };
    if let Err(e) = Event::from_incoming(inc, Mode::Plain, &defaults) {
        panic!("{e:?} for {text}");
    }
    out
}

fn track(event: &str, properties: Value) -> Value {
    json!({ "type": "track", "userId": "u1", "event": event, "properties": properties })
}

#[test]
fn order_completed_from_the_spec_becomes_order_placed() {
    // The example of Segment's e-commerce spec, as analytics-python sends it.
    let msg = json!({
        "type": "track", "messageId": "m-1", "userId": "user-1", "anonymousId": "anon-1",
        "event": "Order Completed", "timestamp": "2026-05-01T10:00:00.000Z",
        "context": { "library": { "name": "analytics-python", "version": "2.3.3" } },
        "properties": {
            "checkout_id": "fksdjfsdjfisjf9sdfjsd9f", "order_id": "50314b8e9bcf000000000000",
            "affiliation": "Google Store", "total": 27.50, "subtotal": 22.50, "revenue": 25.00,
            "shipping": 3, "tax": 2, "discount": 2.5, "coupon": "hasbros", "currency": "USD",
            "products": [
                { "product_id": "507f1f77bcf86cd799439011", "sku": "45790-32",
                  "name": "Monopoly: 3rd Edition", "price": 19, "quantity": 1,
                  "category": "Games", "url": "https://www.example.com/product/path" },
                { "product_id": "505bd76785ebb509fc183733", "sku": "46493-32",
                  "name": "Uno Card Game", "price": 3, "quantity": 2, "category": "Games" }
            ]
        }
    });
    let mut out = accepted(None, msg);
    let data = out["data"].take();
    let head = json!({ "type": "order.placed", "id": "m-1", "source": "segment",
                       "subject": "user-1", "time": "2026-05-01T10:00:00.000Z",
                       "anonymousid": "anon-1", "data": null });
    assert_eq!(out, head);
    let usd = |amount: i64| json!({ "amount": amount, "currency": "USD" });
    // Unmapped properties are kept (the currency lives on in the amounts).
    let want = json!({
        "order_id": "50314b8e9bcf000000000000", "total": usd(2750), "subtotal": usd(2250),
        "tax": usd(200), "shipping": usd(300), "discount": usd(250), "coupon": "hasbros",
        "lines": [
            { "sku": "45790-32", "quantity": 1, "product_id": "507f1f77bcf86cd799439011",
              "unit_price": usd(1900), "name": "Monopoly: 3rd Edition", "category": "Games",
              "properties": { "url": "https://www.example.com/product/path" } },
            { "sku": "46493-32", "quantity": 2, "product_id": "505bd76785ebb509fc183733",
              "unit_price": usd(300), "name": "Uno Card Game", "category": "Games" }
        ],
        "properties": { "checkout_id": "fksdjfsdjfisjf9sdfjsd9f",
                        "affiliation": "Google Store", "revenue": 25.0 },
        "context": { "library": { "name": "analytics-python", "version": "2.3.3" } }
    });
    assert_eq!(data, want);
}

#[test]
fn order_total_falls_back_to_the_sum_of_lines() {
    let msg = json!({
        "userId": 42, "event": "Order Completed", "originalTimestamp": "2026-05-01T12:00:00+02:00",
        "properties": { "order_id": 1001, "currency": "jpy",
            "products": [ { "product_id": 7, "price": 1200, "quantity": "2" },
                          { "sku": "S-2", "price": "500" } ] }
    });
    let mut out = accepted(Some("track"), msg);
    let id = out["id"].take();
    assert!(id.as_str().is_some_and(|id| id.starts_with("evt_")), "{id}");
    let jpy = |amount: i64| json!({ "amount": amount, "currency": "JPY" });
    let want = json!({
        "type": "order.placed", "id": null, "source": "segment", "subject": "42",
        "time": "2026-05-01T12:00:00+02:00",
        "data": { "order_id": "1001", "total": jpy(2900), "lines": [
            { "sku": "7", "product_id": "7", "quantity": 2, "unit_price": jpy(1200) },
            { "sku": "S-2", "quantity": 1, "unit_price": jpy(500) } ] }
    });
    assert_eq!(out, want);
}

#[test]
fn product_added_becomes_a_cart_item_and_keeps_the_rest() {
    let props = json!({
        "cart_id": "skdjsidjsdkdj29j", "product_id": "507f1f77bcf86cd799439011", "sku": "G-32",
        "category": "Games", "name": "Monopoly: 3rd Edition", "brand": "Hasbro",
        "variant": "200 pieces", "price": 18.99, "quantity": 1, "coupon": "MAYDEALS",
        "position": 3, "url": "https://www.example.com/product/path"
    });
    let out = accepted(None, track("Product Added", props));
    assert_eq!(out["type"], "cart.item_added");
    let want = json!({
        "cart_id": "skdjsidjsdkdj29j", "sku": "G-32", "product_id": "507f1f77bcf86cd799439011",
        "quantity": 1, "unit_price": { "amount": 1899, "currency": "EUR" },
        "name": "Monopoly: 3rd Edition", "brand": "Hasbro", "category": "Games",
        "variant": "200 pieces",
        "properties": { "coupon": "MAYDEALS", "position": 3,
                        "url": "https://www.example.com/product/path" }
    });
    assert_eq!(out["data"], want);

    let out = accepted(
        None,
        track("Product Removed", json!({ "product_id": "p-9" })),
    );
    assert_eq!(out["type"], "cart.item_removed");
    assert_eq!(
        out["data"],
        json!({ "sku": "p-9", "product_id": "p-9", "quantity": 1 })
    );
}

#[test]
fn identify_moves_only_a_valid_email_out_of_the_traits() {
    let msg = json!({ "userId": "u1", "anonymousId": "a1",
                      "traits": { "email": "ada@example.com", "name": "Ada", "plan": "pro" } });
    let out = accepted(Some("identify"), msg);
    assert_eq!(out["type"], "customer.identified");
    let want = json!({ "user_id": "u1", "anonymous_id": "a1", "email": "ada@example.com",
                       "traits": { "name": "Ada", "plan": "pro" } });
    assert_eq!(out["data"], want);
    let msg = json!({ "type": "identify", "anonymousId": "a1", "traits": { "email": "a b" } });
    let out = accepted(None, msg);
    assert_eq!(out["subject"], "a1");
    assert_eq!(
        out["data"],
        json!({ "anonymous_id": "a1", "traits": { "email": "a b" } })
    );
}

#[test]
fn page_takes_the_url_from_context_page_or_the_path() {
    let page = json!({ "url": "https://shop.example/", "path": "/", "title": "Shop" });
    let msg = json!({ "type": "page", "anonymousId": "a1", "name": "Home",
                      "properties": { "theme": "dark" }, "context": { "page": page } });
    let out = accepted(None, msg);
    assert_eq!(out["type"], "page.viewed");
    let want = json!({ "url": "https://shop.example/", "path": "/", "title": "Shop",
                       "name": "Home", "properties": { "theme": "dark" },
                       "context": { "page": page } });
    assert_eq!(out["data"], want);
    let msg = json!({ "userId": "u1", "properties": { "path": "/sale" } });
    let out = accepted(Some("page"), msg);
    assert_eq!(out["data"], json!({ "url": "/sale", "path": "/sale" }));
}

#[test]
fn alias_screen_and_group_map_their_ids() {
    let out = accepted(
        None,
        json!({ "type": "alias", "userId": "u1", "previousId": "a1" }),
    );
    assert_eq!(
        (&out["type"], &out["subject"]),
        (&json!("customer.aliased"), &json!("u1"))
    );
    assert_eq!(out["data"], json!({ "user_id": "u1", "previous_id": "a1" }));
    let out = accepted(Some("screen"), json!({ "userId": "u1", "name": "Cart" }));
    assert_eq!(out["data"], json!({ "name": "Cart", "properties": {} }));
    let msg = json!({ "type": "group", "userId": "u1", "groupId": 7, "traits": { "n": "A" } });
    let out = accepted(None, msg);
    assert_eq!(out["type"], "customer.grouped");
    assert_eq!(
        out["data"],
        json!({ "group_id": "7", "traits": { "n": "A" } })
    );
}

#[test]
fn unknown_track_events_become_custom_types() {
    let out = accepted(None, track("Video Played!", json!({ "video_id": "v1" })));
    assert_eq!(out["type"], "track.video_played");
    let want = json!({ "event": "Video Played!", "properties": { "video_id": "v1" } });
    assert_eq!(out["data"], want);
    assert_eq!(slug("  Café — 2nd Visit "), "caf_2nd_visit");
    assert_eq!(slug("order.placed"), "order_placed");
}

#[rustfmt::skip] // a table reads best one row per line
#[test]
fn the_other_commerce_events_are_accepted_by_the_catalog() {
    let traits = json!({ "traits": { "email": "ada@example.com", "firstName": "Ada" } });
    let cases = [
        ("Products Searched", json!({ "query": "blue hotpants" }), "product.searched"),
        ("Product Viewed", json!({ "sku": "S-1", "price": "9.90", "url": "/p/1" }), "product.viewed"),
        ("Cart Viewed", json!({ "cart_id": "c1", "products": [{ "sku": "S-1", "price": 2 }] }), "cart.viewed"),
        ("Checkout Started", json!({ "order_id": "o1", "value": 30, "currency": "GBP",
            "products": [{ "product_id": "p1", "quantity": 3, "price": 10 }] }), "checkout.started"),
        ("Order Cancelled", json!({ "order_id": "o1", "total": 30 }), "order.cancelled"),
        ("Order Refunded", json!({ "order_id": "o1", "total": 30, "products": [] }), "order.refunded"),
        ("Signed Up", json!({ "type": "organic", "last_name": "Lovelace" }), "customer.signed_up"),
        ("Email Opened", json!({ "email_id": "e1", "email_subject": "Hi" }), "message.opened"),
        ("Email Link Clicked", json!({ "email_id": "e1", "link_url": "https://x.example" }), "message.clicked"),
        ("Email Delivered", json!({ "campaign_name": "Spring" }), "message.sent"),
    ];
    for (event, props, ty) in cases {
        let mut msg = track(event, props);
        msg["context"] = traits.clone();
        assert_eq!(accepted(None, msg)["type"], ty, "{event}");
    }
    let mut msg = track("Signed Up", json!({ "email": "bad", "last_name": "Lovelace" }));
    msg["context"] = traits.clone();
    assert_eq!(accepted(None, msg)["data"], json!({ "email": "ada@example.com", "first_name": "Ada",
        "last_name": "Lovelace", "properties": { "email": "bad" }, "context": traits }));
    let out = accepted(None, track("Checkout Started", json!({ "value": 30, "revenue": 25 })));
    assert_eq!(out["data"], json!({ "cart_value": { "amount": 3000, "currency": "EUR" },
        "properties": { "revenue": 25 } }));
}

#[rustfmt::skip] // a table reads best one row per line
#[test]
fn errors_name_the_segment_field() {
    let order = |props| track("Order Completed", props);
    let add = |props| track("Product Added", props);
    let cases = [
        (json!({ "type": "track", "event": "Product Added" }), "userId", "userId or anonymousId is required"),
        (order(json!({ "products": [{ "sku": "S", "price": 1 }] })), "properties.order_id", "required"),
        (order(json!({ "order_id": "o" })), "properties.products", "at least one product"),
        (order(json!({ "order_id": "o", "products": [{ "sku": "S" }] })), "properties.total", "required"),
        (order(json!({ "order_id": "o", "products": [{ "sku": "S" }, { "sku": "T", "price": "abc" }] })),
            "properties.products[1].price", "must be a number"),
        (add(json!({ "sku": "S", "price": "free" })), "properties.price", "must be a number"),
        (add(json!({ "sku": "S", "price": -1 })), "properties.price", "negative"),
        (add(json!({ "sku": "S", "quantity": 0 })), "properties.quantity", "at least 1"),
        (add(json!({ "sku": "S", "quantity": 1.5 })), "properties.quantity", "at least 1"),
        (add(json!({ "name": "no id" })), "properties.sku", "sku or product_id"),
        (add(json!({ "sku": "S", "currency": "EURO" })), "properties.currency", "ISO 4217"),
        (track("Order Refunded", json!({ "order_id": "o" })), "properties.total", "required"),
        (track("Products Searched", json!({ "query": ["a"] })), "properties.query", "a string"),
        (track("!!!", json!({})), "event", "no letters"),
        (json!({ "type": "track", "userId": "u" }), "event", "required"),
        (json!({ "type": "alias", "anonymousId": "a", "previousId": "p" }), "userId", "required for alias"),
        (json!({ "type": "alias", "userId": "u" }), "previousId", "required for alias"),
        (json!({ "type": "page", "userId": "u" }), "properties.url", "context.page.url"),
        (json!({ "type": "group", "userId": "u" }), "groupId", "required"),
        (json!({ "type": "identify", "userId": "u", "timestamp": "yesterday" }), "timestamp", "ISO 8601"),
        (json!({ "type": "identify", "userId": { "id": 1 } }), "userId", "must be a string"),
        (json!({ "type": "flush", "userId": "u" }), "type", "not a Segment call"),
        (json!({ "userId": "u" }), "type", "required"),
    ];
    for (msg, field, reason) in cases {
        let e = map_message(None, &msg, &opts()).expect_err(&msg.to_string());
        assert_eq!(e.field, field, "{msg}: {e}");
        assert!(e.reason.contains(reason), "{msg}: {e}");
    }
}

proptest! {
    /// Whatever a shop names its events, the result is a valid event or an error on `event`.
    #[test]
    fn any_event_name_maps_to_an_accepted_type(name in "\\PC{0,200}") {
        let msg = track(&name, json!({ "x": 1 }));
        match map_message(None, &msg, &opts()) {
            Ok(_) => prop_assert!(accepted(None, msg)["type"].is_string()),
            Err(e) => prop_assert_eq!(e.field, "event"),
        }
    }
}

#[test]
fn identify_reads_traits_from_context_too_and_the_top_level_wins() {
    // RudderStack's SDKs put identify traits in context.traits.
    let msg = json!({ "type": "identify", "userId": "u1",
                      "context": { "traits": { "email": "ann@example.com", "plan": "silver",
                                               "name": "Ann" } },
                      "traits": { "plan": "gold" } });
    let out = accepted(None, msg);
    assert_eq!(out["data"]["email"], "ann@example.com");
    assert_eq!(out["data"]["traits"]["plan"], "gold");
    assert_eq!(out["data"]["traits"]["name"], "Ann");
}

#[test]
fn ids_with_control_characters_and_huge_quantities_name_the_segment_field() {
    let e = map_message(
        None,
        &json!({ "type": "track", "userId": "u\u{0}1", "event": "x" }),
        &opts(),
    )
    .unwrap_err();
    assert_eq!(e.field, "userId");
    assert!(e.reason.contains("NUL"), "{e}");
    let e = map_message(
        None,
        &track(
            "Product Added",
            json!({ "sku": "S", "quantity": 2e9, "price": 1 }),
        ),
        &opts(),
    )
    .unwrap_err();
    assert_eq!(e.field, "properties.quantity");
    let e = map_message(
        None,
        &track("Product Added", json!({ "sku": "S", "quantity": 0.5 })),
        &opts(),
    )
    .unwrap_err();
    assert_eq!(e.field, "properties.quantity");
}
