//! The commerce catalog: the event types whose `data` Storeline validates.
//!
//! Each type has a payload struct that exists only to be checked: serde (with
//! `deny_unknown_fields`) checks presence and JSON types, [`Check`] the rules serde cannot express
//! (one currency per order, exactly one of `delta`/`set`). Every payload may also carry free-form
//! `properties` and `context` objects, which is where a shop's own fields go. Types outside the
//! catalog are accepted as custom events with any JSON payload.
#![allow(dead_code)] // the payload fields are read by serde only

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny};
use serde_json::value::RawValue;

use crate::error::FieldError;
use crate::limits;
use crate::money::Money;

/// Every catalog type, in the order of DESIGN.md.
pub const CATALOG: &[&str] = &[
    "customer.signed_up",
    "customer.identified",
    "customer.updated",
    "customer.consent_changed",
    "customer.aliased",
    "customer.unmerged",
    "page.viewed",
    "product.viewed",
    "product.searched",
    "cart.item_added",
    "cart.item_removed",
    "cart.viewed",
    "checkout.started",
    "order.placed",
    "order.paid",
    "order.fulfilled",
    "order.shipped",
    "order.delivered",
    "order.cancelled",
    "order.refunded",
    "payment.attempted",
    "payment.succeeded",
    "payment.failed",
    "return.requested",
    "return.received",
    "inventory.adjusted",
    "inventory.reserved",
    "inventory.released",
    "inventory.committed",
    "inventory.low",
    "inventory.back_in_stock",
    "message.sent",
    "message.opened",
    "message.clicked",
];

pub fn is_catalog_type(ty: &str) -> bool {
    CATALOG.contains(&ty)
}

/// The partition key of every stock- and order-changing event: they all go to one partition, whose
/// single writer validates commands against them, which is what makes overselling impossible.
pub const COMMERCE_KEY: &str = "commerce";

/// Whether events of this type change stock or orders and so belong to the commerce partition.
pub fn is_commerce_type(ty: &str) -> bool {
    ty.starts_with("order.") || ty.starts_with("inventory.") || ty.starts_with("return.")
}

/// Validates `data` for a catalog type; custom types always pass. Field paths start with `data`.
pub fn validate_data(ty: &str, data: Option<&RawValue>) -> Result<(), Vec<FieldError>> {
    let raw = data.map_or("{}", RawValue::get);
    match ty {
        "customer.signed_up" => check::<CustomerSignedUp>(ty, raw),
        "customer.identified" => check::<CustomerIdentified>(ty, raw),
        "customer.updated" => check::<CustomerUpdated>(ty, raw),
        "customer.consent_changed" => check::<ConsentChanged>(ty, raw),
        "customer.aliased" => check::<CustomerAliased>(ty, raw),
        "customer.unmerged" => check::<CustomerUnmerged>(ty, raw),
        "page.viewed" => check::<PageViewed>(ty, raw),
        "product.viewed" => check::<ProductViewed>(ty, raw),
        "product.searched" => check::<ProductSearched>(ty, raw),
        "cart.item_added" | "cart.item_removed" => check::<CartItem>(ty, raw),
        "cart.viewed" | "checkout.started" => check::<CartSnapshot>(ty, raw),
        "order.placed" => check::<OrderPlaced>(ty, raw),
        "order.paid" => check::<OrderPaid>(ty, raw),
        "order.fulfilled" | "order.delivered" | "order.cancelled" => check::<OrderRef>(ty, raw),
        "order.shipped" => check::<OrderShipped>(ty, raw),
        "order.refunded" => check::<OrderRefunded>(ty, raw),
        "payment.attempted" | "payment.succeeded" | "payment.failed" => check::<Payment>(ty, raw),
        "return.requested" | "return.received" => check::<ReturnEvent>(ty, raw),
        "inventory.adjusted" => check::<InventoryAdjusted>(ty, raw),
        "inventory.reserved" | "inventory.released" | "inventory.committed" => {
            check::<InventoryQuantity>(ty, raw)
        }
        "inventory.low" | "inventory.back_in_stock" => check::<InventoryLevel>(ty, raw),
        "message.sent" | "message.opened" | "message.clicked" => check::<Message>(ty, raw),
        _ => Ok(()),
    }
}

