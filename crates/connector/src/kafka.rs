//! The `kafka` connector: produces one record per attempt to `topic`, keyed by the delivery's
//! partition key (so one customer's messages stay in order on one partition), with the webhook
//! connector's JSON body as the value and the delivery id in the `storeline-delivery-id` header
//! (Kafka has no idempotency key across producers: consumers drop duplicates by that header).
//!
//! The producer is idempotent (`enable.idempotence = true`): librdkafka's resends inside one
//! attempt, after a lost ack, carry sequence numbers the broker drops duplicates by, so an
//! attempt writes at most one record. An attempt lasts at most the connector's `timeout`
//! (`message.timeout.ms`, and a cut-off here), and is acknowledged by all in-sync replicas
//! (idempotence implies `acks = all`). Keys are hashed like the Java client's
//! (`murmur2_random`), so records land where Java producers and Kafka Streams expect them.
//! `properties` override any of these (`enable.idempotence = "false"` for a broker without
//! idempotent producers; tansu 0.6 and Kafka since 0.11 have them).
//!
//! Classification: an ack is delivered; a record or a setting the broker will never take (too
//! large, invalid, not authorized) is rejected; everything else (timeouts, brokers down, an
//! unknown topic that may yet be created, a full local queue) is retried.

use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::config::KafkaConfig;
use crate::webhook::Webhook;
use crate::{Connector, Delivery, Error, Result, Verdict, clip};

/// What a missing ack usually means.
const UNACKED: &str = "(brokers down or unreachable, or the topic does not exist)";

/// The header carrying [`Delivery::id`].
pub const DELIVERY_ID_HEADER: &str = "storeline-delivery-id";

pub struct Kafka {
    name: String,
    topic: String,
    timeout: Duration,
    config: ClientConfig,
    /// Replaced when librdkafka reports a fatal error (an idempotent producer that lost its
    /// sequence cannot produce again; a new one gets a new producer id).
    producer: Mutex<FutureProducer>,
}

impl Kafka {
    pub fn new(name: &str, c: &KafkaConfig, timeout: Duration) -> Result<Kafka> {
        let mut config = ClientConfig::new();
        let timeout_ms = timeout.as_millis().clamp(1, i32::MAX as u128);
        config
            .set("bootstrap.servers", &c.brokers)
            .set("client.id", format!("storeline-{name}"))
            .set("message.timeout.ms", timeout_ms.to_string())
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random");
        for (k, v) in &c.properties {
            config.set(k, v);
        }
        // Creating checks every setting but connects to nothing yet.
        let producer = create(&config).map_err(|e| Error::build(name, e))?;
        Ok(Kafka {
            name: name.to_owned(),
            topic: c.topic.clone(),
            timeout,
            config,
            producer: Mutex::new(producer),
        })
    }

    /// Swaps in a new producer after `failed` reported a fatal error, unless a concurrent
    /// attempt already did. Dropping the last handle on the old one purges its queue (those
    /// attempts end as retries) and blocks briefly, so this handle is dropped off the runtime;
    /// attempts still in flight hold their own.
    fn replace_producer(&self, failed: &FutureProducer) {
        let mut current = self.producer.lock();
        if current.client().native_ptr() != failed.client().native_ptr() {
            return;
        }
        match create(&self.config) {
            Ok(fresh) => {
                let old = std::mem::replace(&mut *current, fresh);
                drop(current);
                tokio::task::spawn_blocking(move || drop(old));
            }
            Err(e) => {
                tracing::warn!(connector = %self.name, error = %e, "cannot recreate the kafka producer");
            }
        }
    }
}

fn create(config: &ClientConfig) -> Result<FutureProducer, String> {
    config
        .create::<FutureProducer>()
        .map_err(|e| format!("kafka producer settings: {e}"))
}

impl Connector for Kafka {
    async fn attempt(&self, d: &Delivery) -> Verdict {
        let body = match serde_json::to_vec(&Webhook::body(d)) {
            Ok(b) => b,
            Err(e) => {
                return Verdict::Reject {
                    detail: format!("cannot encode the payload: {e}"),
                };
            }
        };
        let headers = OwnedHeaders::new().insert(Header {
            key: DELIVERY_ID_HEADER,
            value: Some(d.id.as_str()),
        });
        let record = FutureRecord::to(&self.topic)
            .key(d.key.as_bytes())
            .payload(&body)
            .headers(headers);
        // A clone shares the one producer (an `Arc` inside); the lock is not held across the
        // await.
        let producer = self.producer.lock().clone();
        // No waiting for room in a full local queue: that is back-pressure the worker should
        // see as a retry. librdkafka checks `message.timeout.ms` about once a second, so the
        // attempt is also cut off here at `timeout`; a record still queued then may yet be
        // written, a duplicate the id header identifies, as after any lost ack.
        let send = producer.send(record, Timeout::After(Duration::ZERO));
        match tokio::time::timeout(self.timeout, send).await {
            Err(_) => Verdict::retry(format!(
                "topic {}: no ack within {} {UNACKED}",
                self.topic,
                humantime::format_duration(self.timeout)
            )),
            Ok(Ok(ack)) => Verdict::Delivered {
                detail: format!("partition {} offset {}", ack.partition, ack.offset),
            },
            Ok(Err((e, _))) => {
                if let Some((code, why)) = producer.client().fatal_error() {
                    tracing::warn!(connector = %self.name, ?code, %why, "kafka producer failed fatally; recreating it");
                    self.replace_producer(&producer);
                } else if lost_producer_id(&e) {
                    // The broker no longer knows this producer's id (seen with tansu after a
                    // topic appears): only a new producer, with a new id, gets through.
                    tracing::warn!(connector = %self.name, error = %e, "kafka producer fenced; recreating it");
                    self.replace_producer(&producer);
                }
                classify(&e, &self.topic)
            }
        }
    }
}

/// Whether the error means the idempotent producer's id or epoch is no longer valid.
fn lost_producer_id(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::ProducerFenced
                | C::InvalidProducerEpoch
                | C::UnknownProducerId
                | C::OutOfOrderSequenceNumber
        )
    )
}

/// The verdict for a failed produce: reject what the broker will never take, retry the rest.
pub fn classify(e: &KafkaError, topic: &str) -> Verdict {
    use RDKafkaErrorCode as C;
    let detail = clip(&format!("topic {topic}: {e}"), 300);
    let Some(code) = e.rdkafka_error_code() else {
        return Verdict::retry(detail);
    };
    match code {
        // The record itself.
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::MessageBatchTooLarge
        | C::InvalidMessage
        | C::BadMessage
        | C::InvalidRecord
        | C::InvalidTimestamp
        | C::UnsupportedForMessageFormat
        | C::PolicyViolation
        // The topic's name, the settings, the credentials: fixing them is a config change,
        // after which the dead-lettered deliveries can be replayed.
        | C::InvalidTopic
        | C::InvalidRequiredAcks
        | C::UnsupportedCompressionType
        | C::InvalidConfig
        | C::InvalidArgument
        | C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::Authentication => Verdict::Reject { detail },
        C::MessageTimedOut => Verdict::retry(format!("{detail} {UNACKED}")),
        _ => Verdict::retry(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified() {
        let p = |c| KafkaError::MessageProduction(c);
        for c in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::InvalidTopic,
        ] {
            assert_eq!(classify(&p(c), "t").outcome(), "reject", "{c:?}");
        }
        for c in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::Fatal,
        ] {
            assert_eq!(classify(&p(c), "t").outcome(), "retry", "{c:?}");
        }
    }
}
