//! The CloudEvents 1.0 envelope as Storeline receives, validates and stores it.
//!
//! Parsing is two steps so that a bad event yields *every* problem with a field path instead of
//! serde's first error: [`Incoming`] accepts any JSON object and records each attribute as found;
//! [`Event::from_incoming`] checks it, fills defaults and validates the catalog payload. `data` is
//! kept as raw JSON text all the way to the log, so it is parsed once (to validate) and never
//! re-serialized.
//!
//! Stored form: the envelope as a JSON object with `received_at` added. `partition` and `offset`
//! are not stored (they are where the record sits in the log) and are spliced in when read.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::catalog;
use crate::error::FieldError;
use crate::ids::EventId;

/// The CloudEvents version Storeline speaks.
pub const SPECVERSION: &str = "1.0";

/// Attributes that Storeline sets when it stores an event; a producer may not send them.
/// `storeline_internal` marks the records Storeline writes itself (see [`crate::limits`]).
pub const RESERVED_ATTRIBUTES: &[&str] = &["partition", "offset", "received_at", INTERNAL];

/// The stored attribute that marks a record Storeline wrote itself.
pub const INTERNAL: &str = "storeline_internal";

const MAX_ID_LEN: usize = 256;
const MAX_SOURCE_LEN: usize = 1024;
const MAX_TYPE_LEN: usize = 128;
const MAX_KEY_LEN: usize = 512;

/// How strictly the envelope is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Storeline's own JSON: only `type` is required; `id` (a new `evt_…`), `source`, `time` and
    /// `specversion` get defaults.
    Plain,
    /// The CloudEvents spec: `specversion`, `id`, `source` and `type` are required.
    CloudEvents,
}

/// What fills the attributes a producer left out.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub source: String,
    pub now: DateTime<Utc>,
}

/// A CloudEvents extension attribute value (the JSON format carries these three kinds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtensionValue {
    String(String),
    Integer(i64),
    Bool(bool),
}

impl Serialize for ExtensionValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ExtensionValue::String(v) => s.serialize_str(v),
            ExtensionValue::Integer(v) => s.serialize_i64(*v),
            ExtensionValue::Bool(v) => s.serialize_bool(*v),
        }
    }
}

/// A JSON value as found in an attribute position, kept loosely so validation can say what was
/// wrong instead of failing the whole parse.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
    /// An array or object, named for the error message.
    Compound(&'static str),
}

impl Scalar {
    fn kind(&self) -> &'static str {
        match self {
            Scalar::Str(_) => "a string",
            Scalar::Int(_) | Scalar::Float(_) => "a number",
            Scalar::Bool(_) => "a boolean",
            Scalar::Null => "null",
            Scalar::Compound(k) => k,
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar::Str(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(i64::try_from(v).map_or(Scalar::Float(v as f64), Scalar::Int))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Compound("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Compound("an object"))
            }
        }
        d.deserialize_any(V)
    }
}

/// An event as it arrived: every attribute optional and loosely typed. Parse it with serde (it
/// accepts any JSON object), then check it with [`Event::from_incoming`].
#[derive(Debug, Default)]
pub struct Incoming {
    pub specversion: Option<Scalar>,
    pub id: Option<Scalar>,
    pub source: Option<Scalar>,
    pub ty: Option<Scalar>,
    pub time: Option<Scalar>,
    pub subject: Option<Scalar>,
    pub partitionkey: Option<Scalar>,
    pub datacontenttype: Option<Scalar>,
    pub dataschema: Option<Scalar>,
    pub data: Option<Box<RawValue>>,
    pub data_base64: Option<Scalar>,
    /// Attributes set by Storeline (`received_at`, `partition`, `offset`) if present.
    pub reserved: Vec<(String, Scalar)>,
    pub extensions: Vec<(String, Scalar)>,
}

