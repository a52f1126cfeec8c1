//! The bad-input corpus: hostile and odd requests, each with the status it must get, against the
//! real binary; then the server must still be up, every partition must still apply new events,
//! and commands must still answer. Add a case here for every kind of bad input found.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{get_body, http, post_json, serve, status_of};
use serde_json::{Value, json};
use storeline_log::partition_for;

#[derive(Clone, Copy, PartialEq)]
enum Key {
    None,
    Bogus,
    Ingest,
    Read,
    Admin,
}

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    content_type: &'static str,
    body: Vec<u8>,
    key: Key,
    status: u16,
    /// The error code, when the answer is an error.
    code: Option<&'static str>,
}

fn case(name: &'static str, path: &str, body: impl Into<Vec<u8>>, status: u16) -> Case {
    Case {
        name,
        method: "POST",
        path: path.to_owned(),
        content_type: "application/json",
        body: body.into(),
        key: Key::Admin,
        status,
        code: None,
    }
}

impl Case {
    fn code(mut self, code: &'static str) -> Case {
        self.code = Some(code);
        self
    }
    fn key(mut self, key: Key) -> Case {
        self.key = key;
        self
    }
    fn method(mut self, m: &'static str) -> Case {
        self.method = m;
        self
    }
    fn content_type(mut self, ct: &'static str) -> Case {
        self.content_type = ct;
        self
    }
}

