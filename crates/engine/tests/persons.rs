//! The person across partitions: identities merged by identify and alias events share their
//! runs, caps, consent and order facts, with records routed as the engine routes them (8
//! partitions, commerce events in the commerce partition, engine records by subject). Records
//! the engine causes can be held back and released later, so the hand-over races an order.
#![allow(clippy::unwrap_used)]

mod common;

use common::{MIN, World, day0};
use serde_json::{Value, json};
use storeline_engine::testkit::FORWARDED;
use storeline_log::partition_for;

const PARTITIONS: u32 = 8;

fn commerce() -> u32 {
    partition_for(storeline_event::COMMERCE_KEY.as_bytes(), PARTITIONS)
}

const FILE: &str = r#"
[[connector]]
name = "email"
type = "smtp"

[[arbitration.cap]]
channel = "email"
max = 1
window = "24h"

[[trigger]]
name = "abandoned-cart"
on = "cart.item_added"
wait = { for = "order.placed", within = "1h" }
on_timeout = [ { deliver = "email", template = "abandoned_cart" } ]

[[trigger]]
name = "browse"
on = "product.viewed"
delay = "2h"
then = [ { deliver = "email", template = "browse" } ]

[[trigger]]
name = "repeat-buyer"
on = "order.placed"
when = "customer.stats.orders >= 2"
then = [ { emit = "customer.repeat_buyer" } ]

[[trigger]]
name = "gold-order"
on = "order.placed"
when = "has(customer.traits.tier) && customer.traits.tier == 'gold' && customer.stats.product_views >= 2"
then = [ { emit = "customer.gold_order" } ]
"#;

fn route(ty: &str, subject: Option<&str>) -> u32 {
    if ty != FORWARDED && storeline_event::is_commerce_type(ty) {
        commerce()
    } else {
        partition_for(subject.unwrap_or("").as_bytes(), PARTITIONS)
    }
}

/// Eight partitions routed as the engine routes (commerce events to the commerce partition,
/// the rest by subject), on the file above, with watermarks; what a test does not hold back is
/// applied at once.
impl World {
    fn new() -> World {
        let mut w = World::build(FILE, PARTITIONS, commerce(), route);
        w.watermarks = true;
        w
    }

    /// An event `min` minutes after day0.
    fn send(&mut self, min: i64, ty: &str, subject: &str, data: Value) {
        self.send_at(day0() + min * MIN, ty, subject, data, true);
    }

    /// An event at `at` (ms), after a tick of every partition to `at` if `tick`.
    fn send_at(&mut self, at: i64, ty: &str, subject: &str, data: Value, tick: bool) {
        if tick {
            self.tick(at);
        }
        self.event(at, ty, subject, data);
    }

    fn tick(&mut self, at: i64) {
        self.now = self.now.max(at);
        self.ticks(at, |p| format!("tick-{at}-{p}"));
    }

    fn sent_to(&self, template: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .sent
            .iter()
            .filter(|d| d["template"] == template)
            .map(|d| d["customer"].as_str().unwrap_or("").to_owned())
            .collect();
        v.sort();
        v
    }

    fn order(&mut self, min: i64, id: &str, customer: &str) {
        self.send(
            min,
            "order.placed",
            customer,
            json!({ "order_id": id, "customer_id": customer, "currency": "EUR",
                    "total": { "amount": 1000, "currency": "EUR" },
                    "lines": [ { "sku": "A", "quantity": 1, "unit_price": 1000 } ] }),
        );
    }
}

fn cart(w: &mut World, min: i64, who: &str) {
    w.send(
        min,
        "cart.item_added",
        who,
        json!({ "sku": "A", "quantity": 1 }),
    );
}

fn consent(w: &mut World, min: i64, who: &str) {
    w.send(
        min,
        "customer.consent_changed",
        who,
        json!({ "channel": "email", "granted": true }),
    );
}

fn identify(w: &mut World, min: i64, user: &str, anon: &str) {
    w.send(
        min,
        "customer.identified",
        user,
        json!({ "user_id": user, "anonymous_id": anon }),
    );
}