impl<'de> Deserialize<'de> for Incoming {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Incoming;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event as a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Incoming, A::Error> {
                let mut ev = Incoming::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let slot = match key.as_ref() {
                        "specversion" => &mut ev.specversion,
                        "id" => &mut ev.id,
                        "source" => &mut ev.source,
                        "type" => &mut ev.ty,
                        "time" => &mut ev.time,
                        "subject" => &mut ev.subject,
                        "partitionkey" => &mut ev.partitionkey,
                        "datacontenttype" => &mut ev.datacontenttype,
                        "dataschema" => &mut ev.dataschema,
                        "data_base64" => &mut ev.data_base64,
                        "data" => {
                            let raw: Box<RawValue> = map.next_value()?;
                            ev.data = (raw.get() != "null").then_some(raw);
                            continue;
                        }
                        other if RESERVED_ATTRIBUTES.contains(&other) => {
                            let v = map.next_value()?;
                            ev.reserved.push((other.to_owned(), v));
                            continue;
                        }
                        other => {
                            let v = map.next_value()?;
                            ev.extensions.push((other.to_owned(), v));
                            continue;
                        }
                    };
                    *slot = Some(map.next_value()?);
                }
                Ok(ev)
            }
        }
        d.deserialize_map(V)
    }
}

/// A validated event, ready to be stored.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub source: String,
    pub ty: String,
    pub time: DateTime<Utc>,
    pub subject: Option<String>,
    pub partitionkey: Option<String>,
    pub datacontenttype: Option<String>,
    pub dataschema: Option<String>,
    /// The payload as JSON text, exactly as received.
    pub data: Option<Box<RawValue>>,
    /// A binary payload (CloudEvents `data_base64`), base64 text.
    pub data_base64: Option<String>,
    pub extensions: Vec<(String, ExtensionValue)>,
    /// Written by Storeline itself (the engine, a command, the API), never by a producer: the
    /// engine honours reserved record types only when this is set. Stored as
    /// `"storeline_internal": true`, which ingest refuses.
    pub internal: bool,
}

impl PartialEq for Event {
    fn eq(&self, o: &Self) -> bool {
        self.id == o.id
            && self.source == o.source
            && self.ty == o.ty
            && self.time == o.time
            && self.subject == o.subject
            && self.partitionkey == o.partitionkey
            && self.datacontenttype == o.datacontenttype
            && self.dataschema == o.dataschema
            && self.data.as_ref().map(|d| d.get()) == o.data.as_ref().map(|d| d.get())
            && self.data_base64 == o.data_base64
            && self.extensions == o.extensions
            && self.internal == o.internal
    }
}

fn string_attr(
    errors: &mut Vec<FieldError>,
    field: &str,
    value: Option<Scalar>,
    max_len: usize,
) -> Option<String> {
    match value? {
        Scalar::Null => None,
        Scalar::Str(s) if s.is_empty() => {
            errors.push(FieldError::new(field, "must not be empty"));
            None
        }
        Scalar::Str(s) if s.len() > max_len => {
            errors.push(FieldError::new(
                field,
                format!("is {} bytes long; the limit is {max_len}", s.len()),
            ));
            None
        }
        Scalar::Str(s) => Some(s),
        other => {
            errors.push(FieldError::new(
                field,
                format!("must be a string, got {}", other.kind()),
            ));
            None
        }
    }
}

/// An attribute that names something (an id, a source, a subject) holds no control character.
fn identifier(errors: &mut Vec<FieldError>, field: &str, value: &Option<String>) {
    if let Some(v) = value
        && let Err(reason) = crate::limits::check_identifier(v)
    {
        errors.push(FieldError::new(field, reason));
    }
}

fn valid_type_name(ty: &str) -> bool {
    let mut chars = ty.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        && !ty.ends_with('.')
        && !ty.contains("..")
}

fn valid_extension_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

fn is_json_content_type(ct: &str) -> bool {
    let base = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    base == "application/json" || base == "text/json" || base.ends_with("+json")
}

