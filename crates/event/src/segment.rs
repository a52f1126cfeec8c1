//! Maps Segment tracking-API messages onto Storeline's envelope and commerce catalog, so a shop
//! instrumented with the Segment or RudderStack SDKs can point them at Storeline unchanged.
//!
//! [`map_message`] turns one message of `/v1/track|identify|page|screen|group|alias|batch` into the
//! JSON of an event that [`crate::Event::from_incoming`] accepts in [`crate::Mode::Plain`]. It is
//! pure (no I/O, no clock; only a fallback event id is random), so the API and tests share it.
//! The V2 e-commerce names ("Order Completed", …) become catalog types, with float prices turned
//! into integer minor units; other track events become custom `track.<slug>` types. Properties
//! without a catalog field stay in `data.properties` and `context` goes to `data.context`, so
//! nothing the shop sent is lost. Errors name the Segment field, which is what the shop can fix.

use chrono::DateTime;
use serde_json::{Map, Value, json};

use crate::error::FieldError;
use crate::ids::EventId;
use crate::limits;
use crate::money::{Currency, Money};

type Object = Map<String, Value>;
type Res<T> = Result<T, FieldError>;

// Envelope limits, checked here too so that an error names the Segment field.
const MAX_ID_LEN: usize = 256;
const MAX_KEY_LEN: usize = 512;
const MAX_TYPE_LEN: usize = 128;

/// The Segment V2 e-commerce (and email) event names that map onto catalog types; matched exactly.
const TRACK_TYPES: &[(&str, &str)] = &[
    ("Products Searched", "product.searched"),
    ("Product Viewed", "product.viewed"),
    ("Product Added", "cart.item_added"),
    ("Product Removed", "cart.item_removed"),
    ("Cart Viewed", "cart.viewed"),
    ("Checkout Started", "checkout.started"),
    ("Order Completed", "order.placed"),
    ("Order Cancelled", "order.cancelled"),
    ("Order Refunded", "order.refunded"),
    ("Signed Up", "customer.signed_up"),
    ("Email Delivered", "message.sent"),
    ("Email Opened", "message.opened"),
    ("Email Link Clicked", "message.clicked"),
];

/// How Segment messages are mapped.
#[derive(Debug, Clone)]
pub struct SegmentOptions {
    /// The envelope `source` of mapped events, e.g. `"segment"`. With `messageId` it is the
    /// idempotency key, so an SDK's retries are stored once.
    pub source: String,
    /// The currency of prices in messages that have no `properties.currency`.
    pub default_currency: Currency,
}

