//! Checking and compiling a trigger file into a [`TriggerSet`]: every problem is collected with
//! where it is (key path and line), CEL is compiled, durations and local times are parsed. No I/O.

mod lines;
mod warnings;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::cel::Expr;
use super::def::*;

impl TriggerSet {
    /// An empty set (no triggers).
    pub fn empty() -> TriggerSet {
        TriggerSet::default()
    }

    /// Checks and compiles a trigger file; every problem is returned.
    pub fn parse(source: &str) -> Result<TriggerSet, Vec<Problem>> {
        let file: File = match toml::from_str(source) {
            Ok(f) => f,
            Err(e) => {
                let at = match e.span() {
                    Some(span) => {
                        let line = source[..span.start.min(source.len())]
                            .lines()
                            .count()
                            .max(1);
                        format!("line {line}")
                    }
                    None => "file".into(),
                };
                return Err(vec![Problem {
                    at,
                    message: e.message().to_owned(),
                }]);
            }
        };
        let mut set = TriggerSet::compile(&file).map_err(|mut problems| {
            lines::add(source, &mut problems);
            problems
        })?;
        lines::add(source, &mut set.warnings);
        set.source = source.to_owned();
        set.version = crate::hash_hex(source.as_bytes())[..12].to_owned();
        Ok(set)
    }

    /// Compiles parsed definitions (the source is left empty); what compiles but is probably
    /// not meant is in [`TriggerSet::warnings`].
    pub fn compile(file: &File) -> Result<TriggerSet, Vec<Problem>> {
        let mut p = Problems::default();
        let mut channels = HashMap::new();
        for (i, c) in file.connector.iter().enumerate() {
            let at = format!("connector[{i}]");
            let Some(name) = c.get("name").and_then(|v| v.as_str()) else {
                p.add(&at, "a connector needs a `name`");
                continue;
            };
            let kind = c.get("type").and_then(|v| v.as_str()).unwrap_or("");
            let channel = c
                .get("channel")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| channel_of_kind(kind, name));
            if channels.insert(name.to_owned(), channel).is_some() {
                p.add(&at, format!("connector '{name}' is defined twice"));
            }
        }
        let arbitration = compile_arbitration(&file.arbitration, &mut p);
        let mut aggregates = Vec::new();
        let mut agg_names = BTreeMap::new();
        for (i, a) in file.aggregate.iter().enumerate() {
            let at = format!("aggregate[{i}] \"{}\"", a.name);
            if !valid_name(&a.name) {
                p.add(
                    &format!("{at}.name"),
                    "use letters, digits and `_` (it is a CEL field name: agg.<name>)",
                );
            }
            if agg_names.insert(a.name.clone(), ()).is_some() {
                p.add(&format!("{at}.name"), "defined twice");
            }
            let func = match a.func.as_str() {
                "count" => AggFn::Count,
                "sum" => AggFn::Sum,
                "distinct" => AggFn::Distinct,
                other => {
                    p.add(
                        &format!("{at}.fn"),
                        format!("'{other}' is not count, sum or distinct"),
                    );
                    AggFn::Count
                }
            };
            if func != AggFn::Count && a.value.is_none() {
                p.add(
                    &format!("{at}.value"),
                    format!("fn = \"{}\" needs a `value` expression", a.func),
                );
            }
            let key = p.expr(&format!("{at}.key"), &a.key);
            let value = a
                .value
                .as_ref()
                .and_then(|v| p.expr(&format!("{at}.value"), v));
            let when = a
                .when
                .as_ref()
                .and_then(|v| p.expr(&format!("{at}.when"), v));
            let window_ms = p.duration(&format!("{at}.window"), &a.window);
            let on = p.types(&format!("{at}.on"), &a.on);
            if let (Some(key), Some(window_ms)) = (key, window_ms) {
                aggregates.push(Aggregate {
                    name: a.name.clone(),
                    on,
                    key,
                    window_ms,
                    func,
                    value,
                    when,
                });
            }
        }
        let mut triggers = Vec::new();
        let mut names = BTreeMap::new();
        for (i, t) in file.trigger.iter().enumerate() {
            let at = format!("trigger[{i}] \"{}\"", t.name);
            if t.name.is_empty() || t.name.contains(['\u{1f}', '@', '/']) {
                p.add(
                    &format!("{at}.name"),
                    "a trigger needs a name without `@`, `/` or control characters",
                );
            }
            if names.insert(t.name.clone(), ()).is_some() {
                p.add(&format!("{at}.name"), "defined twice");
            }
            if let Some(trigger) = compile_trigger(t, &at, &channels, &mut p) {
                triggers.push(Arc::new(trigger));
            }
        }
        if !p.list.is_empty() {
            return Err(p.list);
        }
        // The machine starts an event's triggers in this order, and an immediate message takes
        // a cap's free place when it is sent: so the higher `priority` goes first, as it does
        // among held messages released together; equal priorities keep the file's order (a
        // stable sort).
        triggers.sort_by_key(|t| std::cmp::Reverse(t.priority));
        Ok(TriggerSet {
            version: String::new(),
            source: String::new(),
            triggers,
            aggregates,
            arbitration,
            channels,
            connectors: file.connector.clone(),
            warnings: warnings::of(file),
        })
    }

    pub fn trigger(&self, name: &str) -> Option<&Arc<Trigger>> {
        self.triggers.iter().find(|t| t.name == name)
    }
}