/// Rules beyond what serde checks; `errors` get paths relative to `data`.
trait Check {
    fn check(&self, _errors: &mut Vec<FieldError>) {}
}

fn check<T: for<'de> Deserialize<'de> + Check>(ty: &str, raw: &str) -> Result<(), Vec<FieldError>> {
    // The happy path parses plainly; only a failure is parsed again with path tracking, which
    // costs a third of the validation time.
    let parsed = serde_json::from_str::<Obj<T>>(raw).or_else(|_| {
        let de = &mut serde_json::Deserializer::from_str(raw);
        serde_path_to_error::deserialize::<_, Obj<T>>(de)
    });
    match parsed {
        Ok(Obj(payload)) => {
            let mut errors = Vec::new();
            payload.check(&mut errors);
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors)
            }
        }
        Err(e) => Err(vec![describe(ty, &e)]),
    }
}

/// Turns serde's error into a field path and a sentence that says what to fix.
fn describe(ty: &str, e: &serde_path_to_error::Error<serde_json::Error>) -> FieldError {
    let path = e.path().to_string();
    let base = if path == "." || path.is_empty() {
        "data".to_owned()
    } else {
        format!("data.{path}")
    };
    let mut msg = e.inner().to_string();
    if let Some(i) = msg.find(" at line ") {
        msg.truncate(i);
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or("");
        return FieldError::new(format!("{base}.{name}"), format!("is required for '{ty}'"));
    }
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or("");
        let expected = rest.split_once(", expected ").map(|x| x.1).unwrap_or("");
        let parent = base.rsplit_once('.').map_or(base.as_str(), |(p, _)| p);
        return FieldError::new(
            format!("{parent}.{name}"),
            format!(
                "unknown field for '{ty}' (expected {expected}); put shop-specific fields in \
                 data.properties"
            ),
        );
    }
    if (msg.starts_with("invalid type: map") || msg.ends_with("expected a JSON object"))
        && base == "data"
    {
        return FieldError::new("data", format!("'{ty}' needs data as a JSON object"));
    }
    FieldError::new(base, msg)
}

// ----- field types -------------------------------------------------------------------------

/// A payload struct read from a JSON object only. serde's derived structs also accept an array
/// of the field values in order (`["ord-1", null, null]`), which no producer means and the
/// projections, which read fields by name, would not understand.
#[derive(Debug)]
struct Obj<T>(T);

impl<T> std::ops::Deref for Obj<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> de::Visitor<'de> for V<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Obj)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// An identifier (an id, a SKU, a URL): not empty, no control characters, at most
/// [`MAX_IDENTIFIER_LEN`](crate::limits::MAX_IDENTIFIER_LEN) bytes. These become keys in the
/// views.
#[derive(Debug)]
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().is_empty() {
            return Err(de::Error::custom("must not be empty"));
        }
        if s.len() > limits::MAX_IDENTIFIER_LEN {
            return Err(de::Error::custom(format!(
                "is {} bytes long; the limit is {}",
                s.len(),
                limits::MAX_IDENTIFIER_LEN
            )));
        }
        limits::check_identifier(&s).map_err(de::Error::custom)?;
        Ok(Text(s))
    }
}

/// A count of items: a whole number from 1 to [`MAX_QUANTITY`](limits::MAX_QUANTITY).
#[derive(Debug)]
struct Quantity(u64);

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        match n.as_u64() {
            Some(q) if (1..=limits::MAX_QUANTITY).contains(&q) => Ok(Quantity(q)),
            _ => Err(de::Error::custom(format!(
                "must be a whole number of at least 1 and at most {}, got {n}",
                limits::MAX_QUANTITY
            ))),
        }
    }
}

/// A stock count or change: a whole number within ±[`MAX_AMOUNT`](limits::MAX_AMOUNT).
#[derive(Debug, Clone, Copy)]
struct Units(i64);