impl Event {
    /// Checks an incoming event, fills defaults and validates the catalog payload and the
    /// limits of [`crate::limits`]. Returns every problem found, each with its field path.
    pub fn from_incoming(
        inc: Incoming,
        mode: Mode,
        defaults: &Defaults,
    ) -> Result<Event, Vec<FieldError>> {
        Self::check(inc, mode, defaults, true)
    }

    /// `at_ingest`: check the payload and the limits too (stored events are read back with the
    /// envelope checked only, so that a rule added later never makes an old event unreadable).
    fn check(
        inc: Incoming,
        mode: Mode,
        defaults: &Defaults,
        at_ingest: bool,
    ) -> Result<Event, Vec<FieldError>> {
        let mut errors = Vec::new();
        let strict = mode == Mode::CloudEvents;

        match string_attr(&mut errors, "specversion", inc.specversion, 16) {
            Some(v) if v != SPECVERSION => errors.push(FieldError::new(
                "specversion",
                format!("unsupported CloudEvents version '{v}': Storeline speaks '{SPECVERSION}'"),
            )),
            None if strict => errors.push(FieldError::new(
                "specversion",
                "is required (CloudEvents: \"1.0\")",
            )),
            _ => {}
        }
        let id = string_attr(&mut errors, "id", inc.id, MAX_ID_LEN);
        if id.is_none() && strict {
            errors.push(FieldError::new("id", "is required"));
        }
        let source = string_attr(&mut errors, "source", inc.source, MAX_SOURCE_LEN);
        if source.is_none() && strict {
            errors.push(FieldError::new("source", "is required"));
        }
        let ty = string_attr(&mut errors, "type", inc.ty, MAX_TYPE_LEN);
        match &ty {
            None if !errors.iter().any(|e| e.field == "type") => errors.push(FieldError::new(
                "type",
                "is required, e.g. \"order.placed\"",
            )),
            Some(t) if !valid_type_name(t) => errors.push(FieldError::new(
                "type",
                format!(
                    "'{t}' is not a valid type: use lowercase dotted names such as \
                     'order.placed' (a-z, 0-9, '.', '_', '-')"
                ),
            )),
            _ => {}
        }
        let time = match string_attr(&mut errors, "time", inc.time, 64) {
            None => defaults.now,
            Some(t) => {
                match DateTime::parse_from_rfc3339(&t) {
                    Ok(t) => t.with_timezone(&Utc),
                    Err(e) => {
                        errors.push(FieldError::new(
                        "time",
                        format!("'{t}' is not an RFC 3339 timestamp ({e}), e.g. 2026-11-21T10:00:00Z"),
                    ));
                        defaults.now
                    }
                }
            }
        };
        let subject = string_attr(&mut errors, "subject", inc.subject, MAX_KEY_LEN);
        let partitionkey = string_attr(&mut errors, "partitionkey", inc.partitionkey, MAX_KEY_LEN);
        let datacontenttype = string_attr(&mut errors, "datacontenttype", inc.datacontenttype, 256);
        let dataschema = string_attr(&mut errors, "dataschema", inc.dataschema, 1024);
        let data_base64 = string_attr(&mut errors, "data_base64", inc.data_base64, usize::MAX);
        if inc.data.is_some() && data_base64.is_some() {
            errors.push(FieldError::new(
                "data_base64",
                "cannot be sent together with data",
            ));
        }
        if let (Some(ct), Some(_)) = (&datacontenttype, &inc.data)
            && !is_json_content_type(ct)
        {
            errors.push(FieldError::new(
                "datacontenttype",
                format!("is '{ct}' but data is JSON; send non-JSON payloads as data_base64"),
            ));
        }
        for (name, _) in &inc.reserved {
            errors.push(FieldError::new(
                name.as_str(),
                "is set by Storeline when the event is stored; remove it",
            ));
        }
        let mut extensions = Vec::with_capacity(inc.extensions.len());
        for (name, value) in inc.extensions {
            if !valid_extension_name(&name) {
                errors.push(FieldError::new(
                    name.as_str(),
                    "unknown attribute: CloudEvents extension names are lowercase letters and \
                     digits only (put custom fields inside data)",
                ));
                continue;
            }
            match value {
                Scalar::Null => {}
                Scalar::Str(s) => extensions.push((name, ExtensionValue::String(s))),
                Scalar::Int(i) => extensions.push((name, ExtensionValue::Integer(i))),
                Scalar::Bool(b) => extensions.push((name, ExtensionValue::Bool(b))),
                other => errors.push(FieldError::new(
                    name.as_str(),
                    format!(
                        "extension attribute must be a string, integer or boolean, got {}",
                        other.kind()
                    ),
                )),
            }
        }
        if at_ingest {
            for (field, value) in [
                ("id", &id),
                ("source", &source),
                ("subject", &subject),
                ("partitionkey", &partitionkey),
                ("datacontenttype", &datacontenttype),
                ("dataschema", &dataschema),
            ] {
                identifier(&mut errors, field, value);
            }
            for (name, value) in &extensions {
                if let ExtensionValue::String(s) = value
                    && let Err(reason) = crate::limits::check_identifier(s)
                {
                    errors.push(FieldError::new(name.as_str(), reason));
                }
            }
            if let Some(b) = &data_base64
                && let Err(reason) = crate::limits::check_text(b)
            {
                errors.push(FieldError::new("data_base64", reason));
            }
            if let Some(d) = &inc.data
                && let Err(reason) = crate::limits::scan_json(d.get())
            {
                errors.push(FieldError::new("data", reason));
            }
        }
        if let Some(ty) = &ty
            && at_ingest
            && catalog::is_catalog_type(ty)
            && !errors.iter().any(|e| e.field == "data")
        {
            if data_base64.is_some() {
                errors.push(FieldError::new(
                    "data_base64",
                    format!("'{ty}' is a catalog type; its data must be JSON"),
                ));
            } else if let Err(mut e) = catalog::validate_data(ty, inc.data.as_deref()) {
                errors.append(&mut e);
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let data = inc.data.map(compact);
        Ok(Event {
            id: id.unwrap_or_else(|| EventId::generate().into_string()),
            source: source.unwrap_or_else(|| defaults.source.clone()),
            ty: ty.unwrap_or_default(),
            time,
            subject,
            partitionkey,
            datacontenttype,
            dataschema,
            data,
            data_base64,
            extensions,
            internal: false,
        })
    }

    /// The key that picks the partition: `partitionkey`, else `subject`, else `id`.
    pub fn partition_key(&self) -> &str {
        self.partitionkey
            .as_deref()
            .or(self.subject.as_deref())
            .unwrap_or(&self.id)
    }

    /// The key the event is routed by: [`COMMERCE_KEY`](crate::COMMERCE_KEY) for stock and
    /// order events (one writer owns stock), else [`partition_key`](Self::partition_key).
    pub fn route_key(&self) -> &str {
        if crate::is_commerce_type(&self.ty) {
            crate::COMMERCE_KEY
        } else {
            self.partition_key()
        }
    }

    /// The stored form: the envelope plus `received_at`, as compact JSON.
    pub fn to_stored_json(&self, received_at: DateTime<Utc>) -> Vec<u8> {
        self.to_stored_json_at(&format_time(&received_at))
    }

    /// [`to_stored_json`](Self::to_stored_json) with `received_at` already formatted by
    /// [`format_time`] (one format per request instead of one per event).
    pub fn to_stored_json_at(&self, received_at: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.data.as_ref().map_or(0, |d| d.get().len()));
        // Serializing plain strings into a Vec cannot fail.
        let _ = serde_json::to_writer(
            &mut out,
            &Stored {
                event: self,
                received_at,
            },
        );
        out
    }

    /// Reads the stored form back: the event and its `received_at`.
    pub fn from_stored_json(bytes: &[u8]) -> Result<(Event, DateTime<Utc>), String> {
        let inc: Incoming = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let internal = inc
            .reserved
            .iter()
            .any(|(k, v)| k == INTERNAL && *v == Scalar::Bool(true));
        let received_at = inc
            .reserved
            .iter()
            .find(|(k, _)| k == "received_at")
            .and_then(|(_, v)| match v {
                Scalar::Str(s) => DateTime::parse_from_rfc3339(s).ok(),
                _ => None,
            })
            .ok_or("stored event has no valid received_at")?
            .with_timezone(&Utc);
        let inc = Incoming {
            reserved: Vec::new(),
            ..inc
        };
        // Stored events were valid when stored; re-validating the payload here would make an
        // old event unreadable after a catalog change, so only the envelope is checked.
        let defaults = Defaults {
            source: String::new(),
            now: received_at,
        };
        let mut ev = Event::check(inc, Mode::Plain, &defaults, false)
            .map_err(|e| format!("stored event has an invalid envelope: {}", e[0]))?;
        ev.internal = internal;
        Ok((ev, received_at))
    }
}

/// Removes the whitespace outside strings from JSON that has line breaks, so that every stored
/// event is one line (NDJSON exports, `storeline tail`). Values are kept exactly as sent (no
/// re-parse into numbers); already compact payloads pay only a scan for a line break.
fn compact(raw: Box<RawValue>) -> Box<RawValue> {
    let text = raw.get();
    if !text.contains(['\n', '\r']) {
        return raw;
    }
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() {
            out.push(c);
        }
    }
    RawValue::from_string(out).unwrap_or(raw)
}

