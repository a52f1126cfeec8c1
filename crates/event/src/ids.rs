//! Typed ids with readable prefixes (`evt_…`, `cus_…`, `ord_…`, `dlv_…`, `key_…`).
//!
//! Ids that Storeline makes are the prefix plus a lowercase ULID, so they sort by creation time.
//! Ids that come from a shop (a customer id such as `cus-1`) are kept as given: the types stop an
//! order id from being passed where a customer id is meant, they do not police the shop's format.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The prefix of ids that Storeline generates for this kind.
            pub const PREFIX: &'static str = $prefix;

            /// A new, unique, time-sortable id: the prefix, `_`, and a lowercase ULID.
            pub fn generate() -> Self {
                Self(format!("{}_{}", $prefix, ulid::Ulid::new().to_string().to_lowercase()))
            }

            /// Wraps an id given from outside, unchanged.
            pub fn from_external(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

typed_id!(
    /// An event's `id` attribute.
    EventId, "evt");
typed_id!(
    /// A customer (the usual `subject` of an event).
    CustomerId, "cus");
typed_id!(
    /// An order.
    OrderId, "ord");
typed_id!(
    /// One delivery of an action through a connector.
    DeliveryId, "dlv");
typed_id!(
    /// An API key's public id (never the secret).
    KeyId, "key");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_have_prefix_and_sort_by_time() {
        let a = EventId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = EventId::generate();
        assert!(a.as_str().starts_with("evt_"));
        assert_eq!(a.as_str().len(), 4 + 26);
        assert!(a < b, "{a} should sort before {b}");
    }
}