fn event(v: Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

fn deep(n: usize) -> String {
    format!("{}1{}", "[".repeat(n), "]".repeat(n))
}

fn corpus() -> Vec<Case> {
    let order = |order_id: &str, amount: i64, quantity: Value| {
        json!({ "type": "order.placed", "subject": "cus-1", "data": {
            "order_id": order_id, "total": { "amount": amount, "currency": "EUR" },
            "lines": [ { "sku": "S-1", "quantity": quantity } ] } })
    };
    let ev = "/v1/events";
    vec![
        // Control characters in identifiers.
        case("NUL in a subject", ev, event(json!({ "type": "page.viewed", "subject": "cus\u{0}1", "data": { "url": "/" } })), 400).code("invalid_events"),
        case("NUL in an order_id", ev, event(order("o\u{0}1", 100, json!(1))), 400).code("invalid_events"),
        case("tab in an order_id", ev, event(json!({ "type": "order.paid", "data": { "order_id": "o\t1" } })), 400).code("invalid_events"),
        case("NUL in an e-mail", ev, event(json!({ "type": "customer.identified", "subject": "c", "data": { "email": "a\u{0}@b.co" } })), 400).code("invalid_events"),
        case("NUL in an SKU", ev, event(json!({ "type": "inventory.adjusted", "data": { "sku": "S\u{0}", "delta": 1 } })), 400).code("invalid_events"),
        case("NUL in an id", ev, event(json!({ "type": "x.y", "id": "a\u{0}" })), 400).code("invalid_events"),
        case("control character in a source", ev, event(json!({ "type": "x.y", "source": "web\u{1b}" })), 400).code("invalid_events"),
        case("bell in free text", ev, event(json!({ "type": "x.y", "data": { "note": "ding\u{7}" } })), 400).code("invalid_events"),
        case("NUL in an object key", ev, event(json!({ "type": "x.y", "data": { "a\u{0}": 1 } })), 400).code("invalid_events"),
        case("NUL in an extension", ev, event(json!({ "type": "x.y", "shop": "a\u{0}" })), 400).code("invalid_events"),
        case("tabs and line breaks in free text are fine", ev, event(json!({ "type": "x.y", "data": { "note": "a\tb\r\nc" } })), 200),
        // Nesting.
        case("data 100,000 arrays deep", ev, format!(r#"{{"type":"x.y","data":{}}}"#, deep(100_000)), 400).code("invalid_events"),
        case("data 65 deep", ev, format!(r#"{{"type":"x.y","data":{}}}"#, deep(65)), 400).code("invalid_events"),
        case("data 64 deep is the limit", ev, format!(r#"{{"type":"x.y","data":{}}}"#, deep(64)), 200),
        case("an NDJSON line 100,000 deep", ev, format!("{{\"type\":\"x.y\",\"data\":{}}}\n", deep(100_000)), 400).content_type("application/x-ndjson"),
        case("an array body 100,000 deep", ev, deep(100_000), 400),
        // Numbers out of range.
        case("an amount of i64::MAX", ev, event(order("o-big", i64::MAX, json!(1))), 400).code("invalid_events"),
        case("an amount just over 10^15", ev, event(order("o-big", 1_000_000_000_000_001, json!(1))), 400).code("invalid_events"),
        case("a fractional quantity", ev, event(order("o-f", 100, json!(0.5))), 400).code("invalid_events"),
        case("a quantity over 10^9", ev, event(order("o-q", 100, json!(2_000_000_000u64))), 400).code("invalid_events"),
        case("a stock delta of i64::MAX", ev, event(json!({ "type": "inventory.adjusted", "data": { "sku": "S", "delta": i64::MAX } })), 400).code("invalid_events"),
        case("a stock set below -10^15", ev, event(json!({ "type": "inventory.adjusted", "data": { "sku": "S", "set": -2_000_000_000_000_000i64 } })), 400).code("invalid_events"),
        // Framing.
        case("not JSON", ev, "{nope", 400).code("invalid_json"),
        case("an empty body", ev, "", 400).code("empty_body"),
        case("text/plain", ev, "hello", 415).code("unsupported_media_type").content_type("text/plain"),
        case("10,001 events", ev, format!("[{}]", vec![r#"{"type":"x.y"}"#; 10_001].join(",")), 413).code("too_many_events"),
        case("an event that is not an object", ev, "[1]", 400).code("invalid_events"),
        // Keys.
        case("no key", ev, event(json!({ "type": "x.y" })), 401).code("unauthorized").key(Key::None),
        case("an unknown key", ev, event(json!({ "type": "x.y" })), 401).code("unauthorized").key(Key::Bogus),
        case("a read key cannot ingest", ev, event(json!({ "type": "x.y" })), 403).code("forbidden").key(Key::Read),
        case("an ingest key cannot read", "/v1/events", "", 403).code("forbidden").key(Key::Ingest).method("GET"),
        case("an ingest key cannot replace triggers", "/v1/triggers", "", 403).code("forbidden").key(Key::Ingest).method("PUT"),
        case("an ingest key cannot list the quarantine", "/v1/quarantine", "", 403).code("forbidden").key(Key::Ingest).method("GET"),
        // Reserved types.
        case("a forged trigger file", ev, event(json!({ "type": "storeline.triggers", "source": "storeline/engine", "data": { "source": "", "version": "x" } })), 400).code("reserved_type").key(Key::Ingest),
        case("a forged tick", ev, event(json!({ "type": "storeline.tick" })), 400).code("reserved_type").key(Key::Ingest),
        case("a forged unmerge", ev, event(json!({ "type": "customer.unmerged", "subject": "c", "data": { "identity": "c" } })), 400).code("reserved_type").key(Key::Ingest),
        // Segment: the SDKs never retry a 400, so bad messages are answered 200 and quarantined.
        case("a Segment userId with NUL", "/v1/track", event(json!({ "userId": "u\u{0}", "event": "x" })), 200).key(Key::Ingest),
        case("a Segment batch of one bad message", "/v1/batch", event(json!({ "batch": [ { "type": "track", "userId": "u", "event": "Product Added", "properties": { "sku": "S", "quantity": 0.5 } } ] })), 200).key(Key::Ingest),
        case("a Segment body 100,000 deep", "/v1/batch", format!(r#"{{"batch":{}}}"#, deep(100_000)), 400).code("invalid_json").key(Key::Ingest),
        case("a Segment batch that is not a list", "/v1/batch", event(json!({ "batch": 1 })), 400).code("invalid_batch").key(Key::Ingest),
        // Commands.
        case("inventory.adjust with a NUL SKU", "/v1/commands/inventory.adjust", event(json!({ "sku": "S\u{0}", "delta": 1 })), 400).code("invalid_command"),
        case("inventory.adjust by i64::MAX", "/v1/commands/inventory.adjust", event(json!({ "sku": "S", "delta": i64::MAX })), 400).code("invalid_command"),
        case("order.place whose total overflows", "/v1/commands/order.place", event(json!({ "order_id": "o", "customer_id": "c", "currency": "EUR", "lines": [ { "sku": "S", "quantity": 1_000_000_000, "unit_price": 1_000_000_000_000_000i64 } ] })), 400).code("invalid_command"),
        case("order.place with a NUL customer", "/v1/commands/order.place", event(json!({ "order_id": "o", "customer_id": "c\u{0}", "currency": "EUR", "lines": [ { "sku": "S", "quantity": 1, "unit_price": 1 } ] })), 400).code("invalid_command"),
        case("a command body 100,000 deep", "/v1/commands/order.pay", deep(100_000), 400).code("invalid_json"),
        case("an unknown command", "/v1/commands/rm.rf", event(json!({})), 404).code("unknown_command"),
        // Trigger files.
        case("a TOML array 100,000 deep", "/v1/triggers", format!("x = {}", deep(100_000)), 422).method("PUT").content_type("application/toml"),
        case("a TOML inline table 10,000 deep", "/v1/triggers", format!("x = {}1{}", "{a = ".repeat(10_000), "}".repeat(10_000)), 422).method("PUT").content_type("application/toml"),
        case("a CEL condition 20,000 parentheses deep", "/v1/triggers",
             format!("[[trigger]]\nname = \"deep\"\non = \"cart.item_added\"\nwhen = \"{}true{}\"\nthen = [ {{ emit = \"fraud.suspected\" }} ]\n", "(".repeat(20_000), ")".repeat(20_000)),
             422).code("invalid_triggers").method("PUT").content_type("application/toml"),
        case("a CEL key 20,000 lists deep", "/v1/triggers",
             format!("[[trigger]]\nname = \"deep\"\non = \"cart.item_added\"\nkey = \"{}1{}\"\nthen = [ {{ emit = \"fraud.suspected\" }} ]\n", "[".repeat(20_000), "]".repeat(20_000)),
             422).code("invalid_triggers").method("PUT").content_type("application/toml"),
        case("a command with the public ingest key", "/v1/commands/inventory.adjust", event(json!({ "sku": "S", "set": 0 })), 403).code("forbidden").key(Key::Ingest),
        case("a trigger file that is not UTF-8", "/v1/triggers", vec![0xff, 0xfe, 0x00], 400).method("PUT").content_type("application/toml"),
        // Found by scripts/fuzz-api (schemathesis against openapi.json).
        case("Segment: a body that is not JSON and no key", "/v1/track", "{nope", 401).code("unauthorized").key(Key::None),
        case("catalog data as an array of field values", ev, event(json!({ "type": "order.cancelled", "data": ["o1", null, null, null, null] })), 400).code("invalid_events"),
        case("catalog lines as arrays of field values", ev, event(json!({ "type": "order.placed", "data": { "order_id": "o-arr", "total": { "amount": 1, "currency": "EUR" }, "lines": [["S", 1, null, null, null, null, null, null, null]] } })), 400).code("invalid_events"),
        case("an order.place line as an array", "/v1/commands/order.place", event(json!({ "order_id": "o", "customer_id": "c", "currency": "EUR", "lines": [ ["S", 1, 100, null, null, null] ] })), 400).code("invalid_command"),
        case("order.pay with a negative amount", "/v1/commands/order.pay", event(json!({ "order_id": "o-none", "amount": -5 })), 400).code("invalid_command"),
        case("a redrive body that is an array", "/v1/deliveries/redrive", "[null, null]", 400).code("invalid_body"),
        case("an unmerge body that is an array", "/v1/customers/c/unmerge", r#"["c", null]"#, 400).code("invalid_body"),
        case("an empty trigger file", "/v1/triggers", "", 400).code("empty_body").method("PUT").content_type("application/toml"),
        case("a deliveries page position with NUL", "/v1/deliveries?after=%00", "", 400).code("invalid_query").method("GET"),
        case("a deliveries page position not from a page (raw, not a cursor)", "/v1/deliveries?after=0000%1F0001767225600000", "", 400).code("invalid_query").method("GET"),
        // Reads.
        case("a customer id with NUL", "/v1/customers/a%00b", "", 404).code("customer_not_found").method("GET"),
        case("an SKU with NUL", "/v1/inventory/a%00b", "", 404).code("sku_not_found").method("GET"),
        case("a garbage cursor", "/v1/events?cursor=%00", "", 400).code("invalid_cursor").method("GET"),
        case("a NUL subject filter", "/v1/events?subject=%00", "", 200).method("GET"),
        case("a min_offset beyond the partitions", "/v1/customers/c?min_offset=999:1", "", 400).code("invalid_query").method("GET"),
        case("an unknown query parameter", "/v1/events?nope=1", "", 400).code("invalid_query").method("GET"),
        case("a quarantine page that is not one", "/v1/quarantine?after=x", "", 400).code("invalid_query").method("GET"),
        case("a quarantine position not from a page (raw, not a cursor)", "/v1/quarantine?after=00000000000000000001:0", "", 400).code("invalid_query").method("GET"),
    ]
}

#[tokio::test]
async fn every_bad_input_gets_its_answer_and_nothing_stalls() {
    let (_dir, server, [ingest, read, admin]) = serve(["ingest", "read", "admin"], &[]);
    let client = http();
    let mut failures = Vec::new();
    for c in corpus() {
        let mut rb = client
            .request(
                c.method.parse().unwrap(),
                format!("{}{}", server.url, c.path),
            )
            .header("content-type", c.content_type)
            .body(c.body.clone());
        rb = match c.key {
            Key::None => rb,
            Key::Bogus => rb.bearer_auth("sl_not_a_key"),
            Key::Ingest => rb.bearer_auth(&ingest),
            Key::Read => rb.bearer_auth(&read),
            Key::Admin => rb.bearer_auth(&admin),
        };
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null);
        let code = body["error"]["code"].as_str();
        if status != c.status || c.code.is_some_and(|want| code != Some(want)) {
            failures.push(format!(
                "{}: want {} {:?}, got {status} {body}",
                c.name, c.status, c.code
            ));
        }
        // Every error is our JSON shape with a message that says what to fix.
        if status >= 400 && body["error"]["message"].as_str().is_none_or(str::is_empty) {
            failures.push(format!("{}: error without a message: {body}", c.name));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    body_over_the_limit_is_refused_before_it_is_read(&server.url, &ingest).await;
    still_serving(&server.url, &admin, &read).await;
}

/// A body declared over 16 MiB is answered 413 from its Content-Length, before it is sent
/// (a client library gets a broken pipe writing the rest, so this speaks HTTP by hand).
async fn body_over_the_limit_is_refused_before_it_is_read(url: &str, key: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n[",
        17 << 20
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("an answer before the body is sent")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("payload_too_large"), "{text}");
}

/// The server answers, every partition applies a new event, and commands answer.
async fn still_serving(url: &str, admin: &str, read: &str) {
    let client = http();
    assert_eq!(status_of(url, "/healthz").await, 200);
    let r = client.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let engine = get_body(url, read, "/v1/engine").await;
    let n = engine["partitions"].as_array().unwrap().len() as u32;
    let mut cursor = Vec::new();
    let mut whos = Vec::new();
    for p in 0..n {
        let who = (0..)
            .map(|i| format!("after-{i}"))
            .find(|s| partition_for(s.as_bytes(), n) == p)
            .unwrap();
        let ev = json!({ "type": "page.viewed", "subject": who, "data": { "url": "/" } });
        let r = post_json(url, admin, "/v1/events", &ev).await.body;
        let e = &r["events"][0];
        cursor.push(format!("{}:{}", e["partition"], e["offset"]));
        whos.push(who);
    }
    for who in whos {
        let r = client
            .get(format!(
                "{url}/v1/customers/{who}?min_offset={}",
                cursor.join(",")
            ))
            .bearer_auth(read)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{who}: {}", r.text().await.unwrap());
    }
    let adjust = json!({ "sku": "S-after", "delta": 3 });
    let r = post_json(url, admin, "/v1/commands/inventory.adjust", &adjust).await;
    assert_eq!(r.status, 200, "{}", r.body);
}
