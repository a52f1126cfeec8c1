//! The journeys of the starter trigger file `config/triggers.toml` do what its comments say
//! when events go through the real trigger machine: two partitions, commerce and customers, on
//! a virtual clock.

mod common;

use common::{MIN, World, day0};
use serde_json::{Value, json};
use storeline_engine::Ev;
use storeline_engine::testkit::FORWARDED;

const SOURCE: &str = include_str!("../../../config/triggers.toml");

const COMMERCE: u32 = 0;
const CUSTOMERS: u32 = 1;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

/// Commerce events in one partition, customers' in the other (the commerce partition's copies
/// of order events are forwarded to the customers').
fn route(ty: &str, _subject: Option<&str>) -> u32 {
    if ty != FORWARDED && storeline_event::is_commerce_type(ty) {
        COMMERCE
    } else {
        CUSTOMERS
    }
}

impl World {
    fn new() -> World {
        World::build(SOURCE, 2, COMMERCE, route)
    }

    /// Sends an event at `at` (ms) and applies everything it causes.
    fn send(&mut self, at: i64, ty: &str, subject: &str, data: Value) {
        self.tick(at);
        self.event(at, ty, subject, data);
    }

    /// Moves both partitions' clocks to `at`, firing due timers.
    fn tick(&mut self, at: i64) {
        assert!(at >= self.now, "time goes forward");
        self.now = at;
        self.ticks(at, |_| format!("tick-{at}"));
    }

    /// Deliveries of `trigger`, as `(minutes after day0 when handed to delivery, template or
    /// connector)`.
    fn sent_by(&self, trigger: &str) -> Vec<(i64, String)> {
        let mut out: Vec<(i64, String)> = self
            .sent
            .iter()
            .filter(|d| d["trigger"] == trigger)
            .map(|d| {
                let what = d["template"]
                    .as_str()
                    .or(d["connector"].as_str())
                    .unwrap_or("")
                    .to_owned();
                (
                    (d["sent_at"].as_i64().expect("sent_at") - day0()) / MIN,
                    what,
                )
            })
            .collect();
        // Entries written at the same time are ordered by their delivery id.
        out.sort();
        out
    }

    fn count(&self, trigger: &str, what: &str) -> usize {
        self.outcomes
            .iter()
            .filter(|o| o.trigger == trigger && o.what == what)
            .count()
    }
}

fn money(a: i64) -> Value {
    json!({ "amount": a, "currency": "EUR" })
}

fn consent(w: &mut World, at: i64, customer: &str) {
    w.send(
        at,
        "customer.consent_changed",
        customer,
        json!({ "channel": "email", "granted": true }),
    );
}

fn order(w: &mut World, at: i64, customer: &str, id: &str) {
    w.send(at, "order.placed", customer, json!({ "order_id": id, "customer_id": customer,
        "lines": [{ "sku": "SKU-1", "quantity": 1, "unit_price": money(2500) }], "total": money(2500) }));
}

fn add_to_cart(w: &mut World, at: i64, customer: &str, value: i64) {
    w.send(
        at,
        "cart.item_added",
        customer,
        json!({ "sku": "SKU-1", "quantity": 1, "cart_value": money(value) }),
    );
}

#[test]
fn welcome_series_waits_for_the_consent_then_sends_two_emails() {
    let mut w = World::new();
    let t0 = day0() + 10 * HOUR;
    w.send(
        t0,
        "customer.signed_up",
        "cus-1",
        json!({ "email": "a@example.com", "first_name": "Ann" }),
    );
    consent(&mut w, t0 + 2 * MIN, "cus-1");
    w.send(t0 + 3 * MIN, "customer.signed_up", "cus-1", json!({}));
    w.tick(t0 + 3 * DAY);
    assert_eq!(
        w.sent_by("welcome-series"),
        [
            (602, "welcome".into()),
            (602 + 2 * 24 * 60, "welcome_2".into())
        ]
    );
    assert_eq!(w.sent[0]["data"]["first_name"], "Ann");
    assert_eq!(w.count("welcome-series", "already_running"), 1);
    // Once: after the series, another sign-up starts nothing.
    w.send(t0 + 4 * DAY, "customer.signed_up", "cus-1", json!({}));
    assert_eq!(w.count("welcome-series", "once"), 1);

    // Without consent the emails are suppressed, after the 10 minutes.
    w.send(t0 + 5 * DAY, "customer.signed_up", "cus-2", json!({}));
    w.tick(t0 + 8 * DAY);
    assert_eq!(w.count("welcome-series", "suppressed_consent"), 2);
}