/// Maps one Segment message (its "type" field says track/identify/page/screen/group/alias; the
/// HTTP endpoint name is passed as `kind` when the message lacks "type") into a Storeline
/// envelope as a JSON object: {"type", "id", "source", "time"?, "subject", "data", optional
/// extension "anonymousid"}. Errors name the Segment field (e.g. "properties.order_id") and what
/// is wrong.
pub fn map_message(kind: Option<&str>, msg: &Value, opts: &SegmentOptions) -> Res<Value> {
    let Some(msg) = msg.as_object() else {
        return Err(must_be("message", "a JSON object", msg));
    };
    let call = match msg.get("type") {
        Some(Value::String(t)) => t.to_ascii_lowercase(),
        None | Some(Value::Null) => kind.unwrap_or_default().to_ascii_lowercase(),
        Some(v) => return Err(must_be("type", "a string", v)),
    };
    let message_id = ident(msg, "messageId", MAX_ID_LEN)?;
    let user_id = ident(msg, "userId", MAX_KEY_LEN)?;
    let anonymous_id = ident(msg, "anonymousId", MAX_KEY_LEN)?;
    if call == "alias" && user_id.is_none() {
        return Err(err("userId", "is required for alias"));
    }
    let Some(subject) = user_id.clone().or_else(|| anonymous_id.clone()) else {
        return Err(err("userId", "userId or anonymousId is required"));
    };
    let context = msg.get("context").and_then(Value::as_object);
    let cur = opts.default_currency;

    let (ty, data) = match call.as_str() {
        "identify" => {
            // RudderStack's SDKs send identify traits in `context.traits`, Segment's at the top:
            // both are read, and a trait at the top wins.
            let mut traits = match context.and_then(|c| c.get("traits")) {
                Some(Value::Object(t)) => without_nulls(Value::Object(t.clone())),
                _ => Object::new(),
            };
            traits.extend(object(msg, "traits")?);
            // Only a plausible address becomes `email` (the catalog validates it); anything else
            // stays a trait, where the shop can still see what it sent.
            let email = match traits.get("email") {
                Some(Value::String(e)) if plausible_email(e) => traits.remove("email"),
                _ => None,
            };
            let d = json!({ "user_id": user_id, "anonymous_id": anonymous_id, "email": email,
                            "traits": traits });
            ("customer.identified".to_owned(), d)
        }
        "alias" => {
            let previous = required(msg, "previousId", "alias")?;
            let d = json!({ "user_id": subject, "previous_id": previous });
            ("customer.aliased".to_owned(), d)
        }
        "page" => ("page.viewed".to_owned(), page(msg, context, cur)?),
        "screen" => {
            let d = json!({ "name": ident(msg, "name", MAX_KEY_LEN)?,
                            "category": ident(msg, "category", MAX_KEY_LEN)?,
                            "properties": object(msg, "properties")? });
            ("screen.viewed".to_owned(), d)
        }
        "group" => {
            let d = json!({ "group_id": required(msg, "groupId", "group")?,
                            "traits": object(msg, "traits")? });
            ("customer.grouped".to_owned(), d)
        }
        "track" => track(msg, context, cur)?,
        other => {
            let why = match other {
                "" | "batch" => "is required on each message".to_owned(),
                _ => format!("'{other}' is not a Segment call"),
            };
            let why = format!("{why}: use track, identify, page, screen, group or alias");
            return Err(err("type", why));
        }
    };
    let mut data = without_nulls(data);
    if let Some(c) = context {
        data.insert("context".into(), Value::Object(c.clone()));
    }
    let id = message_id.unwrap_or_else(|| EventId::generate().into_string());
    let mut ev = without_nulls(json!({ "type": ty, "id": id, "source": opts.source,
                                       "time": time(msg)?, "subject": subject, "data": data }));
    if let (Some(_), Some(anonymous_id)) = (user_id, anonymous_id) {
        // The id the customer had before logging in, kept for identity stitching.
        ev.insert("anonymousid".into(), anonymous_id.into());
    }
    Ok(Value::Object(ev))
}

fn page(msg: &Object, context: Option<&Object>, cur: Currency) -> Res<Value> {
    let ctx = context.and_then(|c| c.get("page")?.as_object());
    let mut p = Props::new(object(msg, "properties")?, "properties".into(), cur);
    // analytics.js puts the page's url, path, title, … in context.page; server SDKs in properties.
    let mut field = |key: &str| -> Res<Option<String>> {
        let from_ctx = ctx
            .and_then(|c| c.get(key)?.as_str())
            .filter(|s| non_blank(s));
        Ok(p.text(key)?.or(from_ctx.map(str::to_owned)))
    };
    let path = field("path")?;
    let Some(url) = field("url")?.or_else(|| path.clone()) else {
        let why = "is required for page: send properties.url or context.page.url (or a path)";
        return Err(err("properties.url", why));
    };
    let d = json!({ "url": url, "path": path, "title": field("title")?,
                    "referrer": field("referrer")?, "search": field("search")? });
    let mut d = without_nulls(d);
    // name and category: top level, as the SDKs' page(category, name) sends them, else properties.
    for key in ["name", "category"] {
        let v = match ident(msg, key, MAX_KEY_LEN)? {
            Some(v) => Some(v),
            None => p.text(key)?,
        };
        if let Some(v) = v {
            d.insert(key.into(), v.into());
        }
    }
    Ok(Value::Object(p.finish(Value::Object(d))))
}