/// The channel of a connector kind: who is messaged, and so which consent applies.
fn channel_of_kind(kind: &str, name: &str) -> String {
    match kind {
        "smtp" => "email".into(),
        "sms" => "sms".into(),
        "webhook" | "kafka" | "log" => kind.into(),
        _ => name.into(),
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

fn compile_arbitration(a: &ArbitrationDef, p: &mut Problems) -> Arbitration {
    let mut out = Arbitration::default();
    if let Some(tz) = &a.timezone {
        match tz.parse::<chrono_tz::Tz>() {
            Ok(tz) => out.timezone = tz,
            Err(_) => p.add(
                "arbitration.timezone",
                format!("'{tz}' is not an IANA time zone (e.g. Europe/Berlin)"),
            ),
        }
    }
    if let Some(q) = &a.quiet_hours {
        let from = p.time_of_day("arbitration.quiet_hours.from", &q.from);
        let to = p.time_of_day("arbitration.quiet_hours.to", &q.to);
        if let (Some(f), Some(t)) = (from, to) {
            if f == t {
                p.add("arbitration.quiet_hours", "`from` and `to` are equal");
            }
            out.quiet = Some((f.0 * 60 + f.1, t.0 * 60 + t.1));
        }
    }
    for (i, c) in a.cap.iter().enumerate() {
        let at = format!("arbitration.cap[{i}]");
        if c.max == 0 {
            p.add(
                &format!("{at}.max"),
                "must be at least 1 (to stop a channel, withdraw consent)",
            );
        }
        if let Some(w) = p.duration(&format!("{at}.window"), &c.window) {
            out.caps.push(Cap {
                channel: c.channel.clone(),
                max: c.max,
                window_ms: w,
            });
        }
    }
    out
}

fn compile_trigger(
    t: &TriggerDef,
    at: &str,
    channels: &HashMap<String, String>,
    p: &mut Problems,
) -> Option<Trigger> {
    let before = p.list.len();
    let on = p.types(&format!("{at}.on"), &t.on);
    let when = t
        .when
        .as_ref()
        .and_then(|w| p.expr(&format!("{at}.when"), w));
    let key = t.key.as_ref().and_then(|w| p.expr(&format!("{at}.key"), w));
    let debounce_ms = t
        .debounce
        .as_ref()
        .and_then(|d| p.duration(&format!("{at}.debounce"), d));
    let mode = |p: &mut Problems, field: &str, v: &Option<String>| match v.as_deref() {
        None | Some("defer") => false,
        Some("drop") => true,
        Some(other) => {
            p.add(
                &format!("{at}.{field}"),
                format!("'{other}' is not defer or drop"),
            );
            false
        }
    };
    let drop_capped = mode(p, "on_cap", &t.on_cap);
    let drop_quiet = mode(p, "on_quiet_hours", &t.on_quiet_hours);
    let mut cancel_on = Vec::new();
    for (i, c) in t.cancel_on.iter().enumerate() {
        let (ty, m) = match c {
            CancelDef::Type(ty) => (ty.clone(), None),
            CancelDef::Full { event, matching } => (event.clone(), matching.clone()),
        };
        let cat = format!("{at}.cancel_on[{i}]");
        p.check_type(&cat, &ty);
        if let Some(matching) = p.matching(&cat, m.as_deref()) {
            cancel_on.push(Cancel { ty, matching });
        }
    }
    let shorthand = t.then.is_some()
        || t.delay.is_some()
        || t.delay_until.is_some()
        || t.wait.is_some()
        || t.on_event.is_some()
        || t.on_timeout.is_some();
    let defs: Vec<StepDef> = match (&t.steps, shorthand) {
        (Some(_), true) => {
            p.add(at, "use either `steps` or the shorthand keys (then, delay, delay_until, wait, on_event, on_timeout), not both");
            Vec::new()
        }
        (Some(s), false) => s.clone(),
        (None, _) => {
            // The shorthand reads as "after the delay, do `then`, then wait".
            let mut s = Vec::new();
            if let Some(d) = &t.delay {
                s.push(step(|x| x.delay = Some(d.clone())));
            }
            if let Some(d) = &t.delay_until {
                s.push(step(|x| x.delay_until = Some(d.clone())));
            }
            if let Some(then) = &t.then {
                s.push(step(|d| d.then = Some(then.clone())));
            }
            if t.wait.is_some() || t.on_event.is_some() || t.on_timeout.is_some() {
                s.push(step(|x| {
                    x.wait = t.wait.clone();
                    x.on_event = t.on_event.clone();
                    x.on_timeout = t.on_timeout.clone();
                }));
            }
            s
        }
    };
    if defs.is_empty() && p.list.len() == before {
        p.add(
            at,
            "a trigger needs something to do: `then`, `wait` or `steps`",
        );
    }
    let mut steps = Vec::new();
    for (i, s) in defs.iter().enumerate() {
        let sat = if t.steps.is_some() {
            format!("{at}.steps[{i}]")
        } else {
            at.to_owned()
        };
        if let Some(step) = compile_step(s, &sat, channels, p) {
            steps.push(step);
        }
    }
    if p.list.len() > before {
        return None;
    }
    let version =
        crate::hash_hex(serde_json::to_string(t).unwrap_or_default().as_bytes())[..8].to_owned();
    Some(Trigger {
        name: t.name.clone(),
        version,
        def: t.clone(),
        on,
        when,
        key,
        once: t.once,
        priority: t.priority,
        transactional: t.transactional,
        drop_capped,
        drop_quiet,
        debounce_ms,
        cancel_on,
        steps,
    })
}

fn step(f: impl FnOnce(&mut StepDef)) -> StepDef {
    let mut d = StepDef {
        then: None,
        delay: None,
        delay_until: None,
        wait: None,
        on_event: None,
        on_timeout: None,
        continue_on: None,
    };
    f(&mut d);
    d
}

fn compile_step(
    s: &StepDef,
    at: &str,
    channels: &HashMap<String, String>,
    p: &mut Problems,
) -> Option<Step> {
    let kinds = [
        s.then.is_some(),
        s.delay.is_some(),
        s.delay_until.is_some(),
        s.wait.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if kinds != 1 {
        p.add(
            at,
            "a step is exactly one of `then`, `delay`, `delay_until` or `wait`",
        );
        return None;
    }
    if s.wait.is_none()
        && (s.on_event.is_some() || s.on_timeout.is_some() || s.continue_on.is_some())
    {
        p.add(
            at,
            "`on_event`, `on_timeout` and `continue` belong to a `wait`",
        );
    }
    if let Some(then) = &s.then {
        return Some(Step::Then(actions(
            then,
            &format!("{at}.then"),
            channels,
            p,
        )));
    }
    if let Some(d) = &s.delay {
        return p.duration(&format!("{at}.delay"), d).map(Step::Delay);
    }
    if let Some(d) = &s.delay_until {
        return p
            .time_of_day(&format!("{at}.delay_until"), d)
            .map(|(h, m)| Step::DelayUntil(h, m));
    }
    let w = s.wait.as_ref()?;
    let types = p.types(&format!("{at}.wait.for"), &w.event);
    let within = p.duration(&format!("{at}.wait.within"), &w.within);
    let matching = p.matching(&format!("{at}.wait"), w.matching.as_deref());
    let go_on = match s.continue_on.as_deref() {
        None | Some("timeout") => Continue::Timeout,
        Some("event") => Continue::Event,
        Some("both") => Continue::Both,
        Some(other) => {
            p.add(
                &format!("{at}.continue"),
                format!("'{other}' is not timeout, event or both"),
            );
            Continue::Timeout
        }
    };
    let on_event = actions(
        s.on_event.as_deref().unwrap_or(&[]),
        &format!("{at}.on_event"),
        channels,
        p,
    );
    let on_timeout = actions(
        s.on_timeout.as_deref().unwrap_or(&[]),
        &format!("{at}.on_timeout"),
        channels,
        p,
    );
    Some(Step::Wait {
        wait: Box::new(Wait {
            types,
            within_ms: within?,
            matching: matching?,
        }),
        on_event,
        on_timeout,
        go_on,
    })
}

fn actions(
    defs: &[ActionDef],
    at: &str,
    channels: &HashMap<String, String>,
    p: &mut Problems,
) -> Vec<Action> {
    let mut out = Vec::new();
    for (i, a) in defs.iter().enumerate() {
        let at = format!("{at}[{i}]");
        let kinds = [a.deliver.is_some(), a.emit.is_some(), a.set_trait.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if kinds != 1 {
            p.add(
                &at,
                "an action is exactly one of `deliver`, `emit` or `set_trait`",
            );
            continue;
        }
        let mut data = Vec::new();
        for (k, v) in &a.data {
            if let Some(e) = p.expr(&format!("{at}.data.{k}"), v) {
                data.push((k.clone(), e));
            }
        }
        if let Some(c) = &a.deliver {
            if !channels.is_empty() && !channels.contains_key(c) {
                let known: Vec<&String> = channels.keys().collect();
                p.add(
                    &format!("{at}.deliver"),
                    format!("no connector named '{c}' (defined: {known:?})"),
                );
            }
            let channel = a
                .channel
                .clone()
                .or_else(|| channels.get(c).cloned())
                .unwrap_or_else(|| c.clone());
            out.push(Action::Deliver {
                connector: c.clone(),
                channel,
                template: a.template.clone(),
                data,
            });
        } else if let Some(ty) = &a.emit {
            p.check_type(&format!("{at}.emit"), ty);
            out.push(Action::Emit {
                ty: ty.clone(),
                data,
            });
        } else if let Some(name) = &a.set_trait {
            match a
                .value
                .as_ref()
                .and_then(|v| p.expr(&format!("{at}.value"), v))
            {
                Some(value) => out.push(Action::SetTrait {
                    name: name.clone(),
                    value,
                }),
                None if a.value.is_none() => {
                    p.add(&format!("{at}.value"), "set_trait needs a `value` (CEL)")
                }
                None => {}
            }
        }
    }
    out
}

/// Collects problems while compiling.
#[derive(Default)]
struct Problems {
    list: Vec<Problem>,
}

impl Problems {
    fn add(&mut self, at: &str, message: impl Into<String>) {
        self.list.push(Problem {
            at: at.to_owned(),
            message: message.into(),
        });
    }

    fn expr(&mut self, at: &str, source: &str) -> Option<Expr> {
        match Expr::compile(source) {
            Ok(e) => Some(e),
            Err(m) => {
                self.add(at, m);
                None
            }
        }
    }

    fn duration(&mut self, at: &str, s: &str) -> Option<i64> {
        match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => Some(d.as_millis() as i64),
            Ok(_) => {
                self.add(at, "must be longer than 0");
                None
            }
            Err(e) => {
                self.add(
                    at,
                    format!("'{s}' is not a duration like \"15m\" or \"24h\": {e}"),
                );
                None
            }
        }
    }

    fn time_of_day(&mut self, at: &str, s: &str) -> Option<(u32, u32)> {
        let parsed = s.split_once(':').and_then(|(h, m)| {
            let (h, m) = (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?);
            (h < 24 && m < 60).then_some((h, m))
        });
        if parsed.is_none() {
            self.add(at, format!("'{s}' is not a local time like \"09:00\""));
        }
        parsed
    }

    fn check_type(&mut self, at: &str, ty: &str) {
        let ok = !ty.is_empty()
            && ty
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_')
            && !ty.starts_with('.')
            && !ty.ends_with('.');
        if !ok {
            self.add(
                at,
                format!("'{ty}' is not an event type (lowercase dotted, like order.placed)"),
            );
        }
    }

    fn types(&mut self, at: &str, on: &OneOrMany) -> Vec<String> {
        let list = on.list();
        if list.is_empty() {
            self.add(at, "name at least one event type");
        }
        for t in &list {
            self.check_type(at, t);
        }
        list
    }

    fn matching(&mut self, at: &str, m: Option<&str>) -> Option<Match> {
        match m {
            None | Some("same_customer") => Some(Match::SameCustomer),
            Some("same_order") => Some(Match::SameOrder),
            Some(cel) => self.expr(&format!("{at}.match"), cel).map(Match::Cel),
        }
    }
}
