//! The event exchange: what happened (a container created, a task exited) goes out to every
//! subscriber whose filters match, as containerd's events service does.
//!
//! Publishing never waits for subscribers: each gets a bounded queue and a subscriber that falls
//! behind by more than [`QUEUE`] events loses the oldest ones (it is told how many in the log).

use std::time::SystemTime;

use berth_proto::containerd::types::Envelope;
use prost::Message;
use prost_types::Any;
use tokio::sync::broadcast;

use crate::filters::{Adaptor, FilterSet};
use crate::{Error, Result, ident};

/// Events a slow subscriber may fall behind by before it loses some.
pub const QUEUE: usize = 4096;

/// The exchange every publisher and subscriber shares.
#[derive(Clone)]
pub struct Exchange {
    sender: broadcast::Sender<Envelope>,
}

impl Default for Exchange {
    fn default() -> Self {
        Self::new()
    }
}

/// Checks a topic as containerd does: `/` followed by `/`-separated identifiers.
pub fn validate_topic(topic: &str) -> Result<()> {
    let rest = topic
        .strip_prefix('/')
        .ok_or_else(|| Error::InvalidArgument(format!("event topic {topic:?} must start with '/'")))?;
    if rest.is_empty() {
        return Err(Error::InvalidArgument(format!("event topic {topic:?} must have at least one component")));
    }
    for component in rest.split('/') {
        ident::validate(component).map_err(|e| e.context(format!("event topic {topic:?}")))?;
    }
    Ok(())
}

/// Packs an event message as containerd does: the type URL is the message's full name.
pub fn pack<M: Message>(full_name: &str, event: &M) -> Any {
    Any { type_url: full_name.to_string(), value: event.encode_to_vec() }
}

impl Exchange {
    /// A new exchange with no subscribers.
    pub fn new() -> Self {
        Self { sender: broadcast::channel(QUEUE).0 }
    }

    /// Publishes `event` on `topic` in `namespace`, stamped now.
    pub fn publish(&self, namespace: &str, topic: &str, event: Any) -> Result<()> {
        ident::validate(namespace).map_err(|e| e.context("event namespace"))?;
        validate_topic(topic)?;
        self.send(Envelope {
            timestamp: Some(SystemTime::now().into()),
            namespace: namespace.into(),
            topic: topic.into(),
            event: Some(event),
        });
        Ok(())
    }

    /// Forwards an envelope made elsewhere, keeping its timestamp.
    pub fn forward(&self, mut envelope: Envelope) -> Result<()> {
        ident::validate(&envelope.namespace).map_err(|e| e.context("event namespace"))?;
        validate_topic(&envelope.topic)?;
        if envelope.timestamp.is_none() {
            envelope.timestamp = Some(SystemTime::now().into());
        }
        self.send(envelope);
        Ok(())
    }

    fn send(&self, envelope: Envelope) {
        tracing::debug!(topic = %envelope.topic, namespace = %envelope.namespace, "event");
        // An error only means nobody is subscribed right now.
        let _ = self.sender.send(envelope);
    }

    /// A subscription to the events matching `filters` (empty: all).
    pub fn subscribe(&self, filters: FilterSet) -> Subscription {
        Subscription { receiver: self.sender.subscribe(), filters }
    }
}

/// Envelopes as filters see them: `topic`, `namespace`, and `event.*` is not looked into.
struct EnvelopeFields<'a>(&'a Envelope);

impl Adaptor for EnvelopeFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str)? {
            "topic" => Some(self.0.topic.clone()),
            "namespace" => Some(self.0.namespace.clone()),
            _ => None,
        }
    }
}

/// One subscriber's stream of matching envelopes.
pub struct Subscription {
    receiver: broadcast::Receiver<Envelope>,
    filters: FilterSet,
}

impl Subscription {
    /// The next matching envelope; None once the exchange is gone.
    pub async fn next(&mut self) -> Option<Envelope> {
        loop {
            match self.receiver.recv().await {
                Ok(envelope) if self.filters.matches(&EnvelopeFields(&envelope)) => return Some(envelope),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(lost)) => {
                    tracing::warn!(lost, "event subscriber fell behind; oldest events dropped");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_containerd_rules() {
        validate_topic("/containers/create").unwrap();
        validate_topic("/tasks/exec-added").unwrap();
        for bad in ["", "containers", "/", "/a//b", "/a/-b"] {
            assert!(validate_topic(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn subscribers_get_what_their_filters_match() {
        let exchange = Exchange::new();
        let mut all = exchange.subscribe(FilterSet::default());
        let mut containers = exchange.subscribe(FilterSet::parse_all(&["topic~=^/containers/"]).unwrap());
        let mut ns = exchange.subscribe(FilterSet::parse_all(&["namespace==b,topic==/x/y"]).unwrap());
        let any = Any { type_url: "t".into(), value: vec![] };
        exchange.publish("a", "/namespaces/create", any.clone()).unwrap();
        exchange.publish("b", "/containers/create", any.clone()).unwrap();
        exchange.publish("b", "/x/y", any.clone()).unwrap();
        assert!(exchange.publish("b", "no-slash", any.clone()).is_err());
        assert_eq!(all.next().await.unwrap().topic, "/namespaces/create");
        assert_eq!(all.next().await.unwrap().topic, "/containers/create");
        assert_eq!(containers.next().await.unwrap().namespace, "b");
        let got = ns.next().await.unwrap();
        assert_eq!((got.namespace.as_str(), got.topic.as_str()), ("b", "/x/y"));
        assert!(got.timestamp.is_some());
    }
}
