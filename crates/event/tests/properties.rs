//! Property tests: the stored form round-trips every valid envelope, and catalog validation
//! accepts every well-formed order while naming the right field for each kind of damage.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{Value, json};
use storeline_event::{Defaults, Event, ExtensionValue, Incoming, Mode};

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        "[a-zA-Z0-9 éü\"\\\\/\n]{0,12}".prop_map(Value::from),
        Just(Value::Null),
    ]
}

fn json_object() -> impl Strategy<Value = Value> {
    let value = json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop::collection::btree_map("[a-z_]{1,8}", value, 0..5)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

fn time() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..4_000_000_000, 0u32..1_000_000_000).prop_map(|(s, ns)| Utc.timestamp_opt(s, ns).unwrap())
}

prop_compose! {
    fn event()(
        id in "[A-Za-z0-9_:.-]{1,40}",
        source in "[a-z:/.]{1,30}",
        ty in "[a-z][a-z0-9_]{0,10}(\\.[a-z0-9_]{1,10}){1,3}",
        t in time(),
        subject in proptest::option::of("[A-Za-z0-9 -]{1,20}"),
        partitionkey in proptest::option::of("[a-z0-9]{1,20}"),
        data in proptest::option::of(json_object()),
        ext in prop::collection::btree_map("[a-z][a-z0-9]{0,8}", prop_oneof![
            "[a-z ]{0,8}".prop_map(ExtensionValue::String),
            any::<i64>().prop_map(ExtensionValue::Integer),
            any::<bool>().prop_map(ExtensionValue::Bool),
        ], 0..3),
        internal in any::<bool>(),
    ) -> Event {
        Event {
            id, source, ty: format!("custom{ty}"), time: t, subject, partitionkey,
            datacontenttype: None, dataschema: None,
            data: data.map(|d| serde_json::value::to_raw_value(&d).unwrap()),
            data_base64: None,
            extensions: ext.into_iter()
                .filter(|(k, _)| !["id", "source", "type", "time", "subject", "partitionkey", "specversion",
                                   "datacontenttype", "dataschema", "data"].contains(&k.as_str()))
                .collect(),
            internal,
        }
    }
}

proptest! {
    #[test]
    fn the_stored_form_round_trips(ev in event(), received in time()) {
        let stored = ev.to_stored_json(received);
        let (back, received_back) = Event::from_stored_json(&stored).unwrap();
        prop_assert_eq!(&back, &ev);
        prop_assert_eq!(received_back, received);
        // And what a producer would send (the stored form without received_at) validates back
        // to the same event: encode and decode agree on every attribute.
        let mut sent: Value = serde_json::from_slice(&stored).unwrap();
        sent.as_object_mut().unwrap().remove("received_at");
        // The mark of Storeline's own records is refused from a producer...
        let marked = sent.as_object_mut().unwrap().remove("storeline_internal").is_some();
        prop_assert_eq!(marked, ev.internal);
        if marked {
            let mut forged = sent.clone();
            forged["storeline_internal"] = Value::Bool(true);
            let inc: Incoming = serde_json::from_str(&forged.to_string()).unwrap();
            let defaults = Defaults { source: "unused".into(), now: Utc::now() };
            let errors = Event::from_incoming(inc, Mode::CloudEvents, &defaults).unwrap_err();
            prop_assert!(errors.iter().any(|e| e.field == "storeline_internal"));
        }
        // ... and without it the event is the same, unmarked.
        let inc: Incoming = serde_json::from_str(&sent.to_string()).unwrap();
        let defaults = Defaults { source: "unused".into(), now: Utc::now() };
        let expected = Event { internal: false, ..ev };
        prop_assert_eq!(Event::from_incoming(inc, Mode::CloudEvents, &defaults).unwrap(), expected);
    }
}

fn currency() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("EUR"),
        Just("USD"),
        Just("JPY"),
        Just("GBP"),
        Just("KWD")
    ]
}

prop_compose! {
    fn order()(cur in currency(), lines in prop::collection::vec(("[A-Z]{3}-[0-9]{1,4}", 1u32..50, 0i64..100_000), 1..6)) -> Value {
        let total: i64 = lines.iter().map(|(_, q, p)| i64::from(*q) * p).sum();
        json!({
            "order_id": "ord-1",
            "total": {"amount": total, "currency": cur},
            "lines": lines.iter().map(|(sku, q, p)| json!({"sku": sku, "quantity": q, "unit_price": {"amount": p, "currency": cur}})).collect::<Vec<_>>(),
        })
    }
}

fn validate(data: &Value) -> Result<(), Vec<storeline_event::FieldError>> {
    let raw = serde_json::value::to_raw_value(data).unwrap();
    storeline_event::validate_data("order.placed", Some(&raw))
}

proptest! {
    #[test]
    fn well_formed_orders_validate(o in order()) {
        prop_assert!(validate(&o).is_ok(), "{o}");
    }

    #[test]
    fn each_kind_of_damage_is_reported_at_its_field(o in order(), which in 0usize..6, pick in any::<prop::sample::Index>()) {
        let mut o = o;
        let n = o["lines"].as_array().unwrap().len();
        let i = pick.index(n);
        let expected = match which {
            0 => { o.as_object_mut().unwrap().remove("order_id"); "data.order_id".to_owned() }
            1 => { o["lines"][i]["quantity"] = json!(0); format!("data.lines[{i}].quantity") }
            2 => { o["lines"][i]["quantity"] = json!(1.5); format!("data.lines[{i}].quantity") }
            3 => {
                let other = if o["total"]["currency"] == "EUR" { "USD" } else { "EUR" };
                o["lines"][i]["unit_price"]["currency"] = json!(other);
                format!("data.lines[{i}].unit_price.currency")
            }
            4 => { o["total"]["currency"] = json!("EURO"); "data.total.currency".to_owned() }
            _ => { o["colour"] = json!("red"); "data.colour".to_owned() }
        };
        let errors = validate(&o).unwrap_err();
        prop_assert!(errors.iter().any(|e| e.field == expected), "expected {} in {:?}", expected, errors);
    }
}