/// Splices `"partition":P,"offset":O,` into a stored event's JSON, giving the API form without a
/// parse and re-serialize. The stored form is always a JSON object written by Storeline.
pub fn splice_position(stored: &[u8], partition: u32, offset: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(stored.len() + 40);
    out.extend_from_slice(format!("{{\"partition\":{partition},\"offset\":{offset},").as_bytes());
    out.extend_from_slice(stored.get(1..).unwrap_or_default());
    out
}

struct Stored<'a> {
    event: &'a Event,
    received_at: &'a str,
}

/// The one timestamp format Storeline writes: RFC 3339, UTC, `Z`, only the fraction digits needed.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

impl Serialize for Stored<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.event;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("specversion", SPECVERSION)?;
        m.serialize_entry("id", &e.id)?;
        m.serialize_entry("source", &e.source)?;
        m.serialize_entry("type", &e.ty)?;
        m.serialize_entry("time", &format_time(&e.time))?;
        if let Some(v) = &e.subject {
            m.serialize_entry("subject", v)?;
        }
        if let Some(v) = &e.partitionkey {
            m.serialize_entry("partitionkey", v)?;
        }
        if let Some(v) = &e.datacontenttype {
            m.serialize_entry("datacontenttype", v)?;
        }
        if let Some(v) = &e.dataschema {
            m.serialize_entry("dataschema", v)?;
        }
        for (k, v) in &e.extensions {
            m.serialize_entry(k, v)?;
        }
        if e.internal {
            m.serialize_entry(INTERNAL, &true)?;
        }
        m.serialize_entry("received_at", self.received_at)?;
        if let Some(v) = &e.data {
            m.serialize_entry("data", v)?;
        }
        if let Some(v) = &e.data_base64 {
            m.serialize_entry("data_base64", v)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_printed_data_is_stored_on_one_line_with_its_strings_intact() {
        let body = "{\"type\":\"x.y\",\"data\":{\n  \"a\": [1, 2.50, 1e3],\n  \"s\": \"two  spaces \\\" q\\n\"\n}}";
        let inc: Incoming = serde_json::from_str(body).unwrap();
        let defaults = Defaults {
            source: "s".into(),
            now: Utc::now(),
        };
        let ev = Event::from_incoming(inc, Mode::Plain, &defaults).unwrap();
        assert_eq!(
            ev.data.as_ref().unwrap().get(),
            r#"{"a":[1,2.50,1e3],"s":"two  spaces \" q\n"}"#
        );
        assert!(!ev.to_stored_json(Utc::now()).contains(&b'\n'));
    }

    fn check(body: &str) -> Result<Event, Vec<FieldError>> {
        let inc: Incoming = serde_json::from_str(body).unwrap();
        let defaults = Defaults {
            source: "s".into(),
            now: Utc::now(),
        };
        Event::from_incoming(inc, Mode::Plain, &defaults)
    }

    fn fields(body: &str) -> Vec<String> {
        check(body)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn control_characters_deep_data_and_huge_numbers_are_refused_with_their_field() {
        assert_eq!(
            fields(r#"{"type":"x.y","subject":"cus\u00001"}"#),
            ["subject"]
        );
        assert_eq!(fields(r#"{"type":"x.y","id":"a\tb"}"#), ["id"]);
        assert_eq!(fields(r#"{"type":"x.y","source":"s\n"}"#), ["source"]);
        assert_eq!(fields(r#"{"type":"x.y","shop":"a\u0000"}"#), ["shop"]);
        assert_eq!(
            fields(r#"{"type":"x.y","data":{"note":"bell\u0007"}}"#),
            ["data"]
        );
        assert_eq!(
            fields(
                r#"{"type":"order.placed","data":{"order_id":"o\u0000","total":{"amount":1,"currency":"EUR"},"lines":[{"sku":"S","quantity":1}]}}"#
            ),
            ["data"]
        );
        assert_eq!(
            fields(r#"{"type":"order.paid","data":{"order_id":"o\t1"}}"#),
            ["data.order_id"]
        );
        assert_eq!(
            fields(r#"{"type":"customer.identified","data":{"email":"a\u0001@b.c"}}"#),
            ["data"]
        );
        let deep = format!(
            r#"{{"type":"x.y","data":{}1{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let inc: Result<Incoming, _> = serde_json::from_str(&deep);
        // serde either refuses it itself or the depth check does; either way nothing is stored.
        if let Ok(inc) = inc {
            let defaults = Defaults {
                source: "s".into(),
                now: Utc::now(),
            };
            let errors = Event::from_incoming(inc, Mode::Plain, &defaults).unwrap_err();
            assert_eq!(errors[0].field, "data");
            assert!(errors[0].reason.contains("nested"), "{errors:?}");
        }
        assert_eq!(
            fields(
                r#"{"type":"order.placed","data":{"order_id":"o","total":{"amount":9223372036854775807,"currency":"EUR"},"lines":[{"sku":"S","quantity":1}]}}"#
            ),
            ["data.total"]
        );
        assert_eq!(
            fields(
                r#"{"type":"inventory.adjusted","data":{"sku":"S","delta":9223372036854775807}}"#
            ),
            ["data.delta"]
        );
        // Free text keeps its tabs and line breaks.
        check(r#"{"type":"x.y","data":{"note":"a\tb\r\nc"}}"#).unwrap();
    }

    #[test]
    fn the_internal_mark_is_stored_and_read_back_but_never_accepted_from_a_producer() {
        let mut ev = check(r#"{"type":"storeline.tick"}"#).unwrap();
        assert!(!ev.internal);
        ev.internal = true;
        let stored = ev.to_stored_json(Utc::now());
        let (back, _) = Event::from_stored_json(&stored).unwrap();
        assert!(back.internal);
        assert_eq!(
            fields(r#"{"type":"storeline.tick","storeline_internal":true}"#),
            ["storeline_internal"]
        );
        assert_eq!(crate::limits::reserved_fields(&ev)[0].field, "type");
    }
}
