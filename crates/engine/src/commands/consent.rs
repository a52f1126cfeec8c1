//! Grant or withdraw consent for a channel (`customer.update_consent`).

use serde_json::Value;

use super::{ConsentCmd, Planned, opt};
use crate::error::CommandError;

pub(super) fn plan(c: &ConsentCmd) -> Result<Vec<Planned>, CommandError> {
    let mut d = serde_json::Map::new();
    d.insert("channel".into(), c.channel.clone().into());
    d.insert("granted".into(), c.granted.into());
    opt(&mut d, "source", c.source.clone());
    Ok(vec![Planned {
        ty: "customer.consent_changed",
        subject: Some(c.customer_id.clone()),
        data: Value::Object(d),
    }])
}
