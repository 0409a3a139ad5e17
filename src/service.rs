//! The lawful-access gRPC service (`proto/cdrvault/v1/lawful_access.proto`).
//!
//! Every call is authenticated by its bearer token, authorised against role
//! and object, and audited: failures and refusals as well as successes. The
//! order of a disclosure is fixed and is the point of this module:
//!
//! 1. scope check against the warrant ([`AccessStore::check_request`]);
//! 2. lookup ([`crate::lookup`]) off the async workers, then rendering into
//!    bytes whose SHA-256 is computed at once;
//! 3. the result sealed at rest under a key of its own, the request recorded
//!    and audited with the digest;
//! 4. on fetch, a `result_delivered` entry made durable, and only then the
//!    first byte sent.
//!
//! If the audit trail cannot be written, nothing is disclosed: the call
//! fails with `unavailable`. Refusals name a stable reason code in the
//! status message and the `cdrvault-reason` trailer; a warrant or request
//! of another authority is reported as not found, so its existence does not
//! leak, while the audit entry keeps the precise reason.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use ring::rand::{SecureRandom, SystemRandom};
use tokio_stream::Stream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status};

use crate::access::{
    AccessError, AccessStore, Decision, NewWarrant, Principal, Refusal, RequestScope, Role, category_name,
    parse_category,
};
use crate::audit::{AuditEvent, AuditTrail};
use crate::clock::Clock;
use crate::deliver::{self, ResultFormat, ResultHeader};
use crate::durable::{self, FileMode};
use crate::keys::{KeyStore, RecordKeyScope};
use crate::lookup::{FoundRecord, LookupEngine, Query};
use crate::metrics::{CallLabels, Metrics, ReasonLabel};
use crate::models::{Category, IdentifierKind, PartitionDate, TimestampMicros};
use crate::orders::OrderStore;
use crate::orders::{TargetInput, canonical_value};
use crate::proto;
use crate::proto::lawful_access_server::{LawfulAccess, LawfulAccessServer};
use crate::pseudonymise::Tokeniser;
use crate::registry::RegistryError;
use crate::registry::sqlite::SqliteRegistry;
use crate::requests::{AGE_BUCKETS, RequestError, RequestRecord, RequestRegistry, RequestStatus, age_bucket};

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
/// The directory of sealed results in the state directory.
pub const RESULTS_DIR: &str = "results";
/// Longest accepted free-text field (references, names, reasons).
const MAX_TEXT: usize = 512;

/// How the service behaves; `[access]` in the configuration.
#[derive(Debug, Clone)]
pub struct AccessSettings {
    /// The operator's id in result headers (ETSI CSPID).
    pub csp_id: String,
    /// Requests and fetches per minute and authority; 0 means no limit.
    pub requests_per_minute: u32,
    /// Most targets in one request or warrant.
    pub max_targets: usize,
    /// How long a sealed result stays fetchable.
    pub result_keep: Duration,
    /// The retention period, to tell "beyond retention" from "no data".
    pub retention_days: u32,
}

impl Default for AccessSettings {
    fn default() -> Self {
        AccessSettings {
            csp_id: "cdrvault".into(),
            requests_per_minute: 60,
            max_targets: 64,
            result_keep: Duration::from_secs(7 * 86_400),
            retention_days: 365,
        }
    }
}

/// A refusal on its way to the caller: status code, reason code, detail.
#[derive(Debug)]
struct Denial {
    code: Code,
    reason: &'static str,
    detail: String,
    /// The caller sees `not_found` instead of the precise reason.
    hide_as_not_found: bool,
}

impl Denial {
    fn new(code: Code, reason: &'static str, detail: impl Into<String>) -> Denial {
        Denial { code, reason, detail: detail.into(), hide_as_not_found: false }
    }

    fn status(&self) -> Status {
        let (code, reason, detail) = if self.hide_as_not_found {
            (Code::NotFound, "not_found", "no such object".to_string())
        } else {
            (self.code, self.reason, self.detail.clone())
        };
        let mut metadata = MetadataMap::new();
        metadata.insert("cdrvault-reason", MetadataValue::from_static(reason));
        Status::with_metadata(code, format!("{reason}: {detail}"), metadata)
    }
}

impl From<Refusal> for Denial {
    fn from(refusal: Refusal) -> Denial {
        let detail = refusal.to_string();
        let (code, reason) = match refusal {
            Refusal::MissingRole(_) => (Code::PermissionDenied, "missing_role"),
            Refusal::OtherAuthority => (Code::NotFound, "other_authority"),
            Refusal::UnknownWarrant => (Code::NotFound, "unknown_warrant"),
            Refusal::NotApproved(_) => (Code::FailedPrecondition, "warrant_not_approved"),
            Refusal::WarrantExpired => (Code::FailedPrecondition, "warrant_expired"),
            Refusal::SelfApproval => (Code::PermissionDenied, "self_approval"),
            Refusal::AlreadyDecided => (Code::FailedPrecondition, "already_decided"),
            Refusal::TargetOutOfScope(_) => (Code::PermissionDenied, "target_out_of_scope"),
            Refusal::MalformedTarget(_) => (Code::InvalidArgument, "malformed_target"),
            Refusal::WindowOutOfScope => (Code::PermissionDenied, "window_out_of_scope"),
            Refusal::EmptyWindow => (Code::InvalidArgument, "empty_window"),
            Refusal::CategoryOutOfScope(_) => (Code::PermissionDenied, "category_out_of_scope"),
            Refusal::EmptyScope => (Code::InvalidArgument, "empty_scope"),
        };
        Denial { code, reason, detail, hide_as_not_found: matches!(refusal, Refusal::OtherAuthority) }
    }
}

impl From<AccessError> for Denial {
    fn from(error: AccessError) -> Denial {
        match error {
            AccessError::Refused(refusal) => refusal.into(),
            AccessError::BadAuthority(id) => Denial::new(
                Code::InvalidArgument,
                "bad_authority",
                format!("authority {id} is unknown, taken or malformed"),
            ),
            AccessError::BadCertificate => Denial::new(
                Code::InvalidArgument,
                "bad_certificate",
                "the certificate digest is not 64 hex digits, or the principal is unknown",
            ),
            AccessError::Sealing => {
                Denial::new(Code::FailedPrecondition, "warrant_closed", "the warrant's targets are destroyed")
            }
            AccessError::Registry(RegistryError::Conflict) => {
                Denial::new(Code::AlreadyExists, "duplicate", "an object with that reference already exists")
            }
            AccessError::Registry(e) => internal(e),
            AccessError::Keys(e) => internal(e),
        }
    }
}

fn internal(error: impl std::fmt::Display) -> Denial {
    // Errors of the registry or the keystore carry paths and ids, never an
    // identifier; they are logged, and the caller gets a generic message.
    tracing::error!(%error, "lawful-access call failed");
    Denial::new(Code::Internal, "internal", "internal error; see the service log")
}

