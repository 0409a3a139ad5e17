//! The lawful-access gRPC service (`proto/cdrvault/v1/lawful_access.proto`,
//! tonic): the thin face of the [`Desk`]. Each method takes the caller's
//! credentials ([`auth`]), converts the message ([`convert`]), runs the
//! desk's operation on the blocking pool (registry, keys, audit fsyncs and
//! lookups block), and converts the answer or the refusal ([`denial`]).
//!
//! Every call runs through [`AccessService::call`]: authentication (an
//! audited failure), the size check (a message over [`MAX_MESSAGE_BYTES`]
//! is refused and audited under its caller), the operation inside
//! [`Desk::handle`] (which audits every refusal), a registry row refused
//! for its seal, wherever in the call (audited by `Desk::row_refused`), and
//! the call metrics.

pub mod auth;
pub mod convert;
pub mod denial;
mod handlers;
pub mod tls;

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Status};

use crate::access::desk::{Call, Desk};
use crate::access::lookup::LookupEngine;
use crate::access::refusal::{AccessError, Refusal};
use crate::ops::metrics::CallLabels;
use crate::ops::shutdown::Shutdown;
use crate::proto;
use crate::proto::lawful_access_server::LawfulAccessServer;

/// The largest message a call may carry. A larger one (up to
/// [`TRANSPORT_MESSAGE_BYTES`]) is refused as `message_too_large`, and the
/// refusal audited under the caller it names.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// The largest message the server decodes at all; larger ones are refused
/// by the transport before any handler sees them, so they cannot be
/// audited under a caller (nothing of them is read).
pub const TRANSPORT_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Bytes per streamed result chunk.
const CHUNK_BYTES: usize = 64 * 1024;

/// The gRPC service over one desk. Cheap to clone.
#[derive(Clone)]
pub struct AccessService {
    desk: Arc<Desk>,
    /// Triggered by a call that meets a fatal error (a failed fsync).
    shutdown: Option<Shutdown>,
}

impl std::fmt::Debug for AccessService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessService")
    }
}

impl AccessService {
    pub fn new(desk: Arc<Desk>) -> AccessService {
        AccessService { desk, shutdown: None }
    }

    /// Stops the service through `shutdown` when a call meets a fatal error:
    /// an fsync failed, so the state of the disk is unknown (the rule every
    /// background job follows too, [`crate::ops::periodic`]).
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> AccessService {
        self.shutdown = Some(shutdown);
        self
    }

    /// The lookup engine, for the service's cache sweep.
    pub fn lookup_engine(&self) -> Arc<LookupEngine> {
        self.desk.lookup_engine()
    }

    /// The tonic service, with the transport's message size limit applied.
    pub fn into_server(self) -> LawfulAccessServer<AccessService> {
        LawfulAccessServer::new(self).max_decoding_message_size(TRANSPORT_MESSAGE_BYTES)
    }

    /// Every call's path: its credentials, the audited size check, the
    /// operation on the blocking pool, and the call metrics.
    async fn call<B, T>(
        &self,
        method: &'static str,
        request: Request<B>,
        operation: impl FnOnce(&Desk, &mut Call, B) -> Result<T, AccessError> + Send + 'static,
    ) -> Result<T, Status>
    where
        B: prost::Message + Send + 'static,
        T: Send + 'static,
    {
        let credentials = auth::credentials(&request);
        let body = request.into_inner();
        let size = body.encoded_len();
        let desk = Arc::clone(&self.desk);
        let result = tokio::task::spawn_blocking(move || {
            desk.authenticate(&credentials, method)
                .and_then(|mut call| {
                    desk.handle(&mut call, |desk, call| {
                        if size > MAX_MESSAGE_BYTES {
                            return Err(Refusal::MessageTooLarge { size, limit: MAX_MESSAGE_BYTES }.into());
                        }
                        operation(desk, call, body)
                    })
                })
                .inspect_err(|error| desk.row_refused(method, error))
        })
        .await
        .unwrap_or(Err(AccessError::Internal("the call's worker failed")))
        .inspect_err(|error| {
            if error.is_fatal() {
                tracing::error!(method, reason = %error, "fatal error; stopping the service");
                if let Some(shutdown) = &self.shutdown {
                    shutdown.trigger();
                }
            }
        })
        .map_err(denial::status);
        let outcome = match &result {
            Ok(_) => "ok",
            Err(status) => denial::code_name(status.code()),
        };
        self.desk.metrics().access_calls.get_or_create(&CallLabels { method, outcome }).inc();
        result
    }
}

/// Serves the API on `listener` until `shutdown` completes, over TLS when
/// `tls` is given.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: AccessService,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(crate::ops::http::accepted_without_delay(listener), shutdown)
        .await
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<proto::ResultChunk, Status>> + Send>>;

/// The info message followed by the bytes in chunks.
fn chunks(info: proto::RequestInfo, bytes: Vec<u8>) -> ChunkStream {
    use proto::result_chunk::Part;
    let mut parts = vec![Ok(proto::ResultChunk { part: Some(Part::Info(info)) })];
    parts.extend(bytes.chunks(CHUNK_BYTES).map(|c| Ok(proto::ResultChunk { part: Some(Part::Data(c.to_vec())) })));
    Box::pin(tokio_stream::iter(parts))
}
