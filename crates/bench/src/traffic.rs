//! Synthetic commerce traffic for `storeline gen`: an endless, deterministic stream of catalog
//! events in Storeline's plain envelope that looks like a real shop.
//!
//! Why: demos, load tests and trigger backtests need traffic whose *shape* is right (a skewed
//! catalogue, a leaky funnel, abandoned carts, orders that ship hours and arrive days later, failed
//! payments, returns), and a failing test needs the very same traffic again. So everything comes
//! from `seed`: no wall clock, no ULIDs, no OS randomness. The same config gives byte-identical
//! output (for a given build: rand's `StdRng` stream is only stable within one rand version).
//!
//! How: a discrete-event simulation. Each customer visit is a journey, a small state machine from
//! the landing page through cart, checkout, payment, shipping and delivery to a possible return.
//! A priority queue (a `BTreeMap` keyed by simulated time in ms after `start`, then a sequence
//! number so ties break in scheduling order) holds the next step of every live journey. Taking
//! the earliest step emits at most one event and schedules the step after it, so events come out
//! in non-decreasing `time` while thousands of sessions and orders interleave.
//!
//! Sessions arrive as a Poisson process that follows the time of day and scales with the customer
//! base: each customer visits about every three days, so a million customers make a few sessions a
//! second while a thousand make a few hundred a day. Tying the rate to the shop's size keeps a small
//! shop realistic and lets a short run cover the days an order takes from checkout to delivery.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, TimeDelta, Timelike, Utc};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};

/// The `source` of every generated event.
pub const SOURCE: &str = "storeline-gen";

/// What to generate. Two generators with equal configs produce identical streams.
#[derive(Debug, Clone)]
pub struct GenConfig {
    /// Seeds every random choice; also part of every id, so runs with different seeds never
    /// collide in Storeline's `(source, id)` dedup.
    pub seed: u64,
    /// Size of the customer base (`cus-000001` …); also sets the session rate.
    pub customers: u32,
    /// Size of the catalogue (`SKU-00001` …).
    pub products: u32,
    /// Simulated time of the first event.
    pub start: DateTime<Utc>,
    /// ISO 4217 code of every amount (the caller validates it, e.g. with
    /// `storeline_event::Currency::parse`); prices follow its minor-unit exponent.
    pub currency: String,
    /// Of the visits of known customers that start browsing, the share that browse and fill the
    /// cart under an anonymous id (`anon-…`) and log in (`customer.identified` with the
    /// anonymous id) just before they order. 0 keeps the stream as it always was.
    pub anonymous_share: f64,
}

impl Default for GenConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            customers: 1000,
            products: 200,
            // 2026-01-01T00:00:00Z: a fixed instant, never the wall clock.
            start: DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default(),
            currency: "EUR".to_owned(),
            anonymous_share: 0.0,
        }
    }
}

// ----- tuning: the shape of the funnel ---------------------------------------------------------

const SEC: i64 = 1000;
const MIN: i64 = 60 * SEC;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

/// On average each customer starts a session this often (simulated milliseconds).
const VISIT_EVERY_MS: f64 = 3.0 * DAY as f64;
/// Relative traffic per hour of the day (UTC): quiet nights, an evening peak.
const HOURLY: [f64; 24] = [
    0.35, 0.2, 0.12, 0.1, 0.1, 0.15, 0.3, 0.55, 0.8, 1.0, 1.1, 1.2, 1.3, 1.2, 1.1, 1.1, 1.2, 1.4,
    1.6, 1.8, 1.9, 1.7, 1.2, 0.7,
];
const ZIPF_EXPONENT: f64 = 1.1;
const P_NEW_CUSTOMER: f64 = 0.6; // of first visits; the rest existed before the stream began
const P_LOGIN: f64 = 0.4; // of later visits
const P_EMAIL_CONSENT: f64 = 0.65;
const P_BOUNCE: f64 = 0.3;
const P_ADD_AFTER_VIEW: f64 = 0.25;
const P_CHECKOUT: f64 = 0.45; // of sessions that end with a cart
const P_PLACE: f64 = 0.70; // of checkouts
const P_COUPON: f64 = 0.1;
const P_CANCEL: f64 = 0.03; // of orders, cancelled by the customer before paying
const P_CARD_TESTING: f64 = 0.002; // of orders: a burst of declines on one stolen card
const P_PAYMENT_FAILS: f64 = 0.08; // of attempts
const P_RETRY: f64 = 0.6;
const P_RETURN: f64 = 0.06; // of delivered orders

