//! Money is an integer amount of minor units (cents) plus an ISO 4217 currency, never a float.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// Active ISO 4217 codes with their number of minor-unit digits.
const CURRENCIES: &[(&str, u8)] = &[
    ("AED", 2),
    ("AFN", 2),
    ("ALL", 2),
    ("AMD", 2),
    ("ANG", 2),
    ("AOA", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("AWG", 2),
    ("AZN", 2),
    ("BAM", 2),
    ("BBD", 2),
    ("BDT", 2),
    ("BGN", 2),
    ("BHD", 3),
    ("BIF", 0),
    ("BMD", 2),
    ("BND", 2),
    ("BOB", 2),
    ("BOV", 2),
    ("BRL", 2),
    ("BSD", 2),
    ("BTN", 2),
    ("BWP", 2),
    ("BYN", 2),
    ("BZD", 2),
    ("CAD", 2),
    ("CDF", 2),
    ("CHE", 2),
    ("CHF", 2),
    ("CHW", 2),
    ("CLF", 4),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("COU", 2),
    ("CRC", 2),
    ("CUC", 2),
    ("CUP", 2),
    ("CVE", 2),
    ("CZK", 2),
    ("DJF", 0),
    ("DKK", 2),
    ("DOP", 2),
    ("DZD", 2),
    ("EGP", 2),
    ("ERN", 2),
    ("ETB", 2),
    ("EUR", 2),
    ("FJD", 2),
    ("FKP", 2),
    ("GBP", 2),
    ("GEL", 2),
    ("GHS", 2),
    ("GIP", 2),
    ("GMD", 2),
    ("GNF", 0),
    ("GTQ", 2),
    ("GYD", 2),
    ("HKD", 2),
    ("HNL", 2),
    ("HTG", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("IQD", 3),
    ("IRR", 2),
    ("ISK", 0),
    ("JMD", 2),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KGS", 2),
    ("KHR", 2),
    ("KMF", 0),
    ("KPW", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("KYD", 2),
    ("KZT", 2),
    ("LAK", 2),
    ("LBP", 2),
    ("LKR", 2),
    ("LRD", 2),
    ("LSL", 2),
    ("LYD", 3),
    ("MAD", 2),
    ("MDL", 2),
    ("MGA", 2),
    ("MKD", 2),
    ("MMK", 2),
    ("MNT", 2),
    ("MOP", 2),
    ("MRU", 2),
    ("MUR", 2),
    ("MVR", 2),
    ("MWK", 2),
    ("MXN", 2),
    ("MXV", 2),
    ("MYR", 2),
    ("MZN", 2),
    ("NAD", 2),
    ("NGN", 2),
    ("NIO", 2),
    ("NOK", 2),
    ("NPR", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PAB", 2),
    ("PEN", 2),
    ("PGK", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("PYG", 0),
    ("QAR", 2),
    ("RON", 2),
    ("RSD", 2),
    ("RUB", 2),
    ("RWF", 0),
    ("SAR", 2),
    ("SBD", 2),
    ("SCR", 2),
    ("SDG", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("SHP", 2),
    ("SLE", 2),
    ("SLL", 2),
    ("SOS", 2),
    ("SRD", 2),
    ("SSP", 2),
    ("STN", 2),
    ("SVC", 2),
    ("SYP", 2),
    ("SZL", 2),
    ("THB", 2),
    ("TJS", 2),
    ("TMT", 2),
    ("TND", 3),
    ("TOP", 2),
    ("TRY", 2),
    ("TTD", 2),
    ("TWD", 2),
    ("TZS", 2),
    ("UAH", 2),
    ("UGX", 0),
    ("USD", 2),
    ("USN", 2),
    ("UYI", 0),
    ("UYU", 2),
    ("UYW", 4),
    ("UZS", 2),
    ("VED", 2),
    ("VES", 2),
    ("VND", 0),
    ("VUV", 0),
    ("WST", 2),
    ("XAF", 0),
    ("XCD", 2),
    ("XCG", 2),
    ("XOF", 0),
    ("XPF", 0),
    ("YER", 2),
    ("ZAR", 2),
    ("ZMW", 2),
    ("ZWG", 2),
    ("ZWL", 2),
];

/// The number of minor-unit digits of an ISO 4217 code (2 for EUR, 0 for JPY, 3 for KWD), or
/// `None` for a code that is not an active ISO 4217 currency.
pub fn currency_exponent(code: &str) -> Option<u8> {
    CURRENCIES
        .binary_search_by(|(c, _)| (*c).cmp(code))
        .ok()
        .map(|i| CURRENCIES[i].1)
}

/// A validated ISO 4217 currency code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency(&'static str);

impl Currency {
    pub fn parse(code: &str) -> Result<Self, String> {
        match CURRENCIES.binary_search_by(|(c, _)| (*c).cmp(code)) {
            Ok(i) => Ok(Self(CURRENCIES[i].0)),
            Err(_) if code.len() == 3 && code.chars().all(|c| c.is_ascii_lowercase()) => {
                Err(format!(
                    "unknown currency '{code}': codes are upper case, such as '{}'",
                    code.to_ascii_uppercase()
                ))
            }
            Err(_) => Err(format!(
                "unknown currency '{code}': expected an ISO 4217 code such as 'EUR' or 'USD'"
            )),
        }
    }

    pub fn code(self) -> &'static str {
        self.0
    }

    pub fn exponent(self) -> u8 {
        currency_exponent(self.0).unwrap_or(2)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Currency::parse(&s).map_err(de::Error::custom)
    }
}

/// An amount of money: `amount` in minor units (cents for EUR, yen for JPY) and its currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Money {
    pub amount: i64,
    pub currency: Currency,
}

impl Money {
    /// Converts a decimal amount in major units (as Segment's `price: 19.99` is) into minor units,
    /// rounding half away from zero; `None` if it is not finite or does not fit.
    pub fn from_major(major: f64, currency: Currency) -> Option<Self> {
        let scaled = (major * 10f64.powi(i32::from(currency.exponent()))).round();
        #[allow(clippy::cast_precision_loss)]
        let max = crate::limits::MAX_AMOUNT as f64;
        if !scaled.is_finite() || scaled.abs() > max {
            return None;
        }
        #[allow(clippy::cast_possible_truncation)]
        Some(Self {
            amount: scaled as i64,
            currency,
        })
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(MoneyVisitor)
    }
}

struct MoneyVisitor;

impl<'de> Visitor<'de> for MoneyVisitor {
    type Value = Money;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"money as {"amount": <integer minor units>, "currency": "<ISO 4217>"}"#)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Money, A::Error> {
        let mut amount = None;
        let mut currency = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "amount" => {
                    let n: serde_json::Number = map.next_value()?;
                    amount = Some(n.as_i64().ok_or_else(|| {
                        de::Error::custom(format!(
                            "amount must be an integer number of minor units (cents), got {n}"
                        ))
                    })?);
                }
                "currency" => currency = Some(map.next_value::<Currency>()?),
                other => {
                    return Err(de::Error::custom(format!(
                        "unknown field `{other}` in money: expected `amount` and `currency`"
                    )));
                }
            }
        }
        let amount = amount.ok_or_else(|| de::Error::missing_field("amount"))?;
        let currency = currency.ok_or_else(|| de::Error::missing_field("currency"))?;
        if amount < 0 {
            return Err(de::Error::custom(format!(
                "amount must not be negative, got {amount}"
            )));
        }
        crate::limits::check_amount(amount)
            .map_err(|e| de::Error::custom(format!("amount {e}")))?;
        Ok(Money { amount, currency })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_so_binary_search_works() {
        assert!(CURRENCIES.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn parses_money_and_rejects_floats_and_bad_codes() {
        let m: Money = serde_json::from_str(r#"{"amount":1999,"currency":"EUR"}"#).unwrap();
        assert_eq!(m.amount, 1999);
        let e = serde_json::from_str::<Money>(r#"{"amount":19.99,"currency":"EUR"}"#).unwrap_err();
        assert!(
            e.to_string().contains("integer number of minor units"),
            "{e}"
        );
        let e = serde_json::from_str::<Money>(r#"{"amount":1,"currency":"eur"}"#).unwrap_err();
        assert!(e.to_string().contains("'EUR'"), "{e}");
    }

    #[test]
    fn major_units_convert_with_the_currency_exponent() {
        let eur = Currency::parse("EUR").unwrap();
        let jpy = Currency::parse("JPY").unwrap();
        let kwd = Currency::parse("KWD").unwrap();
        assert_eq!(Money::from_major(19.99, eur).unwrap().amount, 1999);
        assert_eq!(Money::from_major(1200.0, jpy).unwrap().amount, 1200);
        assert_eq!(Money::from_major(1.2345, kwd).unwrap().amount, 1235);
    }
}