#[test]
fn an_anonymous_cart_is_cancelled_by_the_order_of_the_identified_person() {
    let mut w = World::new();
    for i in 0..20 {
        let (anon, user) = (format!("anon-{i}"), format!("cus-{i}"));
        cart(&mut w, i, &anon);
        identify(&mut w, i + 5, &user, &anon);
        // Consent is the identified profile's; the run started anonymously.
        consent(&mut w, i + 5, &user);
        if i % 2 == 0 {
            w.order(i + 10, &format!("o-{i}"), &user);
        }
    }
    w.tick(day0() + 3 * 60 * MIN);
    let expected: Vec<String> = (0..20)
        .filter(|i| i % 2 == 1)
        .map(|i| format!("cus-{i}"))
        .collect();
    let mut expected = expected;
    expected.sort();
    assert_eq!(w.sent_to("abandoned_cart"), expected);
}

#[test]
fn the_order_that_overtakes_the_hand_over_still_cancels() {
    let mut w = World::new();
    for i in 0..20 {
        let (anon, user) = (format!("anon-{i}"), format!("cus-{i}"));
        cart(&mut w, i, &anon);
        consent(&mut w, i, &user);
        // The merge notice and the forwarded order are both held, then released in that
        // order: the order reaches the person before the anonymous run does.
        w.hold = true;
        identify(&mut w, i + 5, &user, &anon);
        w.order(i + 6, &format!("o-{i}"), &user);
        w.release();
    }
    w.tick(day0() + 3 * 60 * MIN);
    assert_eq!(w.sent_to("abandoned_cart"), Vec::<String>::new());
}

#[test]
fn an_alias_after_the_cart_and_an_order_by_email_identity() {
    let mut w = World::new();
    cart(&mut w, 0, "anon-a");
    w.send(
        5,
        "customer.aliased",
        "cus-a",
        json!({ "user_id": "cus-a", "previous_id": "anon-a" }),
    );
    w.order(10, "o-a", "cus-a");
    // The e-mail identity: identified with an address, then an order placed by the address.
    cart(&mut w, 0, "anon-b");
    w.send(
        5,
        "customer.identified",
        "cus-b",
        json!({ "user_id": "cus-b", "anonymous_id": "anon-b", "email": "B@Example.com" }),
    );
    cart(&mut w, 6, "cus-b");
    w.order(10, "o-b", "email:b@example.com");
    w.tick(day0() + 3 * 60 * MIN);
    assert_eq!(w.sent_to("abandoned_cart"), Vec::<String>::new());
}

#[test]
fn a_cap_holds_across_merged_identities_and_later_anonymous_events_follow_the_person() {
    let mut w = World::new();
    consent(&mut w, 0, "cus-c");
    // Two journeys, one of each identity: the cap (one email a day) counts the person's.
    w.send(0, "product.viewed", "anon-c", json!({ "sku": "A" }));
    w.send(1, "product.viewed", "cus-c", json!({ "sku": "A" }));
    identify(&mut w, 5, "cus-c", "anon-c");
    w.tick(day0() + 3 * 60 * MIN);
    // One run per person and trigger: the earlier (anonymous) run wins, one email goes.
    assert_eq!(w.sent_to("browse"), vec!["cus-c".to_owned()]);
    // After the merge, a cart under the anonymous id is the person's cart; their order ends it.
    cart(&mut w, 200, "anon-c");
    w.order(210, "o-c", "cus-c");
    w.tick(day0() + 6 * 60 * MIN);
    assert!(w.sent_to("abandoned_cart").is_empty(), "{:?}", w.sent);
}

#[test]
fn after_an_unmerge_the_split_identity_starts_its_own_runs() {
    let mut w = World::new();
    identify(&mut w, 0, "cus-u", "anon-u");
    w.send(
        1,
        "customer.unmerged",
        "cus-u",
        json!({ "identity": "anon-u" }),
    );
    consent(&mut w, 2, "anon-u");
    cart(&mut w, 2, "anon-u");
    w.order(3, "o-u", "cus-u");
    w.tick(day0() + 3 * 60 * MIN);
    // The cart is anon-u's again: cus-u's order does not end it.
    assert_eq!(w.sent_to("abandoned_cart"), vec!["anon-u".to_owned()]);
}