// ----- fixtures ----------------------------------------------------------------------------

struct Category {
    name: &'static str,
    slug: &'static str,
    nouns: &'static [&'static str],
    /// Price range in major units.
    min: f64,
    max: f64,
}

#[rustfmt::skip]
const CATEGORIES: &[Category] = &[
    Category { name: "Apparel", slug: "apparel", nouns: &["T-Shirt", "Hoodie", "Jeans", "Jacket", "Dress"], min: 15.0, max: 140.0 },
    Category { name: "Shoes", slug: "shoes", nouns: &["Sneakers", "Boots", "Sandals", "Loafers"], min: 40.0, max: 190.0 },
    Category { name: "Home", slug: "home", nouns: &["Cushion", "Throw", "Vase", "Lamp", "Rug"], min: 12.0, max: 260.0 },
    Category { name: "Kitchen", slug: "kitchen", nouns: &["Knife", "Skillet", "Grinder", "Teapot", "Mug"], min: 8.0, max: 200.0 },
    Category { name: "Electronics", slug: "electronics", nouns: &["Headphones", "Charger", "Speaker", "Smartwatch"], min: 20.0, max: 420.0 },
    Category { name: "Beauty", slug: "beauty", nouns: &["Face Cream", "Shampoo", "Perfume", "Lip Balm"], min: 5.0, max: 95.0 },
    Category { name: "Sports", slug: "sports", nouns: &["Yoga Mat", "Water Bottle", "Running Shorts", "Dumbbells"], min: 9.0, max: 150.0 },
    Category { name: "Books", slug: "books", nouns: &["Novel", "Cookbook", "Travel Guide", "Notebook"], min: 7.0, max: 45.0 },
];
#[rustfmt::skip]
const ADJECTIVES: &[&str] = &[
    "Classic", "Everyday", "Premium", "Organic", "Vintage", "Urban", "Compact", "Deluxe", "Essential", "Nordic",
];
const COLOURS: &[&str] = &[
    "Black", "White", "Navy", "Olive", "Sand", "Red", "Grey", "Teal",
];
#[rustfmt::skip]
const FIRST_NAMES: &[&str] = &[
    "Anna", "Ben", "Clara", "David", "Elif", "Felix", "Greta", "Hugo", "Ines", "Jonas", "Lea", "Mateo",
    "Nora", "Omar", "Paula", "Rui", "Sofia", "Tom", "Yara", "Zoe",
];
#[rustfmt::skip]
const LAST_NAMES: &[&str] = &[
    "Muller", "Schmidt", "Rossi", "Garcia", "Dubois", "Jansen", "Novak", "Kowalski", "Silva", "Berg",
    "Lindqvist", "Costa", "Weber", "Moreau", "Visser", "Horvat",
];
#[rustfmt::skip]
const LOCALES: &[(&str, &str)] = &[
    ("de-DE", "Europe/Berlin"), ("fr-FR", "Europe/Paris"), ("nl-NL", "Europe/Amsterdam"),
    ("es-ES", "Europe/Madrid"), ("it-IT", "Europe/Rome"), ("en-GB", "Europe/London"),
];
#[rustfmt::skip]
const PAGES: &[(&str, &str)] = &[
    ("/", "Home"), ("/sale", "Sale"), ("/new", "New arrivals"), ("/account", "My account"),
    ("/help/shipping", "Shipping & returns"),
];
/// Where a session's landing page came from; "" is direct traffic (no referrer).
#[rustfmt::skip]
const REFERRERS: &[&str] = &[
    "https://www.google.com/", "https://www.instagram.com/", "https://newsletter.example.com/", "",
];
#[rustfmt::skip]
const DECLINES: &[(&str, &str)] = &[
    ("card_declined", "the card was declined"), ("insufficient_funds", "insufficient funds"),
    ("expired_card", "the card has expired"), ("incorrect_cvc", "the security code is incorrect"),
    ("do_not_honor", "the issuer declined the payment"),
];
#[rustfmt::skip]
const CARRIERS: &[(&str, &str)] = &[
    ("DHL", "dhl"), ("UPS", "ups"), ("DPD", "dpd"), ("GLS", "gls"), ("PostNL", "postnl"),
];
#[rustfmt::skip]
const RETURN_REASONS: &[&str] = &["too_small", "too_large", "not_as_described", "damaged", "changed_mind"];
const SHOP: &str = "https://shop.example.com";