fn track(msg: &Object, context: Option<&Object>, cur: Currency) -> Res<(String, Value)> {
    let event = match msg.get("event") {
        Some(Value::String(e)) if non_blank(e) => e.as_str(),
        Some(Value::String(_) | Value::Null) | None => {
            let why = "is required for track, e.g. 'Order Completed'";
            return Err(err("event", why));
        }
        Some(v) => return Err(must_be("event", "a string", v)),
    };
    let props = object(msg, "properties")?;
    let Some(&(_, ty)) = TRACK_TYPES.iter().find(|(name, _)| *name == event) else {
        let slug = slug(event);
        if slug.is_empty() {
            let why = format!("'{event}' has no letters or digits to name a type");
            return Err(err("event", why));
        }
        let d = json!({ "event": event, "properties": props });
        return Ok((format!("track.{slug}"), d));
    };
    let cur = match props.get("currency") {
        None | Some(Value::Null) => cur,
        Some(Value::String(c)) => Currency::parse(&c.trim().to_ascii_uppercase())
            .map_err(|e| err("properties.currency", e))?,
        Some(v) => return Err(must_be("properties.currency", "a string", v)),
    };
    let mut p = Props::new(props, "properties".into(), cur);
    let d = match ty {
        "product.searched" => match p.take("query") {
            Some(q @ Value::String(_)) => json!({ "query": q }),
            Some(Value::Number(n)) => json!({ "query": n.to_string() }),
            None => return Err(p.missing("query", "is required for 'Products Searched'")),
            Some(v) => return Err(must_be(&p.field("query"), "a string", &v)),
        },
        "product.viewed" => {
            let (product_id, sku) = (p.text("product_id")?, p.text("sku")?);
            let Some(id) = product_id.or_else(|| sku.clone()) else {
                return Err(p.missing("product_id", "product_id or sku is required"));
            };
            json!({ "product_id": id, "sku": sku, "name": p.text("name")?,
                    "brand": p.text("brand")?, "category": p.text("category")?,
                    "variant": p.text("variant")?, "price": p.money("price")?,
                    "url": p.text("url")?, "image_url": p.text("image_url")? })
        }
        "cart.item_added" | "cart.item_removed" => {
            let (cart_id, product_id) = (p.text("cart_id")?, p.text("product_id")?);
            let Some(sku) = p.text("sku")?.or_else(|| product_id.clone()) else {
                return Err(p.missing("sku", "sku or product_id is required"));
            };
            json!({ "cart_id": cart_id, "sku": sku, "product_id": product_id,
                    "quantity": p.quantity()?, "unit_price": p.money("price")?,
                    "name": p.text("name")?, "brand": p.text("brand")?,
                    "category": p.text("category")?, "variant": p.text("variant")? })
        }
        "cart.viewed" | "checkout.started" => {
            let items: Option<Vec<Value>> =
                p.lines()?.map(|ls| ls.into_iter().map(|l| l.0).collect());
            json!({ "cart_id": p.text("cart_id")?, "checkout_id": p.text("checkout_id")?,
                    "order_id": p.text("order_id")?, "items": items,
                    "cart_value": p.first_money(&["value", "revenue", "total"])? })
        }
        "order.placed" => order_completed(&mut p)?,
        "order.cancelled" => json!({ "order_id": p.order_id(event)?, "reason": p.text("reason")? }),
        "order.refunded" => {
            let order_id = p.order_id(event)?;
            let Some(amount) = p.first_money(&["total", "value", "revenue"])? else {
                let why = "is required for 'Order Refunded' (or value, or revenue)";
                return Err(p.missing("total", why));
            };
            json!({ "order_id": order_id, "amount": amount, "reason": p.text("reason")? })
        }
        "customer.signed_up" => {
            // Segment's "Signed Up" spec says first_name, its traits spec firstName: take either,
            // from the properties, else from context.traits (which stays whole in data.context).
            let traits = context.and_then(|c| c.get("traits")?.as_object());
            let mut pick = |keys: &[&str], ok: fn(&str) -> bool| {
                for k in keys {
                    if p.rest.get(*k).and_then(Value::as_str).is_some_and(ok) {
                        return p.rest.remove(*k);
                    }
                }
                let mut found = keys.iter().filter_map(|k| traits?.get(*k)?.as_str());
                found.find(|s| ok(s)).map(Value::from)
            };
            json!({ "email": pick(&["email"], plausible_email), "name": pick(&["name"], non_blank),
                    "first_name": pick(&["first_name", "firstName"], non_blank),
                    "last_name": pick(&["last_name", "lastName"], non_blank),
                    "phone": pick(&["phone"], non_blank) })
        }
        _ => json!({ "channel": "email", "message_id": p.text("email_id")?,
                     "subject": p.text("email_subject")?, "url": p.text("link_url")? }),
    };
    if p.money_used {
        // The currency is now part of every amount.
        p.rest.remove("currency");
    }
    Ok((ty.to_owned(), Value::Object(p.finish(d))))
}

