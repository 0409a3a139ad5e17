//! The lawful-access API as the black-box tests drive it: a vault with
//! generated records served over gRPC on 127.0.0.1, the cast of principals
//! who use it, the messages they send, and the check every hostile attempt
//! must pass (refused with its code and reason, audited, and nothing else).

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use cdrvault::access::api::{self, AccessService};
use cdrvault::access::client::collect;
use cdrvault::access::config::AccessSettings;
use cdrvault::access::{AccessStore, Desk};
use cdrvault::audit::AuditTrail;
use cdrvault::ops::metrics::Metrics;
use cdrvault::ops::shutdown::Shutdown;
use cdrvault::proto;
use cdrvault::proto::lawful_access_client::LawfulAccessClient;
use cdrvault::registry::Registries;
use cdrvault::tools::synth::{Generator, SynthConfig, SyntheticCdr};

use super::{TestVault, generated, noon};

pub type Client = LawfulAccessClient<Channel>;

/// A vault with 8,000 records over six days, served by the API.
pub struct World {
    pub vault: TestVault,
    pub until: DateTime<Utc>,
    pub records: Vec<SyntheticCdr>,
    pub generator: Generator,
    pub client: Client,
    pub admin: String,
    pub audit: Arc<AuditTrail>,
    pub registries: Registries,
    pub metrics: Arc<Metrics>,
    pub desk: Arc<Desk>,
    /// The service's shutdown, which a fatal error triggers.
    pub shutdown: Shutdown,
}

impl World {
    pub fn state(&self) -> PathBuf {
        self.vault.state()
    }

    pub fn audit_entries(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.state().join("audit.jsonl")).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    pub fn target(&self, n: usize) -> String {
        self.generator.subscribers()[n].msisdn.clone()
    }

    /// A dk-police warrant over the last five days.
    pub fn warrant_request(&self, grant: Grant<'_>) -> proto::RegisterWarrantRequest {
        proto::RegisterWarrantRequest {
            authority: "dk-police".into(),
            reference: format!(
                "K-{}",
                grant.targets.len() * 1000 + grant.categories.len() + grant.valid.num_hours() as usize
            ),
            issued_by: "Copenhagen City Court".into(),
            legal_basis: "Retsplejeloven § 781".into(),
            targets: grant.targets.iter().map(|t| format!("msisdn:{t}")).collect(),
            period_start: time(self.until - chrono::Duration::days(5)),
            period_end: time(self.until),
            categories: grant.categories.iter().map(|c| c.to_string()).collect(),
            valid_until: time(self.until + grant.valid),
            cell_dump: false,
        }
    }

    /// A request for one MSISDN over the last `ask.days` days.
    pub fn submission(&self, ask: Ask<'_>) -> proto::SubmitRequestRequest {
        proto::SubmitRequestRequest {
            warrant: ask.warrant.into(),
            request_number: ask.number,
            targets: vec![format!("msisdn:{}", ask.target)],
            window_start: time(self.until - chrono::Duration::days(ask.days)),
            window_end: time(self.until),
            categories: vec!["traffic".into()],
            format: ask.format as i32,
        }
    }
}

/// What a warrant grants: MSISDN targets, categories, and how long it holds.
#[derive(Clone, Copy)]
pub struct Grant<'a> {
    pub targets: &'a [String],
    pub categories: &'a [&'a str],
    pub valid: chrono::Duration,
}

impl<'a> Grant<'a> {
    /// Traffic data of `targets`, for 30 days.
    pub fn of(targets: &'a [String]) -> Grant<'a> {
        Grant { targets, categories: &["traffic"], valid: chrono::Duration::days(30) }
    }
}

/// A request to submit: under `warrant`, for `target`, as number `number`,
/// over the last `days`, rendered as `format`.
#[derive(Clone, Copy)]
pub struct Ask<'a> {
    pub warrant: &'a str,
    pub target: &'a str,
    pub number: u64,
    pub days: i64,
    pub format: proto::ResultFormat,
}

impl<'a> Ask<'a> {
    /// Request number 1, three days, JSON.
    pub fn to(warrant: &'a str, target: &'a str) -> Ask<'a> {
        Ask { warrant, target, number: 1, days: 3, format: proto::ResultFormat::Json }
    }
}

pub fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub async fn world(settings: AccessSettings) -> World {
    let until = noon();
    let vault = TestVault::new(until);
    let (generator, records) =
        generated(SynthConfig { seed: 5, subscribers: 500, days: 6, until, invalid_ratio: 0.0 }, 8_000);
    assert_eq!(vault.ingest(&records), records.len());

    let registries = vault.registries();
    let audit = vault.audit();
    let (_, admin) =
        AccessStore::new(Arc::clone(&registries.access)).bootstrap(&audit, "bootstrap admin", "root", until).unwrap();
    let metrics = Metrics::new();
    let desk = vault.desk(&audit, registries.clone(), settings, Arc::clone(&metrics));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let service = AccessService::new(Arc::clone(&desk)).with_shutdown(shutdown.clone());
    tokio::spawn(api::serve(listener, service, None, std::future::pending()));
    let client = LawfulAccessClient::connect(format!("http://{address}")).await.unwrap();
    let admin = admin.expose().to_string();
    World { vault, until, records, generator, client, admin, audit, registries, metrics, desk, shutdown }
}