/// A catalogue entry; sku, id and name are derived from the index when needed, so a large
/// catalogue costs a few bytes per product.
#[derive(Debug, Clone, Copy)]
struct Product {
    category: u8,
    noun: u8,
    adjective: u8,
    colour: u8,
    /// Minor units.
    price: i64,
}

/// Zipf-like popularity: rank k (from 0) has weight 1/(k+1)^s, sampled by binary search in the
/// precomputed cumulative distribution.
#[derive(Debug)]
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (1..=n.max(1))
            .map(|k| {
                acc += (k as f64).powf(-s);
                acc
            })
            .collect();
        cdf.iter_mut().for_each(|c| *c /= acc);
        Self { cdf }
    }

    fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.random();
        let i = self.cdf.partition_point(|&c| c <= u);
        i.min(self.cdf.len() - 1)
    }
}

/// SplitMix64: spreads a number's bits, for attributes that are stable per customer or order.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn pick<T: Copy>(items: &[T], h: u64) -> T {
    items[(h % items.len() as u64) as usize]
}

fn customer_id(c: u32) -> String {
    format!("cus-{:06}", u64::from(c) + 1)
}

fn sku(p: u32) -> String {
    format!("SKU-{:05}", u64::from(p) + 1)
}

fn product_id(p: u32) -> String {
    format!("prod-{:05}", u64::from(p) + 1)
}

/// Money as the catalog wants it: integer minor units and an ISO 4217 code.
#[derive(Serialize)]
struct Money<'a> {
    amount: i64,
    currency: &'a str,
}

/// A cart or order line (the catalog's `Line`). Typed, so `json!` serializes it once instead of
/// copying an already built `Value`.
#[derive(Serialize)]
struct LineJson<'a> {
    sku: String,
    product_id: String,
    name: String,
    category: &'static str,
    quantity: u32,
    unit_price: Money<'a>,
}

/// Returned lines (the catalog's `ReturnLine`). Returns are rare, so a `Value` is fine here.
fn returned(lines: &[Line]) -> Value {
    let line = |&(p, q): &Line| json!({ "sku": sku(p), "quantity": q });
    lines.iter().map(line).collect()
}

// ----- the simulation ------------------------------------------------------------------------