/// The outcome of a call's synchronous part.
type Outcome<T> = Result<T, Status>;

/// The gRPC service. Cheap to clone.
#[derive(Clone)]
pub struct AccessService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AccessService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessService")
    }
}

struct Inner {
    store: AccessStore,
    requests: Arc<dyn RequestRegistry>,
    keys: Arc<KeyStore>,
    audit: Arc<AuditTrail>,
    engine: Arc<LookupEngine>,
    orders: OrderStore,
    results_dir: PathBuf,
    clock: Arc<dyn Clock>,
    settings: AccessSettings,
    limiter: Mutex<HashMap<String, Bucket>>,
    rng: SystemRandom,
    metrics: Arc<Metrics>,
}

/// A token bucket: `requests_per_minute` deep, refilled continuously.
struct Bucket {
    tokens: f64,
    at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Durable(#[from] crate::durable::DurableError),
    #[error(transparent)]
    Orders(#[from] crate::orders::OrderError),
}

impl AccessService {
    /// Opens the embedded SQLite registry in `state_dir` and serves lookups
    /// over `data_dir`; sealed results go to `state_dir/results`.
    pub fn new(
        data_dir: &Path,
        state_dir: &Path,
        keys: Arc<KeyStore>,
        audit: Arc<AuditTrail>,
        clock: Arc<dyn Clock>,
        settings: AccessSettings,
    ) -> Result<AccessService, ServiceError> {
        let results_dir = state_dir.join(RESULTS_DIR);
        durable::create_dir_all(&results_dir)?;
        let registry = Arc::new(SqliteRegistry::open(state_dir)?);
        let engine_keys = Arc::clone(&keys);
        let inner = Inner {
            store: AccessStore::with_registry(registry.clone()),
            requests: registry,
            keys,
            audit,
            engine: Arc::new(LookupEngine::new(data_dir.to_path_buf(), Arc::clone(&engine_keys))),
            orders: OrderStore::open(state_dir)?,
            results_dir,
            clock,
            settings,
            limiter: Mutex::new(HashMap::new()),
            rng: SystemRandom::new(),
            metrics: Metrics::new(),
        };
        Ok(AccessService { inner: Arc::new(inner) })
    }

    /// Counts calls, refusals, lookup time and disclosed records into
    /// `metrics` (the process's `/metrics`). Call before serving.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> AccessService {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.metrics = metrics;
        }
        self
    }

    /// Counts a finished call by method and outcome.
    fn observed<T>(&self, method: &'static str, result: Outcome<T>) -> Outcome<T> {
        let outcome = match &result {
            Ok(_) => "ok",
            Err(status) => code_name(status.code()),
        };
        self.inner.metrics.access_calls.get_or_create(&CallLabels { method, outcome }).inc();
        result
    }

    /// The lookup engine, for the service's cache sweep.
    pub fn lookup_engine(&self) -> Arc<LookupEngine> {
        Arc::clone(&self.inner.engine)
    }

    /// The tonic service, with the transport's message size limit applied.
    pub fn into_server(self) -> LawfulAccessServer<AccessService> {
        LawfulAccessServer::new(self).max_decoding_message_size(TRANSPORT_MESSAGE_BYTES)
    }

    /// Every call's path: its credentials, the audited size check, the
    /// work on the blocking pool, and the call metrics.
    async fn call<B, T>(
        &self,
        method: &'static str,
        request: Request<B>,
        work: impl FnOnce(&Inner, Credentials, B) -> Outcome<T> + Send + 'static,
    ) -> Outcome<T>
    where
        B: prost::Message + Send + 'static,
        T: Send + 'static,
    {
        let credentials = credentials(&request);
        let body = request.into_inner();
        let size = body.encoded_len();
        let result = self
            .run(move |inner| {
                inner.within_size(&credentials, method, size)?;
                work(inner, credentials, body)
            })
            .await;
        self.observed(method, result)
    }

    /// Runs a call's synchronous part (registry, keys, audit fsyncs,
    /// lookups) on the blocking pool, off the async workers.
    async fn run<T: Send + 'static>(&self, work: impl FnOnce(&Inner) -> Outcome<T> + Send + 'static) -> Outcome<T> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .unwrap_or_else(|_| Err(Status::internal("internal: the call's worker failed")))
    }
}

/// The server's TLS: its certificate and key, and optionally the CA whose
/// client certificates it accepts (mTLS; a client may still present a
/// bearer token instead).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    pub fn server_config(&self) -> std::io::Result<tonic::transport::ServerTlsConfig> {
        let identity = tonic::transport::Identity::from_pem(std::fs::read(&self.cert)?, std::fs::read(&self.key)?);
        let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            config = config
                .client_ca_root(tonic::transport::Certificate::from_pem(std::fs::read(ca)?))
                .client_auth_optional(true);
        }
        Ok(config)
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
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown)
        .await
}

/// A status code's name for metric labels (bounded set).
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// What a call presents: a bearer token and, over mTLS, the SHA-256 of the
/// client certificate's DER.
#[derive(Default, Clone)]
struct Credentials {
    token: Option<String>,
    certificate: Option<Vec<u8>>,
}

fn credentials<T>(request: &Request<T>) -> Credentials {
    let token = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    let certificate = request.peer_certs().and_then(|chain| {
        chain.first().map(|leaf| ring::digest::digest(&ring::digest::SHA256, leaf).as_ref().to_vec())
    });
    Credentials { token, certificate }
}

fn rfc3339(t: TimestampMicros) -> String {
    t.to_datetime().map(|d| d.to_rfc3339_opts(SecondsFormat::Secs, true)).unwrap_or_default()
}

fn parse_time(text: &str, field: &'static str) -> Result<DateTime<Utc>, Denial> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| Denial::new(Code::InvalidArgument, "bad_time", format!("{field} is not an RFC 3339 time")))
}

fn parse_categories(texts: &[String]) -> Result<BTreeSet<Category>, Denial> {
    texts
        .iter()
        .map(|t| {
            parse_category(t).ok_or_else(|| {
                Denial::new(Code::InvalidArgument, "bad_category", "categories are traffic, location, device, ip")
            })
        })
        .collect()
}

fn parse_targets(texts: &[String]) -> Result<Vec<TargetInput>, Denial> {
    texts
        .iter()
        .enumerate()
        .map(|(n, t)| {
            TargetInput::parse(t, n + 1).map_err(|_| {
                Denial::new(Code::InvalidArgument, "malformed_target", format!("target {} is not kind:value", n + 1))
            })
        })
        .collect()
}

fn category_names(categories: &BTreeSet<Category>) -> Vec<String> {
    categories.iter().map(|c| category_name(*c).to_string()).collect()
}

fn format_of(value: i32) -> ResultFormat {
    match proto::ResultFormat::try_from(value) {
        Ok(proto::ResultFormat::Csv) => ResultFormat::Csv,
        Ok(proto::ResultFormat::EtsiXml) => ResultFormat::EtsiXml,
        _ => ResultFormat::Json,
    }
}