impl<'de> Deserialize<'de> for Units {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        let v = n
            .as_i64()
            .ok_or_else(|| de::Error::custom(format!("must be a whole number, got {n}")))?;
        limits::check_amount(v).map_err(de::Error::custom)?;
        Ok(Units(v))
    }
}

/// An e-mail address (a light check: something@domain.tld, no spaces).
#[derive(Debug)]
struct Email(String);

impl<'de> Deserialize<'de> for Email {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = s.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
        }) && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok || s.len() > limits::MAX_IDENTIFIER_LEN {
            return Err(de::Error::custom(format!(
                "{:?} is not an e-mail address",
                s.chars().take(100).collect::<String>()
            )));
        }
        Ok(Email(s))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Channel {
    Email,
    Sms,
    Push,
    Whatsapp,
    Webhook,
}

type Object = BTreeMap<String, IgnoredAny>;

macro_rules! payload {
    ($name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $name {
            $($field: $ty,)*
            #[serde(default)]
            properties: Option<Object>,
            #[serde(default)]
            context: Option<Object>,
        }
    };
}

// ----- customer ----------------------------------------------------------------------------

payload!(CustomerSignedUp {
    customer_id: Option<Text>, email: Option<Email>, phone: Option<Text>, name: Option<String>,
    first_name: Option<String>, last_name: Option<String>, locale: Option<String>,
    timezone: Option<String>, traits: Option<Object>, anonymous_id: Option<Text>,
});
impl Check for CustomerSignedUp {}

payload!(CustomerIdentified {
    user_id: Option<Text>, anonymous_id: Option<Text>, email: Option<Email>,
    traits: Option<Object>,
});
impl Check for CustomerIdentified {
    fn check(&self, errors: &mut Vec<FieldError>) {
        if self.user_id.is_none() && self.anonymous_id.is_none() && self.email.is_none() {
            errors.push(FieldError::new(
                "data.user_id",
                "one of user_id, anonymous_id or email is required for 'customer.identified'",
            ));
        }
    }
}

payload!(CustomerUpdated { traits: Object, email: Option<Email> });
impl Check for CustomerUpdated {}

payload!(ConsentChanged { channel: Channel, granted: bool, source: Option<String> });
impl Check for ConsentChanged {}

payload!(CustomerAliased {
    user_id: Text,
    previous_id: Text
});
impl Check for CustomerAliased {}

payload!(CustomerUnmerged { identity: Text, from: Option<Text>, reason: Option<String> });
impl Check for CustomerUnmerged {}

// ----- browsing ----------------------------------------------------------------------------

payload!(PageViewed {
    url: Text, path: Option<String>, title: Option<String>, referrer: Option<String>,
    name: Option<String>, category: Option<String>, search: Option<String>,
});
impl Check for PageViewed {}

payload!(ProductViewed {
    product_id: Text, sku: Option<Text>, name: Option<String>, brand: Option<String>,
    category: Option<String>, variant: Option<String>, price: Option<Money>, url: Option<String>,
    image_url: Option<String>,
});
impl Check for ProductViewed {}

payload!(ProductSearched { query: String, results: Option<u64> });
impl Check for ProductSearched {}

// ----- cart --------------------------------------------------------------------------------

