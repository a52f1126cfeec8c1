//! CEL expressions (`cel-interpreter`) over `event`, `customer`, `agg` and, in a wait's match,
//! `trigger` (the event that started the run). Values come in as JSON and results go out as JSON.
//!
//! Evaluation is pure: the same inputs give the same result, so replay and backtest agree with
//! the live engine.

use cel_interpreter::{Context, Program, Value as Cel};
use serde_json::Value;

/// A compiled expression and its source (for messages).
pub struct Expr {
    pub source: String,
    program: Program,
    /// Which variables it reads, so callers build only those.
    pub uses_customer: bool,
    pub uses_agg: bool,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

thread_local! {
    /// The built-in functions, registered once per thread rather than per evaluation.
    static ROOT: Context<'static> = Context::default();
}

/// The variables an expression sees; each is built only if some expression reads it.
#[derive(Default)]
pub struct Scope {
    pub vars: Vec<(&'static str, Cel)>,
}

impl Scope {
    pub fn with(mut self, name: &'static str, value: &Value) -> Scope {
        self.vars.push((name, to_cel(value)));
        self
    }

    pub fn set(&mut self, name: &'static str, value: Cel) {
        self.vars.retain(|(n, _)| *n != name);
        self.vars.push((name, value));
    }
}

/// JSON into a CEL value. Whole numbers become `int` (signed), so `event.data.total.amount * 2`
/// and `agg.x > 5` work as written (a JSON number is not a CEL `uint`).
pub fn to_cel(v: &Value) -> Cel {
    match v {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Cel::Int(i),
            None => n
                .as_u64()
                .map_or_else(|| Cel::Float(n.as_f64().unwrap_or(0.0)), Cel::UInt),
        },
        Value::String(s) => Cel::String(std::sync::Arc::new(s.clone())),
        Value::Array(a) => Cel::List(std::sync::Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(o) => {
            let map: std::collections::HashMap<String, Cel> =
                o.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            Cel::from(map)
        }
    }
}

impl Expr {
    pub fn compile(source: &str) -> Result<Expr, String> {
        let program = Program::compile(source).map_err(|e| e.to_string().replace('\n', "; "))?;
        let refs = program.references();
        Ok(Expr {
            source: source.to_owned(),
            uses_customer: refs.has_variable("customer"),
            uses_agg: refs.has_variable("agg"),
            program,
        })
    }

    fn run(&self, scope: &Scope) -> Result<Cel, String> {
        ROOT.with(|root| {
            let mut ctx = root.new_inner_scope();
            for (name, v) in &scope.vars {
                ctx.add_variable_from_value(*name, v.clone());
            }
            self.program.execute(&ctx).map_err(|e| e.to_string())
        })
    }

    /// Evaluates a condition: true only for `true` (an error or a non-boolean is an error).
    pub fn test(&self, scope: &Scope) -> Result<bool, String> {
        match self.run(scope)? {
            Cel::Bool(b) => Ok(b),
            other => Err(format!(
                "'{}' gave {other:?}, not true or false",
                self.source
            )),
        }
    }

    /// Evaluates to JSON.
    pub fn value(&self, scope: &Scope) -> Result<Value, String> {
        let v = self.run(scope)?;
        v.json().map_err(|e| format!("'{}': {e:?}", self.source))
    }

    /// Evaluates to a key: strings as they are, other scalars in their JSON form; null is none.
    pub fn key(&self, scope: &Scope) -> Result<Option<String>, String> {
        Ok(match self.value(scope)? {
            Value::Null => None,
            Value::String(s) => Some(s),
            other => Some(other.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conditions_see_event_customer_and_agg() {
        let scope = Scope::default()
            .with(
                "event",
                &json!({ "type": "cart.item_added", "data": { "cart_value": { "amount": 2500 } } }),
            )
            .with("customer", &json!({ "consent": { "email": true } }))
            .with("agg", &json!({ "failed": 6 }));
        let e = Expr::compile(
            "customer.consent.email && event.data.cart_value.amount >= 2000 && agg.failed > 5",
        )
        .unwrap();
        assert!(e.uses_customer && e.uses_agg);
        assert_eq!(e.test(&scope), Ok(true));
        let e = Expr::compile("event.data.cart_value.amount < 2000").unwrap();
        assert_eq!(e.test(&scope), Ok(false));
        assert!(
            Expr::compile("event.data.nope > 1")
                .unwrap()
                .test(&scope)
                .is_err()
        );
        assert!(Expr::compile("event.data.").is_err());
        let e = Expr::compile("event.data.cart_value.amount * 2").unwrap();
        assert_eq!(e.value(&scope), Ok(json!(5000)));
        assert_eq!(
            Expr::compile("'x-' + event.type").unwrap().key(&scope),
            Ok(Some("x-cart.item_added".into()))
        );
    }
}