#[test]
fn abandoned_cart_reminds_after_the_last_add_and_stops_at_an_order() {
    let mut w = World::new();
    let t0 = day0() + 9 * HOUR;
    consent(&mut w, t0, "cus-1");
    add_to_cart(&mut w, t0 + MIN, "cus-1", 1500); // below 20.00: no run
    add_to_cart(&mut w, t0 + 2 * MIN, "cus-1", 2500);
    add_to_cart(&mut w, t0 + 10 * MIN, "cus-1", 4000); // restarts the 15 minutes
    w.tick(t0 + 10 * MIN + 15 * MIN + 59 * MIN);
    assert_eq!(w.sent_by("abandoned-cart"), []);
    w.tick(t0 + 10 * MIN + 15 * MIN + 60 * MIN);
    assert_eq!(
        w.sent_by("abandoned-cart"),
        [(9 * 60 + 85, "abandoned_cart".into())]
    );
    w.tick(t0 + 2 * DAY);
    let sent = w.sent_by("abandoned-cart");
    assert_eq!(
        sent[1],
        (9 * 60 + 85 + 23 * 60, "abandoned_cart_discount".into())
    );
    assert_eq!(
        w.sent.last().unwrap()["data"]["discount_code"],
        "COMEBACK10"
    );
    assert_eq!(w.count("abandoned-cart", "condition_false"), 1);
    assert_eq!(w.count("abandoned-cart", "debounced"), 1);

    // An order after the first reminder: no discount.
    let t1 = day0() + 3 * DAY + 9 * HOUR;
    consent(&mut w, t1, "cus-2");
    add_to_cart(&mut w, t1, "cus-2", 3000);
    w.tick(t1 + 2 * HOUR);
    order(&mut w, t1 + 3 * HOUR, "cus-2", "ord-2");
    w.tick(t1 + 2 * DAY);
    let cus2: Vec<&Value> = w
        .sent
        .iter()
        .filter(|d| d["customer"] == "cus-2" && d["trigger"] == "abandoned-cart")
        .collect();
    assert_eq!(cus2.len(), 1, "{cus2:#?}");
    assert_eq!(w.count("abandoned-cart", "cancelled"), 1);
}

#[test]
fn transactional_messages_ignore_consent_and_quiet_hours() {
    let mut w = World::new();
    let night = day0() + 23 * HOUR;
    order(&mut w, night, "cus-1", "ord-1");
    w.send(
        night + MIN,
        "order.shipped",
        "cus-1",
        json!({ "order_id": "ord-1", "tracking_url": "https://t.example.com/1" }),
    );
    assert_eq!(
        w.sent_by("order-confirmation"),
        [(23 * 60, "order_confirmation".into())]
    );
    assert_eq!(
        w.sent_by("shipping-notification"),
        [
            (23 * 60 + 1, "order_shipped".into()),
            (23 * 60 + 1, "order_shipped_sms".into())
        ]
    );
    let sms = w
        .sent
        .iter()
        .find(|d| d["template"] == "order_shipped_sms")
        .unwrap();
    assert_eq!(sms["channel"], "sms");
    assert_eq!(sms["data"]["tracking_url"], "https://t.example.com/1");
    // The shipping email reads optional fields the shop did not send: they are null.
    let email = w
        .sent
        .iter()
        .find(|d| d["template"] == "order_shipped")
        .unwrap();
    assert_eq!(email["data"]["carrier"], Value::Null);
}