fn order_completed(p: &mut Props) -> Res<Value> {
    let order_id = p.order_id("Order Completed")?;
    let lines = p.lines()?.unwrap_or_default();
    if lines.is_empty() {
        let why = "at least one product is required for 'Order Completed'";
        return Err(p.missing("products", why));
    }
    let total = match p.first_money(&["total", "revenue", "value"])? {
        Some(total) => total,
        // No order-level amount: the lines' sum is the total, if every line has a price.
        None => match lines.iter().try_fold(0i64, |sum, l| sum.checked_add(l.1?)) {
            Some(sum) => money_json(sum, p.cur),
            None => {
                let why = "is required for 'Order Completed' (or revenue, or value, or a price \
                           on every product)";
                return Err(p.missing("total", why));
            }
        },
    };
    let lines: Vec<Value> = lines.into_iter().map(|l| l.0).collect();
    let d = json!({ "order_id": order_id, "lines": lines, "total": total,
                    "subtotal": p.money("subtotal")?, "tax": p.money("tax")?,
                    "shipping": p.money("shipping")?, "discount": p.money("discount")?,
                    "coupon": p.text("coupon")? });
    Ok(d)
}

/// A catalog line and its `price × quantity` in minor units, if the product has a price.
type Line = (Value, Option<i64>);

/// The properties of one message (or one product) while they are mapped: every read removes its
/// key, so what remains at the end is what goes to `properties`. `at` is the Segment path.
struct Props {
    rest: Object,
    at: String,
    cur: Currency,
    money_used: bool,
}

impl Props {
    fn new(rest: Object, at: String, cur: Currency) -> Self {
        let money_used = false;
        Props {
            rest,
            at,
            cur,
            money_used,
        }
    }

    fn field(&self, key: &str) -> String {
        format!("{}.{key}", self.at)
    }

    fn missing(&self, key: &str, reason: impl Into<String>) -> FieldError {
        err(self.field(key), reason)
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        self.rest.remove(key).filter(|v| !v.is_null())
    }

    /// A text field: strings as sent, numbers (ids such as `product_id: 507`) as their digits;
    /// a blank string counts as absent.
    fn text(&mut self, key: &str) -> Res<Option<String>> {
        match self.take(key) {
            Some(Value::String(s)) => Ok(Some(s).filter(|s| non_blank(s))),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(v) => Err(must_be(&self.field(key), "a string", &v)),
            None => Ok(None),
        }
    }

    fn order_id(&mut self, event: &str) -> Res<String> {
        let id = self.text("order_id")?;
        id.ok_or_else(|| self.missing("order_id", format!("is required for '{event}'")))
    }

    /// An amount in major units (a number, or a numeric string as some shops send) in minor units.
    fn amount(&mut self, key: &str) -> Res<Option<i64>> {
        let Some(v) = self.take(key) else {
            return Ok(None);
        };
        let Some(major) = number(&v).filter(|m| m.is_finite()) else {
            return Err(must_be(&self.field(key), "a number such as 19.99", &v));
        };
        if major < 0.0 {
            return Err(self.missing(key, format!("must not be negative, got {major}")));
        }
        let Some(m) = Money::from_major(major, self.cur) else {
            return Err(self.missing(key, format!("{major} is too large")));
        };
        self.money_used = true;
        Ok(Some(m.amount))
    }

    fn money(&mut self, key: &str) -> Res<Option<Value>> {
        Ok(self.amount(key)?.map(|a| money_json(a, self.cur)))
    }