impl From<ResultFormat> for proto::ResultFormat {
    fn from(format: ResultFormat) -> Self {
        match format {
            ResultFormat::Json => proto::ResultFormat::Json,
            ResultFormat::Csv => proto::ResultFormat::Csv,
            ResultFormat::EtsiXml => proto::ResultFormat::EtsiXml,
        }
    }
}

fn proto_format(format: Option<&str>) -> i32 {
    format.and_then(ResultFormat::parse).map_or(proto::ResultFormat::Unspecified, proto::ResultFormat::from) as i32
}

fn principal_info(principal: &Principal) -> proto::PrincipalInfo {
    proto::PrincipalInfo {
        id: principal.id.clone(),
        name: principal.name.clone(),
        roles: principal.roles.iter().map(|r| r.as_str().to_string()).collect(),
        authority: principal.authority.clone().unwrap_or_default(),
    }
}

fn warrant_info(w: &crate::access::Warrant) -> proto::Warrant {
    proto::Warrant {
        id: w.id.clone(),
        authority: w.authority.clone(),
        reference: w.reference.clone(),
        issued_by: w.issued_by.clone(),
        legal_basis: w.legal_basis.clone(),
        target_kinds: w.target_kinds.iter().map(|k| k.as_str().to_string()).collect(),
        period_start: rfc3339(w.period_start),
        period_end: rfc3339(w.period_end),
        categories: category_names(&w.categories),
        valid_until: rfc3339(w.valid_until),
        status: w.status.as_str().to_string(),
        registered_by: w.registered_by.clone(),
        decided_by: w.decided_by.clone().unwrap_or_default(),
        decision_reason: w.decision_reason.clone().unwrap_or_default(),
    }
}

fn request_info(r: &RequestRecord) -> proto::RequestInfo {
    proto::RequestInfo {
        request_id: r.request_id.clone(),
        warrant: r.warrant.clone(),
        status: r.status.as_str().to_string(),
        records: r.records,
        format: proto_format(r.format.as_deref()),
        sha256: r.sha256.clone().unwrap_or_default(),
        bytes: r.bytes,
        submitted_at: rfc3339(r.submitted_at),
        result_expires: r.result_expires.map(rfc3339).unwrap_or_default(),
        days_unavailable: r.days_unavailable,
    }
}

