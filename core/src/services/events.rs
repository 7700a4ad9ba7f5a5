//! `containerd.services.events.v1.Events`: publish, forward and subscribe (`ctr events`).

use std::pin::Pin;

use berth_proto::containerd::services::events::v1::events_server::{Events, EventsServer};
use berth_proto::containerd::services::events::v1::{ForwardRequest, PublishRequest, SubscribeRequest};
use berth_proto::containerd::types::Envelope;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::{GrpcService, exchange_id, namespace};
use crate::Error;
use crate::events::Exchange;
use crate::filters::FilterSet;
use crate::plugin::{InitError, Instance, NoConfig, PluginKind, Registration, Requirement};

struct EventsService {
    exchange: Exchange,
}

#[tonic::async_trait]
impl Events for EventsService {
    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        let request = request.into_inner();
        let event = request.event.ok_or_else(|| Error::InvalidArgument("event must be set".into()))?;
        self.exchange.publish(&ns, &request.topic, event)?;
        Ok(Response::new(()))
    }

    async fn forward(&self, request: Request<ForwardRequest>) -> Result<Response<()>, Status> {
        let envelope =
            request.into_inner().envelope.ok_or_else(|| Error::InvalidArgument("envelope must be set".into()))?;
        self.exchange.forward(envelope)?;
        Ok(Response::new(()))
    }

    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<Envelope, Status>> + Send>>;

    async fn subscribe(&self, request: Request<SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let filters = FilterSet::parse_all(&request.into_inner().filters)?;
        let subscription = self.exchange.subscribe(filters);
        let stream = futures::stream::unfold(subscription, |mut s| async move { s.next().await.map(|e| (Ok(e), s)) });
        Ok(Response::new(Box::pin(stream)))
    }
}

pub(super) fn registration() -> Registration {
    Registration::new::<NoConfig, _, _>(PluginKind::Service, "events", |ctx| {
        let exchange = ctx.get::<Exchange>(&exchange_id());
        let grpc = ctx.daemon_config().grpc.clone();
        async move {
            let exchange = (*exchange.ok_or_else(|| InitError::Failed("event exchange not loaded".into()))?).clone();
            let server = EventsServer::new(EventsService { exchange })
                .max_decoding_message_size(grpc.max_recv_message_size)
                .max_encoding_message_size(grpc.max_send_message_size);
            Ok(Instance::new(GrpcService::new("containerd.services.events.v1.Events", server)))
        }
    })
    .requires(Requirement::Plugin(exchange_id()))
    .describe("containerd.services.events.v1.Events")
}