#[test]
fn conditions_see_the_persons_order_facts() {
    let mut w = World::new();
    identify(&mut w, 0, "cus-r", "anon-r");
    w.order(1, "o-1", "anon-r");
    w.order(2, "o-2", "cus-r");
    let emitted = w.parts.iter().any(|p| {
        p.views
            .person
            .get("cus-r")
            .and_then(|r| r.orders.as_ref())
            .is_some_and(|o| o.count == 2)
    });
    assert!(emitted, "the person's partition counts both orders");
}

#[test]
fn conditions_see_what_the_anonymous_identity_did_before_the_merge() {
    let mut w = World::new();
    for who in ["anon-g", "anon-h"] {
        w.send(
            0,
            "customer.updated",
            who,
            json!({ "traits": { "tier": "gold" } }),
        );
        for min in [1, 2] {
            w.send(min, "product.viewed", who, json!({ "sku": "A" }));
        }
    }
    // anon-g logs in as cus-g and orders; anon-h's visitor orders as cus-h without logging in.
    identify(&mut w, 3, "cus-g", "anon-g");
    w.order(4, "o-g", "cus-g");
    w.order(4, "o-h", "cus-h");
    let gold: Vec<&Option<String>> = w
        .emitted
        .iter()
        .filter(|e| e.ty == "customer.gold_order")
        .map(|e| &e.subject)
        .collect();
    assert_eq!(
        gold,
        [&Some("cus-g".to_owned())],
        "only the merged person's order is gold"
    );
    // The person's one `customer` names both identities.
    let home = route("customer.identified", Some("cus-g"));
    let row = w.parts[home as usize].views.person.get("cus-g").unwrap();
    assert_eq!(
        row.frags
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>(),
        ["anon-g"]
    );
}

/// An order received `offset_ms` from the deadline of a one-hour wait; the copy forwarded to the
/// customer's partition reaches it only after an event of the customer received after the
/// deadline (the customer's partition is busier than the commerce one).
fn deadline_race(offset_ms: i64, watermarks: bool) -> Vec<String> {
    let mut w = World::new();
    w.watermarks = watermarks;
    let who = "cus-d";
    consent(&mut w, 0, who);
    cart(&mut w, 1, who);
    let deadline = day0() + 61 * MIN;
    let order = json!({ "order_id": "o-d", "customer_id": who,
        "total": { "amount": 1000, "currency": "EUR" },
        "lines": [ { "sku": "A", "quantity": 1, "unit_price": 1000 } ] });
    w.hold = true;
    w.send_at(deadline + offset_ms, "order.placed", who, order, false);
    w.hold = false;
    w.send_at(
        deadline + 5,
        "page.viewed",
        who,
        json!({ "url": "/" }),
        false,
    );
    w.release();
    w.tick(deadline + 60 * MIN);
    w.sent_to("abandoned_cart")
}

#[test]
fn an_order_received_before_the_deadline_cancels_even_when_its_copy_arrives_after_it() {
    for ms in [-2, -1] {
        assert!(
            deadline_race(ms, true).is_empty(),
            "order {ms} ms before the deadline"
        );
    }
    for ms in [0, 1, 2] {
        assert_eq!(
            deadline_race(ms, true),
            vec!["cus-d".to_owned()],
            "order {ms} ms after the deadline"
        );
    }
    // Without watermarks (logs written before them), the customer's own later event fires the
    // timer first: the order 2 ms early is too late there. This is what the watermark fixes.
    assert_eq!(deadline_race(-2, false), vec!["cus-d".to_owned()]);
}

#[test]
fn a_frequency_cap_counts_what_the_anonymous_identity_was_sent() {
    let mut w = World::new();
    consent(&mut w, 0, "anon-e");
    // Two hours later the anonymous visitor gets the browse email (the cap's one for the day).
    w.send(0, "product.viewed", "anon-e", json!({ "sku": "A" }));
    identify(&mut w, 180, "cus-e", "anon-e");
    consent(&mut w, 180, "cus-e");
    cart(&mut w, 181, "cus-e");
    w.tick(day0() + 5 * 60 * MIN);
    assert_eq!(w.sent_to("browse"), vec!["anon-e".to_owned()]);
    // The person had their email today: the reminder waits for the cap's window.
    assert!(w.sent_to("abandoned_cart").is_empty(), "{:?}", w.sent);
    w.tick(day0() + 27 * 60 * MIN);
    assert_eq!(w.sent_to("abandoned_cart"), vec!["cus-e".to_owned()]);
}
