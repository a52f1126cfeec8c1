//! Message templates (minijinja), shared by the email and SMS connectors. Templates are checked
//! when the config is (syntax only), and rendered per attempt with the delivery in scope:
//! `customer` (the customer's view), `data` (the action's data), `event` (the trigger event),
//! `arrived`, `trigger` and `delivery` (`id`, `attempt`, `created_at`).

use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Value, json};

use crate::Delivery;

fn env() -> Environment<'static> {
    let mut env = Environment::new();
    // A misspelt field renders as empty rather than failing the delivery; but calling
    // a method on an undefined value still fails.
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    env
}

/// Whether `src` parses as a template; the error says where it does not.
pub fn check(src: &str) -> Result<(), String> {
    env()
        .template_from_str(src)
        .map(|_| ())
        .map_err(|e| format!("template error: {e}"))
}

/// What a template sees for a delivery.
pub fn scope(d: &Delivery) -> Value {
    json!({
        "customer": d.profile.clone().unwrap_or(Value::Null),
        "data": d.data,
        "event": d.event,
        "arrived": d.arrived,
        "trigger": d.trigger,
        "delivery": { "id": d.id, "attempt": d.attempt, "created_at": d.created_at, "connector": d.connector },
    })
}

/// Renders `src` with `ctx`. HTML escaping is on when `html` is true.
pub fn render(src: &str, ctx: &Value, html: bool) -> Result<String, String> {
    let mut env = env();
    env.set_auto_escape_callback(move |_| {
        if html {
            minijinja::AutoEscape::Html
        } else {
            minijinja::AutoEscape::None
        }
    });
    let t = env
        .template_from_str(src)
        .map_err(|e| format!("template error: {e}"))?;
    t.render(ctx).map_err(|e| format!("template error: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_customer_fields_and_escapes_html() {
        let ctx =
            json!({ "customer": { "traits": { "first_name": "<Ann>" } }, "data": { "n": 2 } });
        assert_eq!(
            render(
                "Hi {{ customer.traits.first_name }} ({{ data.n }})",
                &ctx,
                true
            )
            .ok(),
            Some("Hi &lt;Ann&gt; (2)".to_owned())
        );
        assert_eq!(
            render(
                "Hi {{ customer.traits.first_name }}{{ customer.traits.missing }}",
                &ctx,
                false
            )
            .ok(),
            Some("Hi <Ann>".to_owned())
        );
        assert!(check("{% if %}").is_err());
    }
}