    /// The first of `keys` that is present, as money; the others stay in the properties.
    fn first_money(&mut self, keys: &[&str]) -> Res<Option<Value>> {
        for key in keys {
            if let Some(m) = self.money(key)? {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    /// `quantity`, default 1: a whole number from 1 to [`MAX_QUANTITY`](limits::MAX_QUANTITY).
    fn quantity(&mut self) -> Res<u64> {
        let Some(v) = self.take("quantity") else {
            return Ok(1);
        };
        #[allow(clippy::cast_precision_loss)]
        let max = limits::MAX_QUANTITY as f64;
        match number(&v) {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Some(q) if q.fract() == 0.0 && (1.0..=max).contains(&q) => Ok(q as u64),
            _ => {
                let what = format!(
                    "a whole number of at least 1 and at most {}",
                    limits::MAX_QUANTITY
                );
                Err(must_be(&self.field("quantity"), &what, &v))
            }
        }
    }

    /// `products[]` as catalog lines.
    fn lines(&mut self) -> Res<Option<Vec<Line>>> {
        let products = match self.take("products") {
            None => return Ok(None),
            Some(Value::Array(a)) => a,
            Some(v) => return Err(must_be(&self.field("products"), "an array", &v)),
        };
        let mut lines = Vec::with_capacity(products.len());
        for (i, product) in products.into_iter().enumerate() {
            let at = format!("{}.products[{i}]", self.at);
            let Value::Object(obj) = product else {
                return Err(must_be(&at, "an object", &product));
            };
            let mut p = Props::new(obj, at, self.cur);
            let product_id = p.text("product_id")?;
            let Some(sku) = p.text("sku")?.or_else(|| product_id.clone()) else {
                return Err(p.missing("sku", "sku or product_id is required for each product"));
            };
            let (quantity, price) = (p.quantity()?, p.amount("price")?);
            let line = json!({ "sku": sku, "quantity": quantity, "product_id": product_id,
                               "unit_price": price.map(|a| money_json(a, p.cur)),
                               "name": p.text("name")?, "category": p.text("category")?,
                               "brand": p.text("brand")?, "variant": p.text("variant")? });
            self.money_used |= p.money_used;
            let total = price
                .and_then(|a| a.checked_mul(i64::try_from(quantity).ok()?))
                .filter(|t| limits::check_amount(*t).is_ok());
            // A product's own leftovers (url, position, coupon, …) stay with its line.
            lines.push((Value::Object(p.finish(line)), total));
        }
        Ok(Some(lines))
    }

    /// `d` without nulls, plus what was not mapped as `properties`.
    fn finish(self, d: Value) -> Object {
        let mut d = without_nulls(d);
        if !self.rest.is_empty() {
            d.insert("properties".into(), Value::Object(self.rest));
        }
        d
    }
}

fn money_json(amount: i64, cur: Currency) -> Value {
    json!({ "amount": amount, "currency": cur.code() })
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// An id or name attribute (`messageId`, `userId`, …): a string, or a number as its digits; blank
/// is absent.
fn ident(msg: &Object, key: &str, max: usize) -> Res<Option<String>> {
    let id = match msg.get(key) {
        Some(Value::String(s)) if non_blank(s) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(_) | Value::Null) | None => return Ok(None),
        Some(v) => return Err(must_be(key, "a string", v)),
    };
    if id.len() > max {
        return Err(err(
            key,
            format!("is {} bytes long; the limit is {max}", id.len()),
        ));
    }
    limits::check_identifier(&id).map_err(|reason| err(key, reason))?;
    Ok(Some(id))
}

fn required(msg: &Object, key: &str, call: &str) -> Res<String> {
    ident(msg, key, MAX_KEY_LEN)?.ok_or_else(|| err(key, format!("is required for {call}")))
}

/// `timestamp` (when it happened), else `originalTimestamp` (the device clock), as sent.
fn time(msg: &Object) -> Res<Option<String>> {
    for key in ["timestamp", "originalTimestamp"] {
        match msg.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if DateTime::parse_from_rfc3339(s).is_ok() => {
                return Ok(Some(s.clone()));
            }
            Some(v) => {
                let what = "an ISO 8601 time with a zone, e.g. \"2026-11-21T10:00:00.000Z\"";
                return Err(must_be(key, what, v));
            }
        }
    }
    Ok(None)
}

fn object(msg: &Object, key: &str) -> Res<Object> {
    match msg.get(key) {
        None | Some(Value::Null) => Ok(Object::new()),
        Some(Value::Object(o)) => Ok(o.clone()),
        Some(v) => Err(must_be(key, "an object", v)),
    }
}

fn without_nulls(v: Value) -> Object {
    let Value::Object(mut o) = v else {
        return Object::new();
    };
    o.retain(|_, v| !v.is_null());
    o
}

fn non_blank(s: &str) -> bool {
    !s.trim().is_empty()
}

/// The catalog's e-mail check (something@domain.tld, no spaces), so a mapped `email` never fails.
fn plausible_email(s: &str) -> bool {
    s.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains('@')
    }) && !s.chars().any(char::is_whitespace)
}

/// "Video Played!" → "video_played": ASCII letters and digits lowercased, every other run one `_`,
/// cut so that `track.<slug>` fits the type length limit.
fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    out.truncate(MAX_TYPE_LEN - "track.".len());
    while out.ends_with('_') {
        out.pop();
    }
    out
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError::new(field, reason)
}

fn must_be(field: &str, what: &str, got: &Value) -> FieldError {
    let got = match got {
        Value::String(s) => format!("'{s}'"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
        other => other.to_string(),
    };
    err(field, format!("must be {what}, got {got}"))
}

#[cfg(test)]
mod tests;