/// Creates a principal through the API and returns its token.
pub async fn principal(w: &mut World, name: &str, roles: &[&str], authority: &str) -> String {
    let request = proto::CreatePrincipalRequest {
        name: name.into(),
        person: name.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        authority: authority.into(),
        ..proto::CreatePrincipalRequest::default()
    };
    w.client.create_principal(authed(&w.admin, request)).await.unwrap().into_inner().token
}

pub struct Cast {
    pub alice: String,
    pub bob: String,
    pub handler: String,
    pub stranger: String,
    pub auditor: String,
    pub dpo: String,
    /// se-police's handler who is also an auditor.
    pub watcher: String,
}

pub async fn cast(w: &mut World) -> Cast {
    for (id, country) in [("dk-police", "dk"), ("se-police", "se")] {
        let request = proto::CreateAuthorityRequest { id: id.into(), country: country.into(), name: id.into() };
        w.client.create_authority(authed(&w.admin.clone(), request)).await.unwrap();
    }
    Cast {
        alice: principal(w, "alice", &["legal_reviewer"], "").await,
        bob: principal(w, "bob", &["legal_reviewer"], "").await,
        handler: principal(w, "handler", &["authority_handler"], "dk-police").await,
        stranger: principal(w, "stranger", &["authority_handler"], "se-police").await,
        auditor: principal(w, "auditor", &["auditor"], "").await,
        dpo: principal(w, "dpo", &["dpo"], "").await,
        watcher: principal(w, "watcher", &["authority_handler", "auditor"], "se-police").await,
    }
}

/// A warrant registered by alice and approved by bob; its id.
pub async fn approved_warrant(w: &mut World, cast: &Cast, grant: Grant<'_>) -> String {
    let request = w.warrant_request(grant);
    approved(w, cast, request).await
}

/// The warrant `request` registered by alice and approved by bob; its id.
pub async fn approved(w: &mut World, cast: &Cast, request: proto::RegisterWarrantRequest) -> String {
    let warrant = w.client.register_warrant(authed(&cast.alice, request)).await.unwrap().into_inner();
    let decide = proto::DecideWarrantRequest { warrant: warrant.id.clone(), approve: true, reason: String::new() };
    let decided = w.client.decide_warrant(authed(&cast.bob, decide)).await.unwrap().into_inner();
    assert_eq!(decided.status, "approved");
    warrant.id
}

/// The handler's requests numbered `numbers`, for `target` under
/// `warrant`, each submitted and answered; their ids, in order.
pub async fn submitted(
    w: &mut World,
    handler: &str,
    warrant: &str,
    target: &str,
    numbers: std::ops::RangeInclusive<u64>,
) -> Vec<String> {
    let mut ids = Vec::new();
    for number in numbers {
        let ask = w.submission(Ask { number, ..Ask::to(warrant, target) });
        ids.push(w.client.submit_request(authed(handler, ask)).await.unwrap().into_inner().request_id);
    }
    ids
}

/// Fetches a result: the info message, then the bytes.
pub async fn fetch(
    client: &mut Client,
    token: &str,
    request_id: &str,
) -> Result<(proto::RequestInfo, Vec<u8>), tonic::Status> {
    let stream = client
        .fetch_result(authed(token, proto::FetchResultRequest { request_id: request_id.into() }))
        .await?
        .into_inner();
    Ok(collect(stream).await.expect("an info message, then the bytes it announces"))
}

pub fn truth(w: &World, target: &str, days: i64) -> BTreeSet<String> {
    let from = w.until - chrono::Duration::days(days);
    w.records
        .iter()
        .filter(|r| r.involves_number(target))
        .filter(|r| r.start_time.is_some_and(|t| t >= from && t <= w.until))
        .map(|r| r.record_id.clone())
        .collect()
}

pub fn leaks_in(dir: &Path, records: &[SyntheticCdr]) -> Vec<String> {
    let files = super::files_below(dir);
    super::find_leaks(&files, &[], &super::raw_identifiers(records))
}

/// One hostile attempt: the call, and the status code and reason code it
/// must be refused with.
pub struct Hostile {
    pub case: &'static str,
    pub call: Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>,
    pub code: Code,
    pub reason: &'static str,
}

impl Hostile {
    pub fn new<T>(
        case: &'static str,
        call: impl Future<Output = Result<T, Status>> + Send + 'static,
        code: Code,
        reason: &'static str,
    ) -> Hostile {
        Hostile { case, call: Box::pin(async move { call.await.map(|_| ()) }), code, reason }
    }
}

/// Runs an attempt: it must fail with its code and reason, and be audited
/// as a refusal or an authentication failure (at once, or in the summary
/// of the interval, which the test ends here), and as nothing else.
pub async fn expect_refused(w: &World, attempt: Hostile) {
    let Hostile { case, call, code, reason } = attempt;
    let before = w.audit_entries().len();
    let status = call.await.expect_err("a hostile call must fail");
    assert_eq!(status.code(), code, "{case}: {status:?}");
    assert!(status.message().starts_with(reason), "{case}: expected {reason}, got {}", status.message());
    w.desk.flush_failures().unwrap();
    let after = w.audit_entries();
    assert!(after.len() > before, "{case}: not audited");
    let new = &after[before..];
    assert!(
        new.iter().all(|e| ["access_refused", "authentication_failed", "authentication_failures"]
            .contains(&e["action"].as_str().unwrap_or_default())),
        "{case}: {new:?}"
    );
}