/// The file's comment and docs/triggers.md say what the machine does: transactional messages
/// skip the caps and do not use them up (three order confirmations leave the 3-email cap free
/// for the welcome email).
#[test]
fn transactional_messages_do_not_count_toward_the_caps_as_the_file_says() {
    let prose = |text: &str| {
        text.lines()
            .map(|l| l.trim().trim_start_matches('#').trim())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let file = prose(SOURCE);
    assert!(
        file.contains("their messages do not count toward the caps"),
        "config/triggers.toml says what transactional messages do to the caps"
    );
    assert!(!file.contains("but their messages count toward the caps"));
    let docs = prose(include_str!("../../../docs/triggers.md"));
    assert!(docs.contains("Transactional messages skip all three and do not use up the caps"));

    let mut w = World::new();
    let t0 = day0() + 10 * HOUR;
    for (i, order_id) in ["ord-1", "ord-2", "ord-3"].into_iter().enumerate() {
        order(&mut w, t0 + i as i64 * MIN, "cus-1", order_id);
    }
    assert_eq!(w.sent_by("order-confirmation").len(), 3);
    w.send(t0 + HOUR, "customer.signed_up", "cus-1", json!({}));
    consent(&mut w, t0 + HOUR + 2 * MIN, "cus-1");
    assert_eq!(w.sent_by("welcome-series"), [(662, "welcome".into())]);
    assert_eq!(w.count("welcome-series", "deferred_cap"), 0);
}

#[test]
fn payment_recovery_waits_for_a_payment_of_the_same_order() {
    let mut w = World::new();
    let t0 = day0() + 10 * HOUR;
    let fail = |order: &str| json!({ "order_id": order, "amount": money(2500), "card_fingerprint": "fp-9" });
    w.send(t0, "payment.failed", "cus-1", fail("ord-1"));
    w.send(t0, "payment.failed", "cus-1", fail("ord-2"));
    w.send(t0 + 5 * MIN, "payment.failed", "cus-1", fail("ord-2"));
    w.send(
        t0 + 10 * MIN,
        "payment.succeeded",
        "cus-1",
        json!({ "order_id": "ord-1", "amount": money(2500) }),
    );
    w.tick(t0 + 2 * HOUR);
    let sent: Vec<&Value> = w
        .sent
        .iter()
        .filter(|d| d["trigger"] == "payment-failed-recovery")
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["data"]["order_id"], "ord-2");
    assert_eq!(w.count("payment-failed-recovery", "already_running"), 1);
    // No order id: nothing to wait for.
    w.send(
        t0 + 3 * HOUR,
        "payment.failed",
        "cus-1",
        json!({ "amount": money(1) }),
    );
    assert_eq!(w.count("payment-failed-recovery", "condition_false"), 1);
}

#[test]
fn card_velocity_flags_the_sixth_failure_once() {
    let mut w = World::new();
    let t0 = day0() + 10 * HOUR;
    for i in 0..8 {
        w.send(
            t0 + i * MIN,
            "payment.failed",
            "cus-1",
            json!({ "amount": money(100), "card_fingerprint": "fp-1" }),
        );
    }
    assert_eq!(w.count("card-velocity", "condition_false"), 5);
    assert_eq!(w.sent_by("card-velocity"), [(10 * 60 + 5, "fraud".into())]);
    let flags: Vec<&Ev> = w
        .emitted
        .iter()
        .filter(|e| e.ty == "fraud.suspected")
        .collect();
    assert_eq!(flags.len(), 1);
    assert_eq!(flags[0].data["card_fingerprint"], "fp-1");
    assert_eq!(flags[0].subject.as_deref(), Some("cus-1"));
    assert_eq!(w.count("card-velocity", "already_running"), 2);
    assert!(
        w.emitted.iter().any(
            |e| e.ty == "customer.updated" && e.data["traits"]["fraud_flag"] == "card_velocity"
        )
    );
}

#[test]
fn win_back_counts_sixty_days_from_the_latest_order() {
    let mut w = World::new();
    let t0 = day0() + 10 * HOUR;
    consent(&mut w, t0, "cus-1");
    order(&mut w, t0, "cus-1", "ord-1");
    order(&mut w, t0 + 30 * DAY, "cus-1", "ord-2");
    w.tick(t0 + 89 * DAY);
    assert_eq!(w.sent_by("win-back"), []);
    w.tick(t0 + 91 * DAY);
    assert_eq!(
        w.sent_by("win-back"),
        [(90 * 24 * 60 + 10 * 60, "win_back".into())]
    );
    assert_eq!(w.sent.last().unwrap()["data"]["last_order_id"], "ord-2");
}

#[test]
fn review_request_goes_at_ten_after_seven_days_unless_returned() {
    let mut w = World::new();
    let t0 = day0() + 14 * HOUR;
    consent(&mut w, t0, "cus-1");
    order(&mut w, t0, "cus-1", "ord-1");
    order(&mut w, t0, "cus-1", "ord-2");
    w.send(
        t0 + DAY,
        "order.delivered",
        "cus-1",
        json!({ "order_id": "ord-1" }),
    );
    w.send(
        t0 + DAY,
        "order.delivered",
        "cus-1",
        json!({ "order_id": "ord-2" }),
    );
    w.send(
        t0 + 3 * DAY,
        "return.requested",
        "cus-1",
        json!({ "order_id": "ord-2", "lines": [{ "sku": "SKU-1", "quantity": 1 }] }),
    );
    w.tick(t0 + 10 * DAY);
    // Delivered on day 1 at 14:00: seven days on is day 8, 14:00; the next 10:00 is day 9.
    assert_eq!(
        w.sent_by("review-request"),
        [(9 * 24 * 60 + 10 * 60, "review_request".into())]
    );
    assert_eq!(
        w.sent
            .iter()
            .find(|d| d["trigger"] == "review-request")
            .unwrap()["data"]["order_id"],
        "ord-1"
    );
}

