//! Warnings: what a trigger file allows but probably does not mean. The file still installs;
//! `storeline triggers check` and `PUT /v1/triggers` show them so the author can say what they
//! meant. Pure: the parsed file in, problems (with key paths) out.

use crate::triggers::Problem;
use crate::triggers::def::{ActionDef, File, StepDef, TriggerDef};

/// Connector types whose deliveries skip consent, caps and quiet hours unless a `channel` says
/// who they reach: their default channel is the type itself, never a customer channel.
const UNCHANNELLED: [&str; 2] = ["webhook", "log"];

/// Every warning of `file`, in file order.
pub(super) fn of(file: &File) -> Vec<Problem> {
    let mut out = Vec::new();
    for (i, t) in file.trigger.iter().enumerate() {
        let at = format!("trigger[{i}] \"{}\"", t.name);
        unchannelled_deliveries(file, t, &at, &mut out);
    }
    out
}

/// A trigger whose runs have a customer delivering through a webhook or log connector with no
/// `channel` on the action or the connector: the message reaches the customer (a push or
/// WhatsApp gateway behind a webhook) without consent, caps or quiet hours. Transactional
/// triggers skip those anyway, and `inventory.*` events have no customer.
fn unchannelled_deliveries(file: &File, t: &TriggerDef, at: &str, out: &mut Vec<Problem>) {
    if t.transactional || t.on.list().iter().all(|ty| ty.starts_with("inventory.")) {
        return;
    }
    for (path, a) in action_defs(t, at) {
        let Some(name) = &a.deliver else { continue };
        if a.channel.is_some() {
            continue;
        }
        let Some(c) = file
            .connector
            .iter()
            .find(|c| c.get("name").and_then(|v| v.as_str()) == Some(name.as_str()))
        else {
            continue;
        };
        let kind = c.get("type").and_then(|v| v.as_str()).unwrap_or("");
        if !UNCHANNELLED.contains(&kind) || c.contains_key("channel") {
            continue;
        }
        out.push(Problem {
            at: format!("{path}.deliver"),
            message: format!(
                "delivers for a customer through connector '{name}' (type {kind}) without a \
                 `channel`, so it skips consent, caps and quiet hours; if it reaches the \
                 customer, set the channel it reaches (`channel = \"push\"`) on the action or \
                 the connector, else `channel = \"{kind}\"` to say it does not"
            ),
        });
    }
}

/// Each action of a trigger with its key path, as `compile` names them.
fn action_defs<'a>(t: &'a TriggerDef, at: &str) -> Vec<(String, &'a ActionDef)> {
    let mut out = Vec::new();
    let mut add = |prefix: String, list: &'a Option<Vec<ActionDef>>| {
        for (j, a) in list.iter().flatten().enumerate() {
            out.push((format!("{prefix}[{j}]"), a));
        }
    };
    match &t.steps {
        Some(steps) => {
            for (k, s) in steps.iter().enumerate() {
                let StepDef {
                    then,
                    on_event,
                    on_timeout,
                    ..
                } = s;
                add(format!("{at}.steps[{k}].then"), then);
                add(format!("{at}.steps[{k}].on_event"), on_event);
                add(format!("{at}.steps[{k}].on_timeout"), on_timeout);
            }
        }
        None => {
            add(format!("{at}.then"), &t.then);
            add(format!("{at}.on_event"), &t.on_event);
            add(format!("{at}.on_timeout"), &t.on_timeout);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::triggers::TriggerSet;

    const CONNECTORS: &str = r#"
[[connector]]
name = "push"
type = "webhook"
url = "https://push.example.com/send"

[[connector]]
name = "audit"
type = "log"

[[connector]]
name = "fraud"
type = "webhook"
url = "https://fraud.example.com/hook"
channel = "webhook"

[[connector]]
name = "email"
type = "smtp"
"#;

    fn warnings(triggers: &str) -> Vec<String> {
        let set = TriggerSet::parse(&format!("{CONNECTORS}\n{triggers}"))
            .unwrap_or_else(|p| panic!("the file compiles: {p:?}"));
        set.warnings.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_customer_delivery_through_a_webhook_or_log_without_a_channel_warns() {
        let w = warnings(
            r#"
[[trigger]]
name = "cart-push"
on = "cart.item_added"
then = [ { deliver = "email" }, { deliver = "push" } ]

[[trigger]]
name = "later"
on = "checkout.started"
steps = [ { delay = "1h" }, { wait = { for = "order.placed", within = "1h" }, on_timeout = [ { deliver = "audit" } ] } ]
"#,
        );
        assert_eq!(w.len(), 2, "{w:#?}");
        assert!(
            w[0].starts_with("trigger[0] \"cart-push\".then[1].deliver (line "),
            "{w:#?}"
        );
        assert!(
            w[0].contains("connector 'push' (type webhook) without a `channel`"),
            "{w:#?}"
        );
        assert!(
            w[1].starts_with("trigger[1] \"later\".steps[1].on_timeout[0].deliver"),
            "{w:#?}"
        );
        assert!(w[1].contains("(type log)"), "{w:#?}");
    }

    #[test]
    fn a_channel_a_transactional_trigger_or_an_event_without_a_customer_does_not_warn() {
        let w = warnings(
            r#"
[[trigger]]
name = "on-the-action"
on = "cart.item_added"
then = [ { deliver = "push", channel = "push" } ]

[[trigger]]
name = "on-the-connector"
on = "payment.failed"
then = [ { deliver = "fraud" } ]

[[trigger]]
name = "receipt"
on = "order.placed"
transactional = true
then = [ { deliver = "push" } ]

[[trigger]]
name = "stock"
on = "inventory.low"
then = [ { deliver = "audit" } ]
"#,
        );
        assert_eq!(w, Vec::<String>::new());
    }
}