/// One cart or order line: product index and quantity.
type Line = (u32, u32);
/// An event to emit: type and payload.
type Emit = Option<(&'static str, Value)>;
/// The next step of a journey and its delay in ms; `None` ends the journey.
type Next = Option<(Step, i64)>;

/// Where a journey stands: the event its next step emits.
#[derive(Debug, Clone, Copy, Default)]
enum Step {
    SignUp,
    Consent,
    Identify,
    #[default]
    Browse,
    Place,
    Attempt,
    Outcome,
    Paid,
    Fulfil,
    Ship,
    Deliver,
    RequestReturn,
    ReceiveReturn,
    Refund,
    Cancel(&'static str),
}

/// One customer's visit, from the landing page to (if it gets that far) the refund: a state
/// machine that emits one event per step.
#[derive(Debug, Default)]
struct Journey {
    customer: u32,
    step: Step,
    /// Where a first visit's consent comes from; `None` on later visits.
    consent_source: Option<&'static str>,
    /// Browsing actions left before the customer checks out or leaves.
    budget: u32,
    /// The product just viewed, a candidate for the cart.
    viewed: Option<u32>,
    pages: u32,
    /// The cart, and once ordered, the order lines.
    lines: Vec<Line>,
    cart_id: Option<String>,
    order_no: u64,
    order_id: String,
    total: i64,
    attempts_left: u32,
    /// A fraudster testing a stolen card: many quick declines on one fingerprint.
    card_testing: bool,
    card: u64,
    payment_id: String,
    returned: Vec<Line>,
    return_id: String,
    /// Browsing under this anonymous id until the customer logs in to order.
    anon: Option<String>,
}

/// The endless event stream; take as many events as needed.
#[derive(Debug)]
pub struct Generator {
    rng: StdRng,
    seed: u64,
    start: DateTime<Utc>,
    start_ms_of_day: i64,
    currency: String,
    /// Minor units per euro-like major unit of the price ranges (100 for EUR and JPY).
    scale: i64,
    customers: u32,
    /// Bit set of the customers seen so far.
    known: Vec<u64>,
    products: Vec<Product>,
    popularity: Zipf,
    /// Popularity rank to product index, so the bestseller is not always SKU-00001.
    by_rank: Vec<u32>,
    /// Mean gap between session arrivals for each hour of the day, in ms.
    arrival_gap: [f64; 24],
    /// The next step of every live journey by (time, sequence), the earliest first; `None` is
    /// the next session arrival.
    queue: BTreeMap<(i64, u64), Option<Box<Journey>>>,
    seq: u64,
    now: i64,
    emitted: u64,
    ids: u64,
    anonymous_share: f64,
    /// The subject of the event being made, when it is not the customer's id.
    subject: Option<String>,
}

impl Generator {
    /// Builds the catalogue and schedules the first session arrival at `cfg.start`. Counts of 0
    /// are treated as 1; an unknown currency gets 2 minor-unit digits (but fails ingest).
    pub fn new(cfg: GenConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let customers = cfg.customers.max(1);
        let n = cfg.products.max(1);
        let exponent = storeline_event::currency_exponent(&cfg.currency).unwrap_or(2);
        // Prices are written in euro-like major units; zero-decimal currencies (JPY, KRW) have
        // small units, so they are scaled as if they had cents: 19.99 becomes ¥1999.
        let scale = 10i64.pow(u32::from(exponent.max(2)));
        let products = (0..n)
            .map(|_| {
                let category = rng.random_range(0..CATEGORIES.len());
                let cat = &CATEGORIES[category];
                // Log-uniform within the category's range, priced like 19.99.
                let major = (cat.min.ln() + rng.random::<f64>() * (cat.max / cat.min).ln()).exp();
                Product {
                    category: category as u8,
                    noun: rng.random_range(0..cat.nouns.len()) as u8,
                    adjective: rng.random_range(0..ADJECTIVES.len()) as u8,
                    colour: rng.random_range(0..COLOURS.len()) as u8,
                    price: (major as i64) * scale + scale * 99 / 100,
                }
            })
            .collect();
        let mut by_rank: Vec<u32> = (0..n).collect();
        by_rank.shuffle(&mut rng);
        let hourly_mean = HOURLY.iter().sum::<f64>() / 24.0;
        let arrival_gap = HOURLY.map(|h| VISIT_EVERY_MS / f64::from(customers) * hourly_mean / h);
        let mut g = Self {
            rng,
            seed: cfg.seed,
            start: cfg.start,
            start_ms_of_day: i64::from(cfg.start.num_seconds_from_midnight()) * SEC
                + i64::from(cfg.start.timestamp_subsec_millis()),
            currency: cfg.currency,
            scale,
            customers,
            known: vec![0; (customers as usize).div_ceil(64)],
            products,
            popularity: Zipf::new(n as usize, ZIPF_EXPONENT),
            by_rank,
            arrival_gap,
            queue: BTreeMap::new(),
            seq: 0,
            now: 0,
            emitted: 0,
            ids: 0,
            anonymous_share: cfg.anonymous_share.clamp(0.0, 1.0),
            subject: None,
        };
        g.schedule(0, None);
        g
    }

    fn schedule(&mut self, delay_ms: i64, journey: Option<Box<Journey>>) {
        self.seq += 1;
        self.queue
            .insert((self.now + delay_ms.max(0), self.seq), journey);
    }

    fn after(&mut self, step: Step, lo_ms: i64, hi_ms: i64) -> Next {
        Some((step, self.rng.random_range(lo_ms..=hi_ms)))
    }

    fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.rng.random::<f64>()).ln()
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random::<f64>() < p
    }

    fn new_id(&mut self, prefix: &str) -> String {
        self.ids += 1;
        format!("{prefix}-{}-{}", self.seed, self.ids)
    }

    fn money(&self, amount: i64) -> Money<'_> {
        Money {
            amount,
            currency: &self.currency,
        }
    }

    fn popular_product(&mut self) -> u32 {
        self.by_rank[self.popularity.sample(&mut self.rng)]
    }

    /// A product's price, category and display name.
    fn item(&self, p: u32) -> (i64, &'static Category, String) {
        let pr = self.products[p as usize];
        let cat = &CATEGORIES[usize::from(pr.category)];
        let adjective = ADJECTIVES[usize::from(pr.adjective)];
        let colour = COLOURS[usize::from(pr.colour)];
        let name = format!("{adjective} {colour} {}", cat.nouns[usize::from(pr.noun)]);
        (pr.price, cat, name)
    }

    fn lines_json(&self, lines: &[Line]) -> Vec<LineJson<'_>> {
        let line = |&(p, quantity): &Line| {
            let (price, cat, name) = self.item(p);
            LineJson {
                sku: sku(p),
                product_id: product_id(p),
                name,
                category: cat.name,
                quantity,
                unit_price: self.money(price),
            }
        };
        lines.iter().map(line).collect()
    }

    fn value_of(&self, lines: &[Line]) -> i64 {
        let line = |&(p, q): &Line| self.products[p as usize].price * i64::from(q);
        lines.iter().map(line).sum()
    }

    /// A cart line event (`cart.item_added`, `cart.item_removed`), with the cart's new value.
    fn cart_item(&self, j: &Journey, p: u32, quantity: u32) -> Value {
        let (price, cat, name) = self.item(p);
        json!({ "cart_id": j.cart_id, "sku": sku(p), "product_id": product_id(p),
            "quantity": quantity, "unit_price": self.money(price), "name": name,
            "category": cat.name, "cart_value": self.money(self.value_of(&j.lines)) })
    }

    /// A customer's stable first name, last name and seed for e-mail and locale.
    fn person(&self, c: u32) -> (&'static str, &'static str, String, u64) {
        let h = mix(self.seed ^ mix(u64::from(c)));
        let (first, last) = (pick(FIRST_NAMES, h), pick(LAST_NAMES, h >> 20));
        let (f, l) = (first.to_ascii_lowercase(), last.to_ascii_lowercase());
        let email = format!("{f}.{l}{}@example.com", u64::from(c) + 1);
        (first, last, email, h >> 40)
    }

    fn envelope(&mut self, ty: &str, customer: u32, data: Value) -> Value {
        let n = self.emitted;
        self.emitted += 1;
        let elapsed = TimeDelta::milliseconds(self.now);
        let time = self
            .start
            .checked_add_signed(elapsed)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let mut event = json!({ "specversion": "1.0", "id": format!("gen-{}-{n}", self.seed),
            "source": SOURCE, "type": ty, "time": time.to_rfc3339_opts(SecondsFormat::Millis, true),
            "subject": customer_id(customer) });
        if let Some(m) = event.as_object_mut() {
            m.insert("data".into(), data); // moved in: json! would deep-copy it
        }
        event
    }

    /// A session starts: schedules the next arrival and the session's first step.
    fn arrive(&mut self) {
        let hour = ((self.start_ms_of_day + self.now) / HOUR % 24) as usize;
        let gap = self.exp(self.arrival_gap[hour]) as i64;
        self.schedule(gap, None);

        let customer = self.rng.random_range(0..self.customers);
        let (word, bit) = ((customer / 64) as usize, 1u64 << (customer % 64));
        let first_visit = self.known[word] & bit == 0;
        self.known[word] |= bit;
        // On a first visit the customer signs up, or (existing before the stream began) logs in;
        // either way their e-mail consent is recorded, so consent-gated triggers can fire.
        let (step, consent_source) = if !first_visit {
            let login = self.chance(P_LOGIN);
            (if login { Step::Identify } else { Step::Browse }, None)
        } else if self.chance(P_NEW_CUSTOMER) {
            (Step::SignUp, Some("signup_form"))
        } else {
            (Step::Identify, Some("account_settings"))
        };
        let browser = (2 + self.exp(6.0) as u32).min(40);
        let budget = if self.chance(P_BOUNCE) { 1 } else { browser };
        let anon = (self.anonymous_share > 0.0
            && matches!(step, Step::Browse)
            && self.chance(self.anonymous_share))
        .then(|| self.new_id("anon"));
        let journey = Journey {
            customer,
            step,
            consent_source,
            budget,
            anon,
            ..Journey::default()
        };
        self.schedule(0, Some(Box::new(journey)));
    }

    /// Emits the journey's current step and schedules the one after it.
    fn advance(&mut self, mut j: Box<Journey>) -> Emit {
        let c = j.customer;
        let order_id = j.order_id.clone();
        let testing = j.card_testing;
        let fail_p = if testing { 0.97 } else { P_PAYMENT_FAILS };
        let mut next = None;
        if let Some(anon) = &j.anon
            && !matches!(j.step, Step::Place)
        {
            self.subject = Some(anon.clone());
        }
        let event = match j.step {
            Step::Place if j.anon.is_some() => {
                // Logs in at checkout: the anonymous id joins the customer, then the order.
                let anon = j.anon.take();
                next = self.after(Step::Place, SEC, 5 * SEC);
                let data = json!({ "user_id": customer_id(c), "anonymous_id": anon });
                ("customer.identified", data)
            }
            Step::SignUp => {
                next = self.after(Step::Consent, 3 * SEC, 40 * SEC);
                let (first, last, email, h) = self.person(c);
                let (locale, timezone) = pick(LOCALES, h);
                let data = json!({ "customer_id": customer_id(c), "email": email,
                    "first_name": first, "last_name": last, "name": format!("{first} {last}"),
                    "locale": locale, "timezone": timezone });
                ("customer.signed_up", data)
            }
            Step::Consent => {
                next = self.after(Step::Browse, 3 * SEC, 40 * SEC);
                let granted = self.chance(P_EMAIL_CONSENT);
                let source = j.consent_source.unwrap_or("signup_form");
                let data = json!({ "channel": "email", "granted": granted, "source": source });
                ("customer.consent_changed", data)
            }
            Step::Identify => {
                let consent = j.consent_source.is_some();
                let step = if consent { Step::Consent } else { Step::Browse };
                next = self.after(step, 3 * SEC, 40 * SEC);
                let (first, last, email, _) = self.person(c);
                let data = json!({ "user_id": customer_id(c), "email": email,
                    "traits": { "first_name": first, "last_name": last } });
                ("customer.identified", data)
            }
            Step::Browse => {
                let (event, browse_next) = self.browse(&mut j);
                next = browse_next;
                event?
            }
            Step::Place => self.place(&mut j, &mut next),
            Step::Attempt => {
                j.payment_id = self.new_id("pay");
                next = self.after(Step::Outcome, SEC, 6 * SEC);
                ("payment.attempted", self.payment(&j))
            }
            Step::Outcome if self.chance(fail_p) => {
                let mut data = self.payment(&j);
                let decline = if testing { 0 } else { self.rng.random() };
                let (code, reason) = pick(DECLINES, decline);
                if let Some(m) = data.as_object_mut() {
                    m.insert("error_code".into(), code.into());
                    m.insert("reason".into(), reason.into());
                }
                j.attempts_left = j.attempts_left.saturating_sub(1);
                next = if testing && j.attempts_left > 0 {
                    self.after(Step::Attempt, 5 * SEC, 40 * SEC)
                } else if j.attempts_left > 0 && self.chance(P_RETRY) {
                    if self.chance(0.5) {
                        j.card = mix(j.card); // tries another card
                    }
                    self.after(Step::Attempt, 30 * SEC, 5 * MIN)
                } else {
                    self.after(Step::Cancel("payment_failed"), 10 * MIN, HOUR)
                };
                ("payment.failed", data)
            }
            Step::Outcome => {
                next = self.after(Step::Paid, 300, 3 * SEC);
                ("payment.succeeded", self.payment(&j))
            }
            Step::Paid => {
                next = self.after(Step::Fulfil, HOUR, 10 * HOUR);
                let amount = self.money(j.total);
                let payment_id = &j.payment_id;
                let data =
                    json!({ "order_id": order_id, "amount": amount, "payment_id": payment_id });
                ("order.paid", data)
            }
            Step::Fulfil => {
                next = self.after(Step::Ship, 2 * HOUR, 20 * HOUR);
                let data = json!({ "order_id": order_id, "location": "main" });
                ("order.fulfilled", data)
            }
            Step::Ship => {
                next = self.after(Step::Deliver, DAY, 4 * DAY);
                let (carrier, slug) = pick(CARRIERS, mix(j.order_no));
                let tracking = format!("{:016}", mix(self.seed ^ j.order_no) % 10u64.pow(16));
                let url = format!("https://track.example.com/{slug}/{tracking}");
                let data = json!({ "order_id": order_id, "carrier": carrier, "location": "main",
                    "tracking_number": tracking, "tracking_url": url });
                ("order.shipped", data)
            }
            Step::Deliver => {
                if self.chance(P_RETURN) {
                    // Sends back one line, or everything.
                    j.returned = if j.lines.len() > 1 && self.chance(0.7) {
                        vec![j.lines[self.rng.random_range(0..j.lines.len())]]
                    } else {
                        j.lines.clone()
                    };
                    j.return_id = self.new_id("ret");
                    next = self.after(Step::RequestReturn, DAY, 14 * DAY);
                }
                ("order.delivered", json!({ "order_id": order_id }))
            }
            Step::RequestReturn => {
                next = self.after(Step::ReceiveReturn, 2 * DAY, 7 * DAY);
                let reason = pick(RETURN_REASONS, self.rng.random());
                let data = json!({ "order_id": order_id, "return_id": j.return_id,
                    "lines": returned(&j.returned), "reason": reason });
                ("return.requested", data)
            }
            Step::ReceiveReturn => {
                next = self.after(Step::Refund, 2 * HOUR, 2 * DAY);
                let data = json!({ "order_id": order_id, "return_id": j.return_id,
                    "lines": returned(&j.returned), "location": "main" });
                ("return.received", data)
            }
            Step::Refund => {
                let amount = self.money(self.value_of(&j.returned).min(j.total));
                let data = json!({ "order_id": order_id, "amount": amount, "reason": "returned",
                    "lines": returned(&j.returned) });
                ("order.refunded", data)
            }
            Step::Cancel(reason) => {
                let data = json!({ "order_id": order_id, "reason": reason });
                ("order.cancelled", data)
            }
        };
        if let Some((step, delay)) = next {
            j.step = step;
            self.schedule(delay, Some(j));
        }
        Some(event)
    }

    /// One browsing action, or the end of browsing: check out, or leave (abandoning any cart).
    fn browse(&mut self, j: &mut Journey) -> (Emit, Next) {
        let delay = 4 * SEC + self.exp(35_000.0) as i64;
        let next = Some((Step::Browse, delay));
        if let Some(p) = j.viewed.take()
            && self.chance(P_ADD_AFTER_VIEW)
        {
            let r: f64 = self.rng.random();
            let quantity = 1 + u32::from(r >= 0.85) + u32::from(r >= 0.95);
            match j.lines.iter_mut().find(|(q, _)| *q == p) {
                Some(line) => line.1 += quantity,
                None => j.lines.push((p, quantity)),
            }
            if j.cart_id.is_none() {
                j.cart_id = Some(self.new_id("cart"));
            }
            let data = self.cart_item(j, p, quantity);
            return (Some(("cart.item_added", data)), next);
        }
        if j.budget == 0 {
            if j.lines.is_empty() || !self.chance(P_CHECKOUT) {
                return (None, None);
            }
            let data = json!({ "cart_id": j.cart_id, "checkout_id": self.new_id("chk"),
                "items": self.lines_json(&j.lines), "cart_value": self.money(self.value_of(&j.lines)) });
            let delay = self.rng.random_range(40 * SEC..=5 * MIN);
            let next = self.chance(P_PLACE).then_some((Step::Place, delay));
            return (Some(("checkout.started", data)), next);
        }
        j.budget -= 1;
        let r: f64 = self.rng.random();
        let event = if j.pages == 0 || r < 0.18 {
            j.pages += 1;
            ("page.viewed", self.page(j.pages == 1))
        } else if r < 0.30 {
            let p = self.popular_product();
            let pr = self.products[p as usize];
            let noun = CATEGORIES[usize::from(pr.category)].nouns[usize::from(pr.noun)];
            let results = self.rng.random_range(0..=64u32).saturating_sub(4); // 8% find nothing
            let data = json!({ "query": noun.to_ascii_lowercase(), "results": results });
            ("product.searched", data)
        } else if r < 0.34 && !j.lines.is_empty() {
            let (p, q) = j.lines.remove(self.rng.random_range(0..j.lines.len()));
            ("cart.item_removed", self.cart_item(j, p, q))
        } else if r < 0.36 && !j.lines.is_empty() {
            let data = json!({ "cart_id": j.cart_id, "items": self.lines_json(&j.lines),
                "cart_value": self.money(self.value_of(&j.lines)) });
            ("cart.viewed", data)
        } else {
            let p = self.popular_product();
            j.viewed = Some(p);
            let (price, cat, name) = self.item(p);
            let data = json!({ "product_id": product_id(p), "sku": sku(p), "name": name,
                "category": cat.name, "price": self.money(price),
                "url": format!("{SHOP}/p/{}", product_id(p)) });
            ("product.viewed", data)
        };
        (Some(event), next)
    }

    fn page(&mut self, landing: bool) -> Value {
        let (path, title) = if self.chance(0.5) {
            let cat = &CATEGORIES[self.rng.random_range(0..CATEGORIES.len())];
            (format!("/c/{}", cat.slug), cat.name)
        } else {
            let page = pick(PAGES, self.rng.random());
            let (path, title) = if landing { PAGES[0] } else { page };
            (path.to_owned(), title)
        };
        let mut data = json!({ "url": format!("{SHOP}{path}"), "path": path, "title": title });
        let referrer = pick(REFERRERS, self.rng.random());
        if landing
            && !referrer.is_empty()
            && let Some(m) = data.as_object_mut()
        {
            m.insert("referrer".into(), referrer.into());
        }
        data
    }
}

impl Iterator for Generator {
    type Item = Value;

    /// Never `None`: an arrival is always scheduled.
    fn next(&mut self) -> Option<Value> {
        while let Some(((at, _), journey)) = self.queue.pop_first() {
            self.now = at;
            let Some(journey) = journey else {
                self.arrive();
                continue;
            };
            let customer = journey.customer;
            self.subject = None;
            if let Some((ty, data)) = self.advance(journey) {
                let mut e = self.envelope(ty, customer, data);
                if let Some(s) = self.subject.take() {
                    e["subject"] = s.into();
                }
                return Some(e);
            }
        }
        None
    }
}

mod orders;

#[cfg(test)]
mod tests;