#[test]
fn stock_journeys_go_to_the_erp_and_to_customers_who_asked() {
    let mut w = World::new();
    let t0 = day0() + 10 * HOUR;
    consent(&mut w, t0, "cus-1");
    consent(&mut w, t0, "cus-2");
    w.send(
        t0,
        "inventory.adjusted",
        "SKU-1",
        json!({ "sku": "SKU-1", "set": 10 }),
    );
    w.send(
        t0 + MIN,
        "inventory.adjusted",
        "SKU-1",
        json!({ "sku": "SKU-1", "set": 3 }),
    );
    assert_eq!(w.sent_by("low-stock-to-erp"), [(10 * 60 + 1, "erp".into())]);
    assert_eq!(w.sent.last().unwrap()["data"]["available"], 3);

    w.send(
        t0 + 2 * MIN,
        "inventory.adjusted",
        "SKU-1",
        json!({ "sku": "SKU-1", "set": 0 }),
    );
    w.send(
        t0 + 3 * MIN,
        "product.stock_alert_requested",
        "cus-1",
        json!({ "sku": "SKU-1" }),
    );
    w.send(
        t0 + 3 * MIN,
        "product.stock_alert_requested",
        "cus-2",
        json!({ "sku": "SKU-1" }),
    );
    // cus-2 buys the SKU elsewhere meanwhile: its alert is cancelled.
    order(&mut w, t0 + HOUR, "cus-2", "ord-9");
    w.send(
        t0 + DAY,
        "inventory.adjusted",
        "SKU-1",
        json!({ "sku": "SKU-1", "set": 20 }),
    );
    // Stock went from 0 to 10 at the start, and from 0 to 20 now.
    assert_eq!(
        w.sent_by("back-in-stock-to-erp"),
        [(10 * 60, "erp".into()), (24 * 60 + 10 * 60, "erp".into())]
    );
    // The shop notifies everyone on its list (also someone who never asked, and twice).
    for c in ["cus-1", "cus-2", "cus-3", "cus-1"] {
        w.send(
            t0 + DAY + MIN,
            "product.back_in_stock_notify",
            c,
            json!({ "sku": "SKU-1", "name": "Mug" }),
        );
    }
    let alerts: Vec<&Value> = w
        .sent
        .iter()
        .filter(|d| d["trigger"] == "back-in-stock-alert")
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["customer"], "cus-1");
    assert_eq!(alerts[0]["data"]["sku"], "SKU-1");
    assert_eq!(w.count("back-in-stock-alert", "cancelled"), 1);
}

#[test]
fn caps_and_quiet_hours_hold_messages() {
    let mut w = World::new();
    let t0 = day0() + 20 * HOUR + 30 * MIN;
    consent(&mut w, t0 - HOUR, "cus-1");
    // 20:30: a cart add; the reminder is due at 21:45, inside quiet hours: held until 08:00.
    add_to_cart(&mut w, t0, "cus-1", 3000);
    w.tick(t0 + 12 * HOUR);
    assert_eq!(
        w.sent_by("abandoned-cart"),
        [(24 * 60 + 8 * 60, "abandoned_cart".into())]
    );
    assert_eq!(w.count("abandoned-cart", "deferred_quiet_hours"), 1);
}

/// A held message of a run that is cancelled before the hold ends should not go out.
#[test]
fn a_cancelled_run_does_not_send_its_held_message() {
    let mut w = World::new();
    let t0 = day0() + 20 * HOUR + 30 * MIN;
    consent(&mut w, t0 - HOUR, "cus-1");
    add_to_cart(&mut w, t0, "cus-1", 3000); // reminder held at 21:45 until 08:00
    order(&mut w, t0 + 10 * HOUR, "cus-1", "ord-1"); // 06:30: the order cancels the run
    w.tick(t0 + 12 * HOUR);
    assert_eq!(w.count("abandoned-cart", "cancelled"), 1);
    assert_eq!(w.sent_by("abandoned-cart"), []);
}
