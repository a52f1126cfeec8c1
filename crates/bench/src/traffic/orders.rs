//! The order steps of a journey: the cart becomes an order, a payment attempt's details.

use super::*;

impl Generator {
    /// Turns the cart into an order: 4.95 shipping below 50, sometimes a 10% coupon.
    pub(super) fn place(&mut self, j: &mut Journey, next: &mut Next) -> (&'static str, Value) {
        let (c, scale) = (j.customer, self.scale);
        j.order_id = self.new_id("ord");
        j.order_no = self.ids;
        let subtotal = self.value_of(&j.lines);
        let coupon = self.chance(P_COUPON);
        let discount = if coupon { subtotal / 10 } else { 0 };
        let free = subtotal - discount >= 50 * scale;
        let shipping = if free { 0 } else { 495 * scale / 100 };
        j.total = subtotal - discount + shipping;
        let mut data = json!({ "order_id": j.order_id, "lines": self.lines_json(&j.lines),
            "subtotal": self.money(subtotal), "shipping": self.money(shipping),
            "total": self.money(j.total), "channel": "web", "customer_id": customer_id(c),
            "email": self.person(c).2 });
        if discount > 0
            && let Some(m) = data.as_object_mut()
        {
            m.insert("discount".into(), json!(self.money(discount)));
            m.insert("coupon".into(), "WELCOME10".into());
        }
        let testing = self.chance(P_CARD_TESTING);
        let tries = self.rng.random_range(6..=10);
        j.card_testing = testing;
        j.card = mix(self.seed ^ mix(if testing { !j.order_no } else { u64::from(c) }));
        j.attempts_left = if testing { tries } else { 3 };
        *next = if !testing && self.chance(P_CANCEL) {
            self.after(Step::Cancel("customer_request"), 2 * MIN, 2 * HOUR)
        } else {
            self.after(Step::Attempt, 2 * SEC, 15 * SEC)
        };
        ("order.placed", data)
    }

    pub(super) fn payment(&self, j: &Journey) -> Value {
        json!({ "payment_id": j.payment_id, "order_id": j.order_id, "amount": self.money(j.total),
            "method": "card", "provider": "stripe", "card_fingerprint": format!("fp_{:016x}", j.card) })
    }
}
