//! A run's actions: `deliver` (through arbitration to the outbox), `emit` and `set_trait`
//! (events to append, with ids derived from the run, so a re-run is deduplicated).

use serde_json::{Map, Value, json};
use storeline_event::outbox::OutboxEntry;

use super::cel::{Expr, Scope, to_cel};
use super::def::{Action, Trigger};
use super::machine::{Doc, Machine, customer_of};
use crate::project::Emit;

impl Machine<'_> {
    pub(super) fn act(
        &mut self,
        rk: &str,
        t: &Trigger,
        actions: &[Action],
        step: usize,
        arrived: Option<&Doc>,
        branch: &str,
    ) {
        if actions.is_empty() {
            return;
        }
        let Some(run) = self.views.run.get(rk).cloned() else {
            return;
        };
        let customer = Some(customer_of(rk)).filter(|c| !c.is_empty());
        let needs_customer = actions
            .iter()
            .any(|a| action_exprs(a).any(|e| e.uses_customer));
        let mut scope = match arrived {
            Some(d) => Scope::default()
                .with("event", &d.value)
                .with("trigger", &run.event),
            None => Scope::default()
                .with("event", &run.event)
                .with("trigger", &run.event),
        };
        if needs_customer {
            scope.set("customer", to_cel(&self.customer_doc(customer)));
        }
        if actions.iter().any(|a| action_exprs(a).any(|e| e.uses_agg)) {
            let doc = Doc {
                value: run.event.clone(),
                ty: String::new(),
                id: String::new(),
                customer: customer.map(str::to_owned),
                order: None,
                received: self.clock,
            };
            scope.set("agg", to_cel(&self.agg_scope(&doc)));
        }
        for (i, a) in actions.iter().enumerate() {
            let seed = format!("{}/{}/{step}{branch}{i}", run.origin, run.restarts);
            let id_hash = &crate::hash_hex(format!("{rk}\n{seed}").as_bytes())[..24];
            match a {
                Action::Deliver {
                    connector,
                    channel,
                    template,
                    data,
                } => {
                    let data = eval_data(data, &scope);
                    let entry = OutboxEntry {
                        id: format!("dlv_{id_hash}"),
                        connector: connector.clone(),
                        channel: channel.clone(),
                        template: template.clone(),
                        customer: customer.map(str::to_owned),
                        trigger: t.name.clone(),
                        version: t.version.clone(),
                        run: rk.to_owned(),
                        event: run.event.clone(),
                        arrived: arrived.map(|d| d.value.clone()),
                        data,
                        created_at: self.clock,
                        priority: t.priority,
                        seq: seq_of(&run.origin, step, branch, i),
                        transactional: t.transactional,
                    };
                    self.arbitrate(t, rk, entry, channel, step, true);
                }
                Action::Emit { ty, data } => {
                    self.emits.push(Emit {
                        id: format!("trg_{id_hash}"),
                        ty: ty.clone(),
                        subject: customer.map(str::to_owned),
                        time: self.clock,
                        data: Value::Object(eval_data(data, &scope)),
                    });
                    self.log_run(rk, "emitted", Some(step), Some(ty.clone()));
                    self.count(t, customer, "emitted", rk);
                }
                Action::SetTrait { name, value } => {
                    let Some(c) = customer else {
                        self.log_run(
                            rk,
                            "skipped",
                            Some(step),
                            Some(format!("set_trait {name}: no customer")),
                        );
                        continue;
                    };
                    match value.value(&scope) {
                        Ok(v) => {
                            self.emits.push(Emit {
                                id: format!("trg_{id_hash}"),
                                ty: "customer.updated".into(),
                                subject: Some(c.to_owned()),
                                time: self.clock,
                                data: json!({ "traits": { name.clone(): v } }),
                            });
                            self.log_run(rk, "trait_set", Some(step), Some(name.clone()));
                            self.count(t, customer, "trait_set", rk);
                        }
                        Err(e) => {
                            self.log_run(rk, "action_error", Some(step), Some(e));
                            self.count(t, customer, "action_error", rk);
                        }
                    }
                }
            }
        }
    }
}

/// A sortable position of an action: its run's origin offset, step, branch and index.
fn seq_of(origin: &str, step: usize, branch: &str, i: usize) -> String {
    let offset: u64 = origin
        .rsplit(':')
        .next()
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    format!("{offset:020}.{step:03}{branch}{i:03}")
}

fn action_exprs(a: &Action) -> Box<dyn Iterator<Item = &Expr> + '_> {
    match a {
        Action::Deliver { data, .. } | Action::Emit { data, .. } => {
            Box::new(data.iter().map(|(_, e)| e))
        }
        Action::SetTrait { value, .. } => Box::new(std::iter::once(value)),
    }
}

fn eval_data(data: &[(String, Expr)], scope: &Scope) -> Map<String, Value> {
    data.iter()
        .map(|(k, e)| (k.clone(), e.value(scope).unwrap_or(Value::Null)))
        .collect()
}