payload!(CartItem {
    cart_id: Option<Text>, sku: Text, product_id: Option<Text>, quantity: Quantity,
    unit_price: Option<Money>, cart_value: Option<Money>, name: Option<String>,
    brand: Option<String>, category: Option<String>, variant: Option<String>,
});
impl Check for CartItem {
    fn check(&self, errors: &mut Vec<FieldError>) {
        if let (Some(p), Some(v)) = (&self.unit_price, &self.cart_value)
            && p.currency != v.currency
        {
            errors.push(FieldError::new(
                "data.cart_value.currency",
                format!("is {} but unit_price is in {}", v.currency, p.currency),
            ));
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    sku: Text,
    quantity: Quantity,
    unit_price: Option<Money>,
    product_id: Option<Text>,
    name: Option<String>,
    category: Option<String>,
    brand: Option<String>,
    variant: Option<String>,
    properties: Option<Object>,
}

payload!(CartSnapshot {
    cart_id: Option<Text>, checkout_id: Option<Text>, order_id: Option<Text>,
    items: Option<Vec<Obj<Line>>>, cart_value: Option<Money>,
});
impl Check for CartSnapshot {}

// ----- orders ------------------------------------------------------------------------------

payload!(OrderPlaced {
    order_id: Text, lines: Vec<Obj<Line>>, total: Money, subtotal: Option<Money>, tax: Option<Money>,
    shipping: Option<Money>, discount: Option<Money>, coupon: Option<String>,
    location: Option<String>, channel: Option<String>, customer_id: Option<Text>,
    email: Option<Email>,
});
impl Check for OrderPlaced {
    fn check(&self, errors: &mut Vec<FieldError>) {
        if self.lines.is_empty() {
            errors.push(FieldError::new("data.lines", "must have at least one line"));
        }
        let cur = self.total.currency;
        for (i, line) in self.lines.iter().enumerate() {
            if let Some(p) = &line.unit_price
                && p.currency != cur
            {
                errors.push(FieldError::new(
                    format!("data.lines[{i}].unit_price.currency"),
                    format!("is {} but the order total is in {cur}", p.currency),
                ));
            }
        }
        for (name, m) in [
            ("subtotal", &self.subtotal),
            ("tax", &self.tax),
            ("shipping", &self.shipping),
            ("discount", &self.discount),
        ] {
            if let Some(m) = m
                && m.currency != cur
            {
                errors.push(FieldError::new(
                    format!("data.{name}.currency"),
                    format!("is {} but the order total is in {cur}", m.currency),
                ));
            }
        }
    }
}

payload!(OrderRef { order_id: Text, reason: Option<String>, location: Option<String> });
impl Check for OrderRef {}

payload!(OrderPaid { order_id: Text, amount: Option<Money>, payment_id: Option<Text> });
impl Check for OrderPaid {}

payload!(OrderShipped {
    order_id: Text, carrier: Option<String>, tracking_number: Option<String>,
    tracking_url: Option<String>, location: Option<String>,
});
impl Check for OrderShipped {}

payload!(OrderRefunded {
    order_id: Text, amount: Money, reason: Option<String>, lines: Option<Vec<Obj<ReturnLine>>>,
});
impl Check for OrderRefunded {}

// ----- payments ----------------------------------------------------------------------------

payload!(Payment {
    payment_id: Option<Text>, order_id: Option<Text>, amount: Money, method: Option<String>,
    provider: Option<String>, card_fingerprint: Option<Text>, reason: Option<String>,
    error_code: Option<String>,
});
impl Check for Payment {}

// ----- returns -----------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReturnLine {
    sku: Text,
    quantity: Quantity,
}

payload!(ReturnEvent {
    order_id: Text, return_id: Option<Text>, lines: Vec<Obj<ReturnLine>>, reason: Option<String>,
    location: Option<String>,
});
impl Check for ReturnEvent {
    fn check(&self, errors: &mut Vec<FieldError>) {
        if self.lines.is_empty() {
            errors.push(FieldError::new("data.lines", "must have at least one line"));
        }
    }
}

// ----- inventory ---------------------------------------------------------------------------

payload!(InventoryAdjusted {
    sku: Text, location: Option<Text>, delta: Option<Units>, set: Option<Units>,
    reason: Option<String>,
});
impl Check for InventoryAdjusted {
    fn check(&self, errors: &mut Vec<FieldError>) {
        match (self.delta.map(|u| u.0), self.set.map(|u| u.0)) {
            (None, None) => errors.push(FieldError::new(
                "data.delta",
                "one of delta (a change) or set (a new on-hand count) is required",
            )),
            (Some(_), Some(_)) => errors.push(FieldError::new(
                "data.set",
                "give either delta or set, not both",
            )),
            (None, Some(s)) if s < 0 => errors.push(FieldError::new(
                "data.set",
                format!("on-hand stock cannot be negative, got {s}"),
            )),
            _ => {}
        }
    }
}

payload!(InventoryQuantity {
    sku: Text, location: Option<Text>, quantity: Quantity, order_id: Option<Text>,
    reservation_id: Option<Text>, expires_at: Option<String>, reason: Option<String>,
});
impl Check for InventoryQuantity {}

payload!(InventoryLevel {
    sku: Text, location: Option<Text>, available: Units, threshold: Option<Units>,
});
impl Check for InventoryLevel {}

// ----- engagement --------------------------------------------------------------------------

payload!(Message {
    channel: Channel, message_id: Option<Text>, template: Option<String>, trigger: Option<String>,
    delivery_id: Option<Text>, url: Option<String>, subject: Option<String>,
});
impl Check for Message {}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ty: &str, json: &str) -> Result<(), Vec<FieldError>> {
        let raw = serde_json::from_str::<Box<RawValue>>(json).unwrap();
        validate_data(ty, Some(&raw))
    }

    #[test]
    fn a_good_order_passes() {
        v(
            "order.placed",
            r#"{"order_id":"o1","total":{"amount":3998,"currency":"EUR"},
                "lines":[{"sku":"S1","quantity":2,"unit_price":{"amount":1999,"currency":"EUR"}}],
                "properties":{"gift":true}}"#,
        )
        .unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let e = v(
            "order.placed",
            r#"{"total":{"amount":1,"currency":"EUR"},"lines":[]}"#,
        )
        .unwrap_err();
        assert_eq!(e[0].field, "data.order_id");
        assert!(e[0].reason.contains("required"));

        let e = v(
            "order.placed",
            r#"{"order_id":"o","total":{"amount":1,"currency":"EUR"},
                "lines":[{"sku":"S","quantity":0}]}"#,
        )
        .unwrap_err();
        assert_eq!(e[0].field, "data.lines[0].quantity");
        assert!(e[0].reason.contains("at least 1"), "{:?}", e);

        let e = v(
            "order.placed",
            r#"{"order_id":"o","total":{"amount":1,"currency":"EUR"},
                "lines":[{"sku":"S","quantity":1,"unit_price":{"amount":1,"currency":"USD"}}]}"#,
        )
        .unwrap_err();
        assert_eq!(e[0].field, "data.lines[0].unit_price.currency");

        let e = v("page.viewed", r#"{"url":"/","colour":"red"}"#).unwrap_err();
        assert_eq!(e[0].field, "data.colour");
        assert!(e[0].reason.contains("data.properties"), "{:?}", e);

        let e = v(
            "cart.item_added",
            r#"{"sku":"S","quantity":1,"unit_price":{"amount":9.5,"currency":"EUR"}}"#,
        )
        .unwrap_err();
        assert_eq!(e[0].field, "data.unit_price");
        assert!(e[0].reason.contains("minor units"), "{:?}", e);

        let e = v("inventory.adjusted", r#"{"sku":"S"}"#).unwrap_err();
        assert_eq!(e[0].field, "data.delta");

        let e = v("customer.signed_up", r#"{"email":"not-an-email"}"#).unwrap_err();
        assert_eq!(e[0].field, "data.email");
    }

    #[test]
    fn payloads_and_lines_are_objects_not_arrays_of_field_values() {
        // serde's derived structs would take these as (order_id, reason, location, …).
        let e = v("order.cancelled", r#"["o1", null, null, null, null]"#).unwrap_err();
        assert_eq!(e[0].field, "data");
        assert!(e[0].reason.contains("JSON object"), "{e:?}");
        let e = v(
            "order.placed",
            r#"{"order_id":"o","total":{"amount":1,"currency":"EUR"},
                "lines":[["S", 1, null, null, null, null, null, null, null]]}"#,
        )
        .unwrap_err();
        assert_eq!(e[0].field, "data.lines[0]");
        let e = v("return.received", r#"{"order_id":"o","lines":[["S", 1]]}"#).unwrap_err();
        assert_eq!(e[0].field, "data.lines[0]");
    }

    #[test]
    fn missing_data_is_reported_for_types_that_need_it() {
        let e = validate_data("order.paid", None).unwrap_err();
        assert_eq!(e[0].field, "data.order_id");
        validate_data("cart.viewed", None).unwrap();
        validate_data("my.custom", None).unwrap();
    }
}