fn check_text(fields: &[(&'static str, &str)]) -> Result<(), Denial> {
    for (name, value) in fields {
        if value.len() > MAX_TEXT {
            return Err(Denial::new(
                Code::InvalidArgument,
                "request_too_large",
                format!("{name} exceeds {MAX_TEXT} bytes"),
            ));
        }
    }
    Ok(())
}

impl Inner {
    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Appends an audit entry; a trail that cannot be written stops the call.
    fn audit(&self, actor: &str, event: AuditEvent) -> Outcome<()> {
        self.audit.append(actor, &event, self.now()).map(|_| ()).map_err(|error| {
            tracing::error!(%error, "audit trail cannot be written; refusing the call");
            Status::unavailable("audit_unavailable: the audit trail cannot be written")
        })
    }

    /// Audits a refusal and turns it into the caller's status.
    fn refuse(
        &self,
        actor: &str,
        method: &str,
        denial: Denial,
        warrant: Option<&str>,
        request_id: Option<&str>,
    ) -> Status {
        self.metrics.access_refusals.get_or_create(&ReasonLabel { reason: denial.reason }).inc();
        let event = AuditEvent::AccessRefused {
            method: method.to_string(),
            reason: denial.reason.to_string(),
            detail: denial.detail.clone(),
            warrant: warrant.map(str::to_string),
            request_id: request_id.map(str::to_string),
        };
        match self.audit(actor, event) {
            Ok(()) => denial.status(),
            Err(status) => status,
        }
    }

    /// The caller, or an audited `unauthenticated`. A bearer token, when
    /// present, decides; otherwise a client certificate mapped to a principal.
    fn authenticate(&self, credentials: Credentials, method: &str) -> Outcome<Principal> {
        let found = match (&credentials.token, &credentials.certificate) {
            (Some(token), _) => self.store.authenticate(token).map(|p| p.ok_or("unknown_token")),
            (None, Some(certificate)) => {
                self.store.authenticate_certificate(certificate).map(|p| p.ok_or("unknown_certificate"))
            }
            (None, None) => Ok(Err("missing_credentials")),
        };
        let reason = match found {
            Ok(Ok(principal)) => return Ok(principal),
            Ok(Err(reason)) => reason,
            Err(e) => return Err(internal(e).status()),
        };
        self.metrics.access_refusals.get_or_create(&ReasonLabel { reason }).inc();
        self.audit("anonymous", AuditEvent::AuthenticationFailed { method: method.into(), reason: reason.into() })?;
        let mut metadata = MetadataMap::new();
        metadata.insert("cdrvault-reason", MetadataValue::from_static(reason));
        let message = format!("{reason}: a valid bearer token or client certificate is required");
        Err(Status::with_metadata(Code::Unauthenticated, message, metadata))
    }

    /// Refuses a message over [`MAX_MESSAGE_BYTES`], audited under its
    /// caller (or as an authentication failure).
    fn within_size(&self, credentials: &Credentials, method: &str, size: usize) -> Outcome<()> {
        if size <= MAX_MESSAGE_BYTES {
            return Ok(());
        }
        let principal = self.authenticate(credentials.clone(), method)?;
        let denial = Denial::new(
            Code::ResourceExhausted,
            "message_too_large",
            format!("the message has {size} bytes; the limit is {MAX_MESSAGE_BYTES}"),
        );
        Err(self.refuse(&principal.id, method, denial, None, None))
    }

    fn require(&self, principal: &Principal, roles: &[Role], method: &str) -> Outcome<()> {
        if roles.iter().any(|r| principal.has(*r)) {
            return Ok(());
        }
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        let denial =
            Denial::new(Code::PermissionDenied, "missing_role", format!("requires the role {}", names.join(" or ")));
        Err(self.refuse(&principal.id, method, denial, None, None))
    }

    /// Takes one token from the authority's bucket.
    fn within_rate(&self, authority: &str) -> bool {
        let per_minute = self.settings.requests_per_minute;
        if per_minute == 0 {
            return true;
        }
        let now = self.now();
        let depth = f64::from(per_minute);
        let mut buckets = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(authority.to_string()).or_insert(Bucket { tokens: depth, at: now });
        let elapsed = (now - bucket.at).num_milliseconds().max(0) as f64 / 60_000.0;
        bucket.tokens = (bucket.tokens + elapsed * depth).min(depth);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn rate_limit(&self, principal: &Principal, method: &str) -> Outcome<()> {
        let authority = principal.authority.as_deref().unwrap_or(&principal.id);
        if self.within_rate(authority) {
            return Ok(());
        }
        let denial = Denial::new(
            Code::ResourceExhausted,
            "rate_limited",
            format!("more than {} calls a minute for this authority", self.settings.requests_per_minute),
        );
        Err(self.refuse(&principal.id, method, denial, None, None))
    }

    fn who_am_i(&self, credentials: Credentials) -> Outcome<proto::PrincipalInfo> {
        let principal = self.authenticate(credentials, "WhoAmI")?;
        Ok(principal_info(&principal))
    }

    fn create_authority(
        &self,
        credentials: Credentials,
        body: proto::CreateAuthorityRequest,
    ) -> Outcome<proto::Authority> {
        const METHOD: &str = "CreateAuthority";
        let principal = self.authenticate(credentials, METHOD)?;
        if let Err(denial) = check_text(&[("id", &body.id), ("name", &body.name), ("country", &body.country)]) {
            return Err(self.refuse(&principal.id, METHOD, denial, None, None));
        }
        if let Err(e) = self.store.create_authority(&principal, &body.id, &body.country, &body.name, self.now()) {
            return Err(self.refuse(&principal.id, METHOD, e.into(), None, None));
        }
        let country = body.country.to_ascii_uppercase();
        self.audit(
            &principal.id,
            AuditEvent::AuthorityCreated { authority: body.id.clone(), country: country.clone() },
        )?;
        Ok(proto::Authority { id: body.id, country, name: body.name })
    }

    fn create_principal(
        &self,
        credentials: Credentials,
        body: proto::CreatePrincipalRequest,
    ) -> Outcome<proto::CreatePrincipalResponse> {
        const METHOD: &str = "CreatePrincipal";
        let principal = self.authenticate(credentials, METHOD)?;
        let roles: Option<BTreeSet<Role>> = body.roles.iter().map(|r| Role::parse(r)).collect();
        let checked = match roles {
            _ if check_text(&[("name", &body.name), ("authority", &body.authority)]).is_err() => {
                Err(Denial::new(Code::InvalidArgument, "request_too_large", "a field is too long"))
            }
            None => Err(Denial::new(
                Code::InvalidArgument,
                "bad_role",
                "roles are admin, legal_reviewer, authority_handler, auditor, dpo",
            )),
            Some(roles) if roles.is_empty() => {
                Err(Denial::new(Code::InvalidArgument, "bad_role", "name one role at least"))
            }
            Some(roles) if roles.contains(&Role::AuthorityHandler) && body.authority.is_empty() => {
                Err(Denial::new(Code::InvalidArgument, "bad_authority", "an authority handler needs an authority"))
            }
            Some(roles) => Ok(roles),
        };
        let roles = checked.map_err(|d| self.refuse(&principal.id, METHOD, d, None, None))?;
        let certificate = match body.client_certificate_sha256.trim() {
            "" => None,
            text => match hex::decode(text) {
                Ok(bytes) if bytes.len() == 32 => Some(bytes),
                _ => return Err(self.refuse(&principal.id, METHOD, AccessError::BadCertificate.into(), None, None)),
            },
        };
        let authority = (!body.authority.is_empty()).then_some(body.authority.as_str());
        let (created, bearer) = self
            .store
            .create_principal(Some(&principal), &body.name, roles, authority, self.now())
            .map_err(|e| self.refuse(&principal.id, METHOD, e.into(), None, None))?;
        if let Some(certificate) = &certificate {
            self.store
                .bind_certificate(&principal, &created.id, certificate)
                .map_err(|e| self.refuse(&principal.id, METHOD, e.into(), None, None))?;
        }
        self.audit(
            &principal.id,
            AuditEvent::PrincipalCreated {
                principal: created.id.clone(),
                roles: created.roles.iter().map(|r| r.as_str().to_string()).collect(),
                authority: created.authority.clone(),
            },
        )?;
        Ok(proto::CreatePrincipalResponse {
            principal: Some(principal_info(&created)),
            token: bearer.expose().to_string(),
        })
    }

    /// Tokens of targets under the active token key, for audit entries.
    fn target_tokens(&self, targets: &[(IdentifierKind, String)]) -> Vec<String> {
        let tokeniser = Tokeniser::new(self.keys.active_token_key());
        targets.iter().map(|(kind, value)| format!("{:016x}", tokeniser.token(*kind, value.as_bytes()).0)).collect()
    }

    fn register_warrant(
        &self,
        credentials: Credentials,
        body: proto::RegisterWarrantRequest,
    ) -> Outcome<proto::Warrant> {
        const METHOD: &str = "RegisterWarrant";
        let principal = self.authenticate(credentials, METHOD)?;
        let parsed = (|| -> Result<NewWarrant, Denial> {
            check_text(&[
                ("authority", &body.authority),
                ("reference", &body.reference),
                ("issued_by", &body.issued_by),
                ("legal_basis", &body.legal_basis),
            ])?;
            if body.targets.len() > self.settings.max_targets {
                return Err(Denial::new(
                    Code::InvalidArgument,
                    "request_too_large",
                    format!("more than {} targets", self.settings.max_targets),
                ));
            }
            Ok(NewWarrant {
                authority: body.authority.clone(),
                reference: body.reference.clone(),
                issued_by: body.issued_by.clone(),
                legal_basis: body.legal_basis.clone(),
                targets: parse_targets(&body.targets)?,
                period_start: parse_time(&body.period_start, "period_start")?,
                period_end: parse_time(&body.period_end, "period_end")?,
                categories: parse_categories(&body.categories)?,
                valid_until: parse_time(&body.valid_until, "valid_until")?,
            })
        })();
        let new = parsed.map_err(|d| self.refuse(&principal.id, METHOD, d, None, None))?;
        let canonical: Vec<(IdentifierKind, String)> =
            new.targets.iter().filter_map(|t| canonical_value(t.kind, &t.value).map(|v| (t.kind, v))).collect();
        let warrant = self
            .store
            .register_warrant(&principal, new, &self.keys, self.now())
            .map_err(|e| self.refuse(&principal.id, METHOD, e.into(), None, None))?;
        self.audit(
            &principal.id,
            AuditEvent::WarrantRegistered {
                warrant: warrant.id.clone(),
                authority: warrant.authority.clone(),
                reference: warrant.reference.clone(),
                target_kinds: warrant.target_kinds.iter().map(|k| k.as_str().to_string()).collect(),
                target_tokens: self.target_tokens(&canonical),
                period_start: rfc3339(warrant.period_start),
                period_end: rfc3339(warrant.period_end),
                categories: category_names(&warrant.categories),
                valid_until: rfc3339(warrant.valid_until),
            },
        )?;
        Ok(warrant_info(&warrant))
    }

    fn decide_warrant(&self, credentials: Credentials, body: proto::DecideWarrantRequest) -> Outcome<proto::Warrant> {
        const METHOD: &str = "DecideWarrant";
        let principal = self.authenticate(credentials, METHOD)?;
        let warrant = Some(body.warrant.as_str());
        if let Err(denial) = check_text(&[("warrant", &body.warrant), ("reason", &body.reason)]) {
            return Err(self.refuse(&principal.id, METHOD, denial, warrant, None));
        }
        let decision = match (body.approve, body.reason.trim()) {
            (true, _) => Decision::Approve,
            (false, "") => {
                let denial = Denial::new(Code::InvalidArgument, "reason_required", "a rejection needs a reason");
                return Err(self.refuse(&principal.id, METHOD, denial, warrant, None));
            }
            (false, reason) => Decision::Reject(reason.to_string()),
        };
        let decided = self
            .store
            .decide_warrant(&principal, &body.warrant, decision)
            .map_err(|e| self.refuse(&principal.id, METHOD, e.into(), warrant, None))?;
        self.audit(
            &principal.id,
            AuditEvent::WarrantDecided {
                warrant: decided.id.clone(),
                decision: decided.status.as_str().to_string(),
                reason: decided.decision_reason.clone(),
            },
        )?;
        Ok(warrant_info(&decided))
    }

    fn close_warrant(&self, credentials: Credentials, body: proto::CloseWarrantRequest) -> Outcome<proto::Warrant> {
        const METHOD: &str = "CloseWarrant";
        let principal = self.authenticate(credentials, METHOD)?;
        let warrant = Some(body.warrant.as_str());
        self.store
            .close_warrant(&principal, &body.warrant, &self.keys)
            .map_err(|e| self.refuse(&principal.id, METHOD, e.into(), warrant, None))?;
        self.audit(&principal.id, AuditEvent::WarrantClosed { warrant: body.warrant.clone() })?;
        match self.store.warrant(&body.warrant) {
            Ok(Some(w)) => Ok(warrant_info(&w)),
            Ok(None) => Err(Denial::from(Refusal::UnknownWarrant).status()),
            Err(e) => Err(Denial::from(e).status()),
        }
    }

    fn get_warrant(&self, credentials: Credentials, body: proto::GetWarrantRequest) -> Outcome<proto::Warrant> {
        const METHOD: &str = "GetWarrant";
        let principal = self.authenticate(credentials, METHOD)?;
        self.require(&principal, &[Role::LegalReviewer, Role::Auditor, Role::AuthorityHandler], METHOD)?;
        let warrant = Some(body.warrant.as_str());
        let found = self.store.warrant(&body.warrant).map_err(|e| Denial::from(e).status())?;
        let Some(found) = found else {
            return Err(self.refuse(&principal.id, METHOD, Refusal::UnknownWarrant.into(), warrant, None));
        };
        let sees_all = principal.has(Role::LegalReviewer) || principal.has(Role::Auditor);
        if !sees_all && principal.authority.as_deref() != Some(found.authority.as_str()) {
            return Err(self.refuse(&principal.id, METHOD, Refusal::OtherAuthority.into(), warrant, None));
        }
        Ok(warrant_info(&found))
    }

    fn list_warrants(
        &self,
        credentials: Credentials,
        body: proto::ListWarrantsRequest,
    ) -> Outcome<proto::ListWarrantsResponse> {
        const METHOD: &str = "ListWarrants";
        let principal = self.authenticate(credentials, METHOD)?;
        let authority = (!body.authority.is_empty()).then_some(body.authority.as_str());
        let warrants = self
            .store
            .list_warrants(&principal, authority)
            .map_err(|e| self.refuse(&principal.id, METHOD, e.into(), None, None))?;
        Ok(proto::ListWarrantsResponse { warrants: warrants.iter().map(warrant_info).collect() })
    }

    fn list_requests(
        &self,
        credentials: Credentials,
        body: proto::ListRequestsRequest,
    ) -> Outcome<proto::ListRequestsResponse> {
        const METHOD: &str = "ListRequests";
        let principal = self.authenticate(credentials, METHOD)?;
        self.require(&principal, &[Role::AuthorityHandler, Role::Auditor], METHOD)?;
        let asked = (!body.authority.is_empty()).then_some(body.authority.as_str());
        let authority = if principal.has(Role::Auditor) { asked } else { principal.authority.as_deref() };
        if !principal.has(Role::Auditor) && asked.is_some() && asked != authority {
            return Ok(proto::ListRequestsResponse::default());
        }
        let requests = self.requests.list(authority).map_err(|e| internal(e).status())?;
        Ok(proto::ListRequestsResponse { requests: requests.iter().map(request_info).collect() })
    }

    /// Destroys the sealed results past their expiry: key first, then file.
    fn sweep_results(&self) -> Outcome<()> {
        let expired = self
            .requests
            .expired_results(TimestampMicros::from_datetime(self.now()))
            .map_err(|e| internal(e).status())?;
        for request in expired {
            let Some(name) = &request.result_name else { continue };
            self.keys.destroy_record_key(RecordKeyScope::Result, name).map_err(|e| internal(e).status())?;
            durable::remove_file(&self.results_dir.join(format!("{name}.sealed"))).map_err(|e| internal(e).status())?;
            self.requests.clear_result(&request.request_id).map_err(|e| internal(e).status())?;
            self.audit(
                "cdrvault",
                AuditEvent::ResultDestroyed { request_id: request.request_id.clone(), reason: "expired".into() },
            )?;
        }
        Ok(())
    }

    /// Days of `[first, last]` that lie beyond retention today.
    fn days_beyond_retention(&self, first: PartitionDate, last: PartitionDate) -> u64 {
        let today = TimestampMicros::from_datetime(self.now()).partition_date();
        // The retention rule's own horizon: days before it are expired.
        let horizon = crate::retention::oldest_retained(today, self.settings.retention_days).days_since_epoch();
        let (first, last) = (first.days_since_epoch(), last.days_since_epoch());
        if first >= horizon { 0 } else { (last.min(horizon - 1) - first + 1).max(0) as u64 }
    }

    fn submit_request(
        &self,
        credentials: Credentials,
        body: proto::SubmitRequestRequest,
    ) -> Outcome<proto::RequestInfo> {
        const METHOD: &str = "SubmitRequest";
        let principal = self.authenticate(credentials, METHOD)?;
        self.require(&principal, &[Role::AuthorityHandler], METHOD)?;
        self.rate_limit(&principal, METHOD)?;
        self.sweep_results()?;
        let warrant_id = Some(body.warrant.as_str());
        let Some(authority) = principal.authority.clone() else {
            let denial = Denial::new(Code::PermissionDenied, "no_authority", "the principal acts for no authority");
            return Err(self.refuse(&principal.id, METHOD, denial, warrant_id, None));
        };
        let country = match self.store.authority_country(&authority) {
            Ok(Some(country)) => country,
            Ok(None) => return Err(internal("the principal's authority is missing").status()),
            Err(e) => return Err(Denial::from(e).status()),
        };
        let request_id = deliver::request_id(&country, &authority, body.request_number);
        let now = self.now();
        let refused = |denial: Denial| -> Status {
            let record = RequestRecord {
                request_id: request_id.clone(),
                authority: authority.clone(),
                number: body.request_number,
                warrant: body.warrant.clone(),
                principal: principal.id.clone(),
                status: RequestStatus::Refused,
                reason: Some(denial.reason.to_string()),
                submitted_at: TimestampMicros::from_datetime(now),
                records: 0,
                format: None,
                sha256: None,
                bytes: 0,
                days_unavailable: 0,
                result_name: None,
                result_expires: None,
            };
            let denial = match self.requests.record(&record, &[0; AGE_BUCKETS.len()]) {
                Ok(()) => denial,
                Err(RequestError::Replayed { .. }) => replayed(body.request_number),
                Err(e) => return internal(e).status(),
            };
            self.refuse(&principal.id, METHOD, denial, Some(&body.warrant), Some(&request_id))
        };

        // Shape first: size, number, syntax; then replay; then the warrant.
        if body.targets.len() > self.settings.max_targets {
            let detail = format!("more than {} targets", self.settings.max_targets);
            return Err(refused(Denial::new(Code::InvalidArgument, "request_too_large", detail)));
        }
        if body.request_number == 0 {
            let denial = Denial::new(Code::InvalidArgument, "bad_request_number", "request numbers start at 1");
            return Err(self.refuse(&principal.id, METHOD, denial, warrant_id, None));
        }
        match self.requests.number_used(&authority, body.request_number) {
            Ok(false) => {}
            Ok(true) => {
                return Err(self.refuse(
                    &principal.id,
                    METHOD,
                    replayed(body.request_number),
                    warrant_id,
                    Some(&request_id),
                ));
            }
            Err(e) => return Err(internal(e).status()),
        }
        let scope = (|| -> Result<RequestScope, Denial> {
            Ok(RequestScope {
                targets: parse_targets(&body.targets)?,
                window_start: parse_time(&body.window_start, "window_start")?,
                window_end: parse_time(&body.window_end, "window_end")?,
                categories: parse_categories(&body.categories)?,
            })
        })();
        let scope = scope.map_err(refused)?;
        let warrant = self.store.check_request(&principal, &body.warrant, &scope, &self.keys, now).map_err(|e| {
            let denial = Denial::from(e);
            if denial.code == Code::Internal { denial.status() } else { refused(denial) }
        })?;

        // In scope: look up, render, seal, record, audit.
        let targets: Vec<(IdentifierKind, String)> =
            scope.targets.iter().filter_map(|t| canonical_value(t.kind, &t.value).map(|v| (t.kind, v))).collect();
        let query = Query {
            targets: targets.clone(),
            from: TimestampMicros::from_datetime(scope.window_start),
            to: TimestampMicros::from_datetime(scope.window_end),
            categories: scope.categories.clone(),
        };
        let (found, _) = self.timed_lookup(&query)?;
        let found = self.preserved_for(found, &authority).map_err(|e| internal(e).status())?;
        let days = (query.to.partition_date().days_since_epoch() - query.from.partition_date().days_since_epoch() + 1)
            .max(1) as u64;
        let beyond = self.days_beyond_retention(query.from.partition_date(), query.to.partition_date());
        let status = match beyond {
            0 => RequestStatus::Answered,
            n if n >= days && found.is_empty() => RequestStatus::Unavailable,
            _ => RequestStatus::AnsweredPartially,
        };
        let format = format_of(body.format);
        let header = ResultHeader {
            country: country.clone(),
            authority: authority.clone(),
            request_number: body.request_number,
            csp_id: self.settings.csp_id.clone(),
            generated_at: now,
            warrant: warrant.id.clone(),
            status: status.as_str().to_string(),
            window_start: query.from,
            window_end: query.to,
            categories: scope.categories.clone(),
        };
        let rendered = deliver::render(format, &header, &found);
        let ages = ages_of(&found, now);
        let name = self.random_name()?;
        self.seal_result(&name, &rendered.bytes)?;
        let expires = now + chrono::Duration::from_std(self.settings.result_keep).unwrap_or(chrono::Duration::days(7));
        let record = RequestRecord {
            request_id: request_id.clone(),
            authority: authority.clone(),
            number: body.request_number,
            warrant: warrant.id.clone(),
            principal: principal.id.clone(),
            status,
            reason: None,
            submitted_at: TimestampMicros::from_datetime(now),
            records: found.len() as u64,
            format: Some(format.as_str().to_string()),
            sha256: Some(rendered.sha256.clone()),
            bytes: rendered.bytes.len() as u64,
            days_unavailable: beyond,
            result_name: Some(name.clone()),
            result_expires: Some(TimestampMicros::from_datetime(expires)),
        };
        match self.requests.record(&record, &ages) {
            Ok(()) => {}
            Err(error) => {
                // Lost a race for the number: the sealed result goes.
                let _ = self.keys.destroy_record_key(RecordKeyScope::Result, &name);
                let _ = durable::remove_file(&self.results_dir.join(format!("{name}.sealed")));
                let denial = match error {
                    RequestError::Replayed { number, .. } => replayed(number),
                    other => return Err(internal(other).status()),
                };
                return Err(self.refuse(&principal.id, METHOD, denial, warrant_id, Some(&request_id)));
            }
        }
        self.audit(
            &principal.id,
            AuditEvent::RequestAnswered {
                request_id: request_id.clone(),
                warrant: warrant.id.clone(),
                status: status.as_str().to_string(),
                target_tokens: self.target_tokens(&targets),
                window_start: rfc3339(query.from),
                window_end: rfc3339(query.to),
                categories: category_names(&scope.categories),
                records: found.len() as u64,
                format: format.as_str().to_string(),
                sha256: rendered.sha256.clone(),
                bytes: rendered.bytes.len() as u64,
            },
        )?;
        Ok(request_info(&record))
    }

    fn timed_lookup(&self, query: &Query) -> Outcome<(Vec<FoundRecord>, crate::lookup::LookupStats)> {
        let started = std::time::Instant::now();
        let result = self.engine.find(query).map_err(|e| internal(e).status());
        self.metrics.access_lookup_duration.observe(started.elapsed().as_secs_f64());
        result
    }

    /// Drops records found only in preservation copies of orders placed by
    /// another authority: preserved data answers the authority that froze it.
    fn preserved_for(
        &self,
        found: Vec<FoundRecord>,
        authority: &str,
    ) -> Result<Vec<FoundRecord>, crate::orders::OrderError> {
        let mut owners: HashMap<String, bool> = HashMap::new();
        let mut kept = Vec::with_capacity(found.len());
        for record in found {
            let Some(order) = &record.preserved_under else {
                kept.push(record);
                continue;
            };
            let ours = match owners.get(order) {
                Some(ours) => *ours,
                None => {
                    let ours = self.orders.get(order)?.is_some_and(|o| o.authority == authority);
                    owners.insert(order.clone(), ours);
                    ours
                }
            };
            if ours {
                kept.push(record);
            }
        }
        Ok(kept)
    }

    fn random_name(&self) -> Outcome<String> {
        let mut bytes = [0u8; 16];
        self.rng.fill(&mut bytes).map_err(|_| internal("no randomness").status())?;
        Ok(hex::encode(bytes))
    }

    fn seal_result(&self, name: &str, bytes: &[u8]) -> Outcome<()> {
        let (_, key) = self.keys.create_record_key(RecordKeyScope::Result, name).map_err(|e| internal(e).status())?;
        let sealed = crate::keys::seal_bytes(&key, &self.rng, name.as_bytes(), bytes.to_vec())
            .map_err(|e| internal(e).status())?;
        durable::write_atomically(&self.results_dir.join(format!("{name}.sealed")), &sealed, FileMode::Private)
            .map_err(|e| internal(e).status())
    }

    fn open_result(&self, name: &str) -> Result<Vec<u8>, Denial> {
        let gone = || Denial::new(Code::NotFound, "result_expired", "the result was destroyed");
        let (_, key) = self.keys.record_key(RecordKeyScope::Result, name).map_err(internal)?.ok_or_else(gone)?;
        let sealed = std::fs::read(self.results_dir.join(format!("{name}.sealed"))).map_err(|_| gone())?;
        crate::keys::open_bytes(&key, name.as_bytes(), &sealed)
            .ok_or_else(|| Denial::new(Code::DataLoss, "result_damaged", "the sealed result fails authentication"))
    }

    /// A request of the caller's own authority (auditors see all).
    fn own_request(&self, principal: &Principal, request_id: &str, method: &str) -> Outcome<RequestRecord> {
        let found = self.requests.get(request_id).map_err(|e| internal(e).status())?;
        let visible =
            found.filter(|r| principal.has(Role::Auditor) || principal.authority.as_deref() == Some(&r.authority));
        visible.ok_or_else(|| {
            let denial = Denial::new(Code::NotFound, "unknown_request", "no such request for this authority");
            self.refuse(&principal.id, method, denial, None, Some(request_id))
        })
    }

    fn get_request(&self, credentials: Credentials, body: proto::GetRequestRequest) -> Outcome<proto::RequestInfo> {
        const METHOD: &str = "GetRequest";
        let principal = self.authenticate(credentials, METHOD)?;
        self.require(&principal, &[Role::AuthorityHandler, Role::Auditor], METHOD)?;
        Ok(request_info(&self.own_request(&principal, &body.request_id, METHOD)?))
    }

    /// The result's info and bytes, after the delivery entry is durable.
    fn fetch_result(
        &self,
        credentials: Credentials,
        body: proto::FetchResultRequest,
    ) -> Outcome<(proto::RequestInfo, Vec<u8>)> {
        const METHOD: &str = "FetchResult";
        let principal = self.authenticate(credentials, METHOD)?;
        self.require(&principal, &[Role::AuthorityHandler], METHOD)?;
        self.rate_limit(&principal, METHOD)?;
        self.sweep_results()?;
        let request = self.own_request(&principal, &body.request_id, METHOD)?;
        let request_id = Some(body.request_id.as_str());
        let Some(name) = &request.result_name else {
            let denial =
                Denial::new(Code::NotFound, "result_expired", "the request has no result (refused or expired)");
            return Err(self.refuse(&principal.id, METHOD, denial, Some(&request.warrant), request_id));
        };
        let bytes = self.open_result(name).map_err(|d| self.refuse(&principal.id, METHOD, d, None, request_id))?;
        let sha256 = deliver::sha256_hex(&bytes);
        if Some(&sha256) != request.sha256.as_ref() {
            let denial = Denial::new(Code::DataLoss, "result_damaged", "the result differs from its recorded digest");
            return Err(self.refuse(&principal.id, METHOD, denial, None, request_id));
        }
        self.audit(
            &principal.id,
            AuditEvent::ResultDelivered { request_id: request.request_id.clone(), sha256, bytes: bytes.len() as u64 },
        )?;
        self.metrics.access_records_disclosed.inc_by(request.records);
        Ok((request_info(&request), bytes))
    }

    fn verify_audit(&self, credentials: Credentials) -> Outcome<proto::VerifyAuditResponse> {
        const METHOD: &str = "VerifyAudit";
        let principal = self.authenticate(credentials, METHOD)?;
        self.require(&principal, &[Role::Auditor], METHOD)?;
        let check = crate::audit::verify(self.audit.path(), &self.audit.public_key(), &self.keys.audit_head_path())
            .map_err(|e| internal(e).status())?;
        let (bad_entry, problem) = check.problem.clone().unwrap_or((0, String::new()));
        self.audit(&principal.id, AuditEvent::AuditVerified { entries: check.entries, intact: check.is_intact() })?;
        Ok(proto::VerifyAuditResponse { intact: check.is_intact(), entries: check.entries, bad_entry, problem })
    }

    fn statistics(&self, credentials: Credentials, body: proto::StatisticsRequest) -> Outcome<proto::StatisticsReport> {
        const METHOD: &str = "Statistics";
        let principal = self.authenticate(credentials, METHOD)?;
        self.require(&principal, &[Role::Auditor], METHOD)?;
        let bounds = |year: i32| {
            chrono::NaiveDate::from_ymd_opt(year, 1, 1)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|d| TimestampMicros::from_datetime(d.and_utc()))
        };
        let (Some(from), Some(to)) = (bounds(body.year), bounds(body.year + 1)) else {
            let denial = Denial::new(Code::InvalidArgument, "bad_year", "the year is out of range");
            return Err(self.refuse(&principal.id, METHOD, denial, None, None));
        };
        let stats = self.requests.statistics(from, to).map_err(|e| internal(e).status())?;
        self.audit(&principal.id, AuditEvent::StatisticsReported { year: body.year })?;
        Ok(proto::StatisticsReport {
            year: body.year,
            authorities: stats
                .into_iter()
                .map(|s| proto::AuthorityStatistics {
                    authority: s.authority,
                    received: s.received,
                    answered: s.answered,
                    answered_partially: s.answered_partially,
                    unavailable: s.unavailable,
                    refused: s.refused,
                    ages: AGE_BUCKETS
                        .iter()
                        .zip(s.ages)
                        .map(|((label, _), records)| proto::AgeBucket { label: label.to_string(), records })
                        .collect(),
                })
                .collect(),
        })
    }

    /// A data subject's records, after the export entry is durable.
    fn export_subject(&self, credentials: Credentials, body: proto::ExportSubjectRequest) -> Outcome<(u64, Vec<u8>)> {
        const METHOD: &str = "ExportSubject";
        let principal = self.authenticate(credentials, METHOD)?;
        self.require(&principal, &[Role::Dpo], METHOD)?;
        let target = (|| -> Result<(IdentifierKind, String), Denial> {
            check_text(&[("reference", &body.reference), ("target", &body.target)])?;
            if body.reference.trim().is_empty() {
                return Err(Denial::new(Code::InvalidArgument, "reference_required", "name the case reference"));
            }
            let input = parse_targets(std::slice::from_ref(&body.target))?.remove(0);
            let value = canonical_value(input.kind, &input.value)
                .ok_or_else(|| Denial::new(Code::InvalidArgument, "malformed_target", "target 1 is malformed"))?;
            Ok((input.kind, value))
        })();
        let (kind, value) = target.map_err(|d| self.refuse(&principal.id, METHOD, d, None, None))?;
        let now = self.now();
        let all: BTreeSet<Category> = Category::ALL.into();
        let query = Query {
            targets: vec![(kind, value.clone())],
            from: TimestampMicros::from_datetime(
                now - chrono::Duration::days(i64::from(self.settings.retention_days) + 1),
            ),
            to: TimestampMicros::from_datetime(now),
            categories: all,
        };
        let (found, _) = self.timed_lookup(&query)?;
        let rendered = deliver::subject_export(&body.reference, &self.settings.csp_id, now, &found);
        let target_token = self.target_tokens(&[(kind, value)]).remove(0);
        self.audit(
            &principal.id,
            AuditEvent::SubjectExported {
                reference: body.reference.clone(),
                kind: kind.as_str().to_string(),
                target_token,
                records: found.len() as u64,
                sha256: rendered.sha256.clone(),
                bytes: rendered.bytes.len() as u64,
            },
        )?;
        self.metrics.access_records_disclosed.inc_by(found.len() as u64);
        Ok((found.len() as u64, rendered.bytes))
    }
}

fn replayed(number: u64) -> Denial {
    Denial::new(Code::AlreadyExists, "request_number_reused", format!("request number {number} was already used"))
}

/// Records delivered per age bucket, age counted from the communication to
/// the request.
fn ages_of(found: &[FoundRecord], now: DateTime<Utc>) -> [u64; AGE_BUCKETS.len()] {
    let mut ages = [0u64; AGE_BUCKETS.len()];
    let now = TimestampMicros::from_datetime(now).0;
    for record in found {
        let days = (now - record.start_time.0).max(0) / 86_400_000_000;
        ages[age_bucket(days)] += 1;
    }
    ages
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<proto::ResultChunk, Status>> + Send>>;

/// The info message followed by the bytes in chunks.
fn chunks(info: proto::RequestInfo, bytes: Vec<u8>) -> ChunkStream {
    use proto::result_chunk::Part;
    let mut parts = vec![Ok(proto::ResultChunk { part: Some(Part::Info(info)) })];
    parts.extend(bytes.chunks(CHUNK_BYTES).map(|c| Ok(proto::ResultChunk { part: Some(Part::Data(c.to_vec())) })));
    Box::pin(tokio_stream::iter(parts))
}

#[tonic::async_trait]
impl LawfulAccess for AccessService {
    async fn who_am_i(&self, request: Request<proto::WhoAmIRequest>) -> Outcome<Response<proto::PrincipalInfo>> {
        self.call("WhoAmI", request, |inner, credentials, _| inner.who_am_i(credentials)).await.map(Response::new)
    }

    async fn create_authority(
        &self,
        request: Request<proto::CreateAuthorityRequest>,
    ) -> Outcome<Response<proto::Authority>> {
        self.call("CreateAuthority", request, Inner::create_authority).await.map(Response::new)
    }

    async fn create_principal(
        &self,
        request: Request<proto::CreatePrincipalRequest>,
    ) -> Outcome<Response<proto::CreatePrincipalResponse>> {
        self.call("CreatePrincipal", request, Inner::create_principal).await.map(Response::new)
    }

    async fn register_warrant(
        &self,
        request: Request<proto::RegisterWarrantRequest>,
    ) -> Outcome<Response<proto::Warrant>> {
        self.call("RegisterWarrant", request, Inner::register_warrant).await.map(Response::new)
    }

    async fn decide_warrant(&self, request: Request<proto::DecideWarrantRequest>) -> Outcome<Response<proto::Warrant>> {
        self.call("DecideWarrant", request, Inner::decide_warrant).await.map(Response::new)
    }

    async fn close_warrant(&self, request: Request<proto::CloseWarrantRequest>) -> Outcome<Response<proto::Warrant>> {
        self.call("CloseWarrant", request, Inner::close_warrant).await.map(Response::new)
    }

    async fn get_warrant(&self, request: Request<proto::GetWarrantRequest>) -> Outcome<Response<proto::Warrant>> {
        self.call("GetWarrant", request, Inner::get_warrant).await.map(Response::new)
    }

    async fn submit_request(
        &self,
        request: Request<proto::SubmitRequestRequest>,
    ) -> Outcome<Response<proto::RequestInfo>> {
        self.call("SubmitRequest", request, Inner::submit_request).await.map(Response::new)
    }

    async fn get_request(&self, request: Request<proto::GetRequestRequest>) -> Outcome<Response<proto::RequestInfo>> {
        self.call("GetRequest", request, Inner::get_request).await.map(Response::new)
    }

    async fn list_warrants(
        &self,
        request: Request<proto::ListWarrantsRequest>,
    ) -> Outcome<Response<proto::ListWarrantsResponse>> {
        self.call("ListWarrants", request, Inner::list_warrants).await.map(Response::new)
    }

    async fn list_requests(
        &self,
        request: Request<proto::ListRequestsRequest>,
    ) -> Outcome<Response<proto::ListRequestsResponse>> {
        self.call("ListRequests", request, Inner::list_requests).await.map(Response::new)
    }

    type FetchResultStream = ChunkStream;

    async fn fetch_result(
        &self,
        request: Request<proto::FetchResultRequest>,
    ) -> Outcome<Response<Self::FetchResultStream>> {
        let (info, bytes) = self.call("FetchResult", request, Inner::fetch_result).await?;
        Ok(Response::new(chunks(info, bytes)))
    }

    async fn verify_audit(
        &self,
        request: Request<proto::VerifyAuditRequest>,
    ) -> Outcome<Response<proto::VerifyAuditResponse>> {
        self.call("VerifyAudit", request, |inner, credentials, _| inner.verify_audit(credentials))
            .await
            .map(Response::new)
    }

    async fn statistics(
        &self,
        request: Request<proto::StatisticsRequest>,
    ) -> Outcome<Response<proto::StatisticsReport>> {
        self.call("Statistics", request, Inner::statistics).await.map(Response::new)
    }

    type ExportSubjectStream = ChunkStream;

    async fn export_subject(
        &self,
        request: Request<proto::ExportSubjectRequest>,
    ) -> Outcome<Response<Self::ExportSubjectStream>> {
        let (records, bytes) = self.call("ExportSubject", request, Inner::export_subject).await?;
        let info = proto::RequestInfo {
            status: "answered".into(),
            records,
            format: proto::ResultFormat::Json as i32,
            sha256: deliver::sha256_hex(&bytes),
            bytes: bytes.len() as u64,
            ..proto::RequestInfo::default()
        };
        Ok(Response::new(chunks(info, bytes)))
    }
}
