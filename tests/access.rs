//! The lawful-access API, black-box through gRPC on 127.0.0.1: the whole
//! lifecycle from authority to delivered, digested results compared with the
//! generator's ground truth; a hostile suite in which every attempt is
//! refused with the right status, audited, and discloses nothing; and audit
//! tampering found through the API.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use tonic::transport::Channel;
use tonic::{Code, Request};

use cdrvault::access::{AccessStore, Role};
use cdrvault::audit::AuditTrail;
use cdrvault::clock::{Clock, ManualClock};
use cdrvault::decode::Encoding;
use cdrvault::deliver::sha256_hex;
use cdrvault::keys::KeyStore;
use cdrvault::pipeline::{Input, Processor, ProcessorConfig};
use cdrvault::proto;
use cdrvault::proto::lawful_access_client::LawfulAccessClient;
use cdrvault::service::{AccessService, AccessSettings};
use cdrvault::synth::{Generator, SynthConfig, SyntheticCdr};
use cdrvault::write::{ParquetConfig, ParquetWriter};

type Client = LawfulAccessClient<Channel>;

struct World {
    root: tempfile::TempDir,
    clock: Arc<ManualClock>,
    until: DateTime<Utc>,
    records: Vec<SyntheticCdr>,
    generator: Generator,
    client: Client,
    admin: String,
    keys: Arc<KeyStore>,
    audit: Arc<AuditTrail>,
    metrics: Arc<cdrvault::metrics::Metrics>,
}

impl World {
    fn state(&self) -> PathBuf {
        self.root.path().join("state")
    }

    fn audit_entries(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.state().join("audit.jsonl")).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn target(&self, n: usize) -> String {
        self.generator.subscribers()[n].msisdn.clone()
    }
}

fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn world(settings: AccessSettings) -> World {
    let until = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
    let root = tempfile::tempdir().unwrap();
    KeyStore::init(&root.path().join("keys"), None).unwrap();
    let keys = Arc::new(KeyStore::open(&root.path().join("keys"), None).unwrap());
    let clock = Arc::new(ManualClock::new(until));
    let processor = Processor::new(
        ParquetWriter::new(&root.path().join("data"), ParquetConfig::default()),
        Arc::clone(&keys),
        clock.clone() as Arc<dyn Clock>,
        ProcessorConfig { max_clock_skew: Duration::from_secs(60), decode_threads: 2, retention_days: Some(365) },
    );
    let mut generator = Generator::new(SynthConfig { seed: 5, subscribers: 500, days: 6, until, invalid_ratio: 0.0 });
    let records: Vec<_> = (0..8_000).map(|_| generator.next_record()).collect();
    let inputs: Vec<Input> = records.iter().map(|r| Input { encoding: Encoding::Json, payload: r.to_json() }).collect();
    assert_eq!(processor.process(&inputs).unwrap().written, records.len());

    let state = root.path().join("state");
    let (_, admin) = AccessStore::open(&state)
        .unwrap()
        .create_principal(None, "bootstrap admin", [Role::Admin].into(), None, until)
        .unwrap();
    let audit = Arc::new(AuditTrail::open(&state, &keys).unwrap());
    let service = AccessService::new(
        &root.path().join("data"),
        &state,
        Arc::clone(&keys),
        Arc::clone(&audit),
        clock.clone() as Arc<dyn Clock>,
        settings,
    )
    .unwrap();
    let metrics = cdrvault::metrics::Metrics::new();
    let service = service.with_metrics(Arc::clone(&metrics));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(cdrvault::service::serve(listener, service, None, std::future::pending()));
    let client = LawfulAccessClient::connect(format!("http://{address}")).await.unwrap();
    World { root, clock, until, records, generator, client, admin: admin.expose().to_string(), keys, audit, metrics }
}

/// Creates a principal through the API and returns its token.
async fn principal(w: &mut World, name: &str, roles: &[&str], authority: &str) -> String {
    let request = proto::CreatePrincipalRequest {
        name: name.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        authority: authority.into(),
        client_certificate_sha256: String::new(),
    };
    w.client.create_principal(authed(&w.admin, request)).await.unwrap().into_inner().token
}

struct Cast {
    alice: String,
    bob: String,
    handler: String,
    stranger: String,
    auditor: String,
    dpo: String,
}

async fn cast(w: &mut World) -> Cast {
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
    }
}

fn warrant_request(
    w: &World,
    targets: &[String],
    categories: &[&str],
    valid: chrono::Duration,
) -> proto::RegisterWarrantRequest {
    proto::RegisterWarrantRequest {
        authority: "dk-police".into(),
        reference: format!("K-{}", targets.len() * 1000 + categories.len() + valid.num_hours() as usize),
        issued_by: "Copenhagen City Court".into(),
        legal_basis: "Retsplejeloven § 781".into(),
        targets: targets.iter().map(|t| format!("msisdn:{t}")).collect(),
        period_start: time(w.until - chrono::Duration::days(5)),
        period_end: time(w.until),
        categories: categories.iter().map(|c| c.to_string()).collect(),
        valid_until: time(w.until + valid),
    }
}

/// A registered and approved warrant's id.
async fn approved_warrant(
    w: &mut World,
    cast: &Cast,
    targets: &[String],
    categories: &[&str],
    valid: chrono::Duration,
) -> String {
    let request = warrant_request(w, targets, categories, valid);
    let warrant = w.client.register_warrant(authed(&cast.alice, request)).await.unwrap().into_inner();
    let decide = proto::DecideWarrantRequest { warrant: warrant.id.clone(), approve: true, reason: String::new() };
    let decided = w.client.decide_warrant(authed(&cast.bob, decide)).await.unwrap().into_inner();
    assert_eq!(decided.status, "approved");
    warrant.id
}

fn submit(
    w: &World,
    warrant: &str,
    number: u64,
    target: &str,
    days: i64,
    format: proto::ResultFormat,
) -> proto::SubmitRequestRequest {
    proto::SubmitRequestRequest {
        warrant: warrant.into(),
        request_number: number,
        targets: vec![format!("msisdn:{target}")],
        window_start: time(w.until - chrono::Duration::days(days)),
        window_end: time(w.until),
        categories: vec!["traffic".into()],
        format: format as i32,
    }
}

/// Fetches a result: the info message, then the bytes.
async fn fetch(
    client: &mut Client,
    token: &str,
    request_id: &str,
) -> Result<(proto::RequestInfo, Vec<u8>), tonic::Status> {
    let stream = client
        .fetch_result(authed(token, proto::FetchResultRequest { request_id: request_id.into() }))
        .await?
        .into_inner();
    Ok(cdrvault::client::collect(stream).await.expect("an info message, then the bytes it announces"))
}

fn truth(w: &World, target: &str, days: i64) -> BTreeSet<String> {
    let from = w.until - chrono::Duration::days(days);
    w.records
        .iter()
        .filter(|r| r.involves_number(target))
        .filter(|r| r.start_time.is_some_and(|t| t >= from && t <= w.until))
        .map(|r| r.record_id.clone())
        .collect()
}

fn leaks_in(dir: &Path, records: &[SyntheticCdr]) -> Vec<String> {
    let files = common::files_below(dir);
    common::find_leaks(&files, &[], &common::raw_identifiers(records))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authority_goes_from_warrant_to_delivered_digested_results() {
    let mut w = world(AccessSettings::default()).await;
    let cast = cast(&mut w).await;
    let (target, other) = (w.target(4), w.target(9));
    let warrant =
        approved_warrant(&mut w, &cast, &[target.clone(), other], &["traffic", "location"], chrono::Duration::days(30))
            .await;

    // JSON: exactly the ground truth, digest recorded before delivery.
    let submitted = w
        .client
        .submit_request(authed(&cast.handler, submit(&w, &warrant, 1, &target, 3, proto::ResultFormat::Json)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(submitted.request_id, "DK-dk-police-1");
    assert_eq!(submitted.status, "answered");
    let expected = truth(&w, &target, 3);
    assert!(expected.len() > 3, "the target has traffic");
    assert_eq!(submitted.records as usize, expected.len());
    let (info, bytes) = fetch(&mut w.client, &cast.handler, "DK-dk-police-1").await.unwrap();
    assert_eq!(info.sha256, submitted.sha256);
    assert_eq!(sha256_hex(&bytes), submitted.sha256, "the bytes delivered are the bytes digested");
    let document: Value = serde_json::from_slice(&bytes).unwrap();
    let ids: BTreeSet<String> =
        document["records"].as_array().unwrap().iter().map(|r| r["record_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, expected);
    for record in document["records"].as_array().unwrap() {
        assert!(record.get("cell_id_start").is_none(), "location was not requested");
        assert!(record.get("imsi").is_none(), "device is not in the warrant");
    }
    let entries = w.audit_entries();
    let delivery = entries.iter().position(|e| e["action"] == "result_delivered").expect("delivery audited");
    assert_eq!(entries[delivery]["sha256"], submitted.sha256.as_str());
    let answered = entries.iter().position(|e| e["action"] == "request_answered").unwrap();
    assert!(answered < delivery);

    // CSV and ETSI XML carry the same records.
    let csv = w
        .client
        .submit_request(authed(&cast.handler, submit(&w, &warrant, 2, &target, 3, proto::ResultFormat::Csv)))
        .await
        .unwrap()
        .into_inner();
    let (_, csv_bytes) = fetch(&mut w.client, &cast.handler, &csv.request_id).await.unwrap();
    let rows = String::from_utf8(csv_bytes).unwrap().lines().count() - 1;
    assert_eq!(rows, expected.len());
    let xml = w
        .client
        .submit_request(authed(&cast.handler, submit(&w, &warrant, 3, &target, 3, proto::ResultFormat::EtsiXml)))
        .await
        .unwrap()
        .into_inner();
    let (_, xml_bytes) = fetch(&mut w.client, &cast.handler, &xml.request_id).await.unwrap();
    let xml_text = String::from_utf8(xml_bytes).unwrap();
    assert_eq!(xml_text.matches("<RetainedData recordNumber=").count(), expected.len());
    assert!(
        xml_text.contains("<RequestNumber>3</RequestNumber>") && xml_text.contains("<CountryCode>DK</CountryCode>")
    );

    // Each authority sees its own warrants and requests only.
    let mine = w.client.list_requests(authed(&cast.handler, proto::ListRequestsRequest::default())).await.unwrap();
    let ids: Vec<String> = mine.into_inner().requests.into_iter().map(|r| r.request_id).collect();
    assert_eq!(ids, ["DK-dk-police-3", "DK-dk-police-2", "DK-dk-police-1"]);
    let theirs = proto::ListRequestsRequest { authority: "dk-police".into() };
    assert!(w.client.list_requests(authed(&cast.stranger, theirs)).await.unwrap().into_inner().requests.is_empty());
    let warrants = w.client.list_warrants(authed(&cast.handler, proto::ListWarrantsRequest::default())).await.unwrap();
    assert_eq!(warrants.into_inner().warrants.len(), 1);
    let foreign = w.client.list_warrants(authed(&cast.stranger, proto::ListWarrantsRequest::default())).await.unwrap();
    assert!(foreign.into_inner().warrants.is_empty());

    // Statistics for the auditor, and an intact trail.
    let report =
        w.client.statistics(authed(&cast.auditor, proto::StatisticsRequest { year: 2026 })).await.unwrap().into_inner();
    let police = report.authorities.iter().find(|a| a.authority == "dk-police").unwrap();
    assert_eq!((police.received, police.answered, police.refused), (3, 3, 0));
    assert_eq!(police.ages[0].records as usize, 3 * expected.len(), "all data under 3 months old");
    let verified =
        w.client.verify_audit(authed(&cast.auditor, proto::VerifyAuditRequest {})).await.unwrap().into_inner();
    assert!(verified.intact, "{}", verified.problem);

    // Subject access: every retained record of the subscriber, all categories.
    let stream = w
        .client
        .export_subject(authed(
            &cast.dpo,
            proto::ExportSubjectRequest { target: format!("msisdn:{target}"), reference: "DSAR-7".into() },
        ))
        .await
        .unwrap()
        .into_inner();
    let (export_info, export) = cdrvault::client::collect(stream).await.unwrap();
    let export_doc: Value = serde_json::from_slice(&export).unwrap();
    let all: BTreeSet<String> =
        w.records.iter().filter(|r| r.involves_number(&target)).map(|r| r.record_id.clone()).collect();
    assert_eq!(export_doc["records"].as_array().unwrap().len(), all.len());
    assert_eq!(export_info.sha256, sha256_hex(&export));
    assert!(w.audit_entries().iter().any(|e| e["action"] == "subject_exported" && e["reference"] == "DSAR-7"));

    // Nothing the service wrote holds a raw identifier: results are sealed,
    // targets sealed, the trail holds tokens.
    let leaks = leaks_in(&w.state(), &w.records);
    assert!(leaks.is_empty(), "raw identifiers in the state directory: {leaks:?}");

    // An expired result is destroyed, key first, and audited.
    w.clock.advance(chrono::Duration::days(8));
    let gone = fetch(&mut w.client, &cast.handler, "DK-dk-police-1").await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert!(w.audit_entries().iter().any(|e| e["action"] == "result_destroyed"));
    assert!(common::files_below(&w.state().join("results")).is_empty());
}

/// One hostile attempt: the expected status code and reason code.
async fn expect_refused<T: std::fmt::Debug>(
    w: &World,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
    code: Code,
    reason: &str,
) {
    let before = w.audit_entries().len();
    let status = call.await.expect_err("a hostile call must fail");
    assert_eq!(status.code(), code, "{reason}: {status:?}");
    assert!(status.message().starts_with(reason), "expected {reason}, got {}", status.message());
    let after = w.audit_entries();
    assert!(after.len() > before, "{reason} was not audited");
    let new = &after[before..];
    assert!(
        new.iter().all(|e| e["action"] == "access_refused" || e["action"] == "authentication_failed"),
        "{reason}: {new:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_request_is_refused_audited_and_discloses_nothing() {
    let mut w = world(AccessSettings::default()).await;
    let cast = cast(&mut w).await;
    let target = w.target(4);
    let warrant =
        approved_warrant(&mut w, &cast, std::slice::from_ref(&target), &["traffic"], chrono::Duration::days(30)).await;
    let answered = w
        .client
        .submit_request(authed(&cast.handler, submit(&w, &warrant, 1, &target, 3, proto::ResultFormat::Json)))
        .await
        .unwrap()
        .into_inner();
    let results_before = common::files_below(&w.state().join("results")).len();
    let mut c = w.client.clone();

    // Authentication.
    let bare = Request::new(submit(&w, &warrant, 2, &target, 3, proto::ResultFormat::Json));
    expect_refused(&w, c.submit_request(bare), Code::Unauthenticated, "missing_credentials").await;
    let forged = authed("cdv_0000", submit(&w, &warrant, 2, &target, 3, proto::ResultFormat::Json));
    expect_refused(&w, c.submit_request(forged), Code::Unauthenticated, "unknown_token").await;
    expect_refused(&w, fetch(&mut c, "cdv_forged", &answered.request_id), Code::Unauthenticated, "unknown_token").await;

    // Roles and objects.
    let by_auditor = authed(&cast.auditor, submit(&w, &warrant, 2, &target, 3, proto::ResultFormat::Json));
    expect_refused(&w, c.submit_request(by_auditor), Code::PermissionDenied, "missing_role").await;
    let by_handler = authed(
        &cast.handler,
        proto::CreateAuthorityRequest { id: "xx-evil".into(), country: "xx".into(), name: "x".into() },
    );
    expect_refused(&w, c.create_authority(by_handler), Code::PermissionDenied, "missing_role").await;
    let self_made = authed(
        &cast.handler,
        proto::CreatePrincipalRequest {
            name: "me".into(),
            roles: vec!["admin".into()],
            authority: String::new(),
            client_certificate_sha256: String::new(),
        },
    );
    expect_refused(&w, c.create_principal(self_made), Code::PermissionDenied, "missing_role").await;
    let foreign = authed(&cast.stranger, submit(&w, &warrant, 2, &target, 3, proto::ResultFormat::Json));
    expect_refused(&w, c.submit_request(foreign), Code::NotFound, "not_found").await;
    expect_refused(&w, fetch(&mut c, &cast.stranger, &answered.request_id), Code::NotFound, "unknown_request").await;
    let peek = authed(&cast.stranger, proto::GetWarrantRequest { warrant: warrant.clone() });
    expect_refused(&w, c.get_warrant(peek), Code::NotFound, "not_found").await;

    // Warrant state: unapproved, self-approval, expired.
    let pending =
        warrant_request(&w, std::slice::from_ref(&target), &["traffic", "device"], chrono::Duration::days(30));
    let pending = c.register_warrant(authed(&cast.alice, pending)).await.unwrap().into_inner().id;
    let unapproved = authed(&cast.handler, submit(&w, &pending, 2, &target, 3, proto::ResultFormat::Json));
    expect_refused(&w, c.submit_request(unapproved), Code::FailedPrecondition, "warrant_not_approved").await;
    let own = authed(
        &cast.alice,
        proto::DecideWarrantRequest { warrant: pending.clone(), approve: true, reason: String::new() },
    );
    expect_refused(&w, c.decide_warrant(own), Code::PermissionDenied, "self_approval").await;
    let short =
        approved_warrant(&mut w, &cast, std::slice::from_ref(&target), &["traffic"], chrono::Duration::hours(1)).await;
    w.clock.advance(chrono::Duration::hours(2));
    let expired = authed(&cast.handler, submit(&w, &short, 4, &target, 3, proto::ResultFormat::Json));
    expect_refused(&w, c.submit_request(expired), Code::FailedPrecondition, "warrant_expired").await;

    // Scope: target, window, category.
    let stranger_target = authed(&cast.handler, submit(&w, &warrant, 5, &w.target(7), 3, proto::ResultFormat::Json));
    expect_refused(&w, c.submit_request(stranger_target), Code::PermissionDenied, "target_out_of_scope").await;
    let too_long = authed(&cast.handler, submit(&w, &warrant, 6, &target, 30, proto::ResultFormat::Json));
    expect_refused(&w, c.submit_request(too_long), Code::PermissionDenied, "window_out_of_scope").await;
    let mut devices = submit(&w, &warrant, 7, &target, 3, proto::ResultFormat::Json);
    devices.categories.push("device".into());
    expect_refused(
        &w,
        c.submit_request(authed(&cast.handler, devices)),
        Code::PermissionDenied,
        "category_out_of_scope",
    )
    .await;

    // Replay and size.
    let replay = authed(&cast.handler, submit(&w, &warrant, 1, &target, 3, proto::ResultFormat::Json));
    expect_refused(&w, c.submit_request(replay), Code::AlreadyExists, "request_number_reused").await;
    let mut huge = submit(&w, &warrant, 8, &target, 3, proto::ResultFormat::Json);
    huge.targets = (0..1000).map(|n| format!("msisdn:+45{n:08}")).collect();
    expect_refused(&w, c.submit_request(authed(&cast.handler, huge)), Code::InvalidArgument, "request_too_large").await;
    // A message over 256 KiB (but under the transport's limit) is refused
    // and audited under its caller too.
    let mut oversized = submit(&w, &warrant, 9, &target, 3, proto::ResultFormat::Json);
    oversized.targets = vec![format!("msisdn:+45{}", "1".repeat(300_000))];
    let before = w.audit_entries().len();
    expect_refused(
        &w,
        c.submit_request(authed(&cast.handler, oversized)),
        Code::ResourceExhausted,
        "message_too_large",
    )
    .await;
    let refusal = &w.audit_entries()[before];
    assert_eq!(
        (refusal["reason"].as_str(), refusal["method"].as_str()),
        (Some("message_too_large"), Some("SubmitRequest"))
    );

    // Zero disclosures: one answered request, one delivery (none), no new
    // result, and every refused request recorded for the statistics.
    let entries = w.audit_entries();
    assert_eq!(entries.iter().filter(|e| e["action"] == "request_answered").count(), 1);
    assert_eq!(entries.iter().filter(|e| e["action"] == "result_delivered").count(), 0);
    assert_eq!(common::files_below(&w.state().join("results")).len(), results_before);
    let report =
        c.statistics(authed(&cast.auditor, proto::StatisticsRequest { year: 2026 })).await.unwrap().into_inner();
    let police = report.authorities.iter().find(|a| a.authority == "dk-police").unwrap();
    assert_eq!(police.answered, 1);
    assert!(police.refused >= 5, "{police:?}");
    let leaks = leaks_in(&w.state(), &w.records);
    assert!(leaks.is_empty(), "{leaks:?}");

    // SREs see the refusals by reason and the calls by outcome, with no
    // identifier in any label.
    let text = w.metrics.encode();
    for reason in ["missing_credentials", "target_out_of_scope", "request_number_reused", "self_approval"] {
        assert!(text.contains(&format!("cdrvault_access_refusals_total{{reason=\"{reason}\"}} 1")), "{reason}: {text}");
    }
    assert!(text.contains("cdrvault_access_calls_total{method=\"SubmitRequest\",outcome=\"ok\"} 1"), "{text}");
    assert!(text.contains("cdrvault_access_lookup_duration_seconds_count 1"), "{text}");
    let metric_leaks = common::find_leaks(&[], &[("metrics", text.as_bytes())], &common::raw_identifiers(&w.records));
    assert!(metric_leaks.is_empty(), "{metric_leaks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authority_over_its_rate_is_refused_and_audited() {
    let mut w = world(AccessSettings { requests_per_minute: 3, ..AccessSettings::default() }).await;
    let cast = cast(&mut w).await;
    let mut c = w.client.clone();
    for number in 1..=3 {
        let unknown =
            authed(&cast.handler, submit(&w, "w-unknown", number, &w.target(1), 1, proto::ResultFormat::Json));
        assert_eq!(c.submit_request(unknown).await.unwrap_err().code(), Code::NotFound);
    }
    let fourth = authed(&cast.handler, submit(&w, "w-unknown", 4, &w.target(1), 1, proto::ResultFormat::Json));
    expect_refused(&w, c.submit_request(fourth), Code::ResourceExhausted, "rate_limited").await;
    // Another authority has its own budget; and time refills the bucket.
    let other = authed(&cast.stranger, submit(&w, "w-unknown", 1, &w.target(1), 1, proto::ResultFormat::Json));
    assert_eq!(c.submit_request(other).await.unwrap_err().code(), Code::NotFound);
    w.clock.advance(chrono::Duration::seconds(30));
    let later = authed(&cast.handler, submit(&w, "w-unknown", 5, &w.target(1), 1, proto::ResultFormat::Json));
    assert_eq!(c.submit_request(later).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_the_trail_is_reported_through_the_api() {
    let mut w = world(AccessSettings::default()).await;
    let cast = cast(&mut w).await;
    let path = w.state().join("audit.jsonl");
    let intact = w.client.verify_audit(authed(&cast.auditor, proto::VerifyAuditRequest {})).await.unwrap().into_inner();
    assert!(intact.intact);

    // Rewrite one entry: the third principal's roles become admin.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let victim =
        lines.iter().position(|l| l.contains("\"principal_created\"") && l.contains("authority_handler")).unwrap();
    lines[victim] = lines[victim].replace("authority_handler", "admin");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let report = w.client.verify_audit(authed(&cast.auditor, proto::VerifyAuditRequest {})).await.unwrap().into_inner();
    assert!(!report.intact);
    assert_eq!(report.bad_entry, victim as u64 + 1, "{}", report.problem);

    // Restore it, then cut the tail: truncation is found against the head.
    std::fs::write(&path, &text).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&path, lines[..lines.len() - 2].join("\n") + "\n").unwrap();
    let report = w.client.verify_audit(authed(&cast.auditor, proto::VerifyAuditRequest {})).await.unwrap().into_inner();
    assert!(!report.intact, "a truncated trail must not verify");
}

/// A CA, a server certificate for localhost, and two client certificates.
struct Pki {
    ca: String,
    server: (String, String),
    handler: (String, String, Vec<u8>),
    stranger: (String, String),
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()]).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    };
    let (server, server_key, _) = leaf("localhost");
    let handler = leaf("handler.dk-police.example");
    let (stranger, stranger_key, _) = leaf("stranger.example");
    Pki { ca: ca.pem(), server: (server, server_key), handler, stranger: (stranger, stranger_key) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_authenticates_the_principal_it_is_mapped_to() {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

    let now = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
    let root = tempfile::tempdir().unwrap();
    KeyStore::init(&root.path().join("keys"), None).unwrap();
    let keys = Arc::new(KeyStore::open(&root.path().join("keys"), None).unwrap());
    let state = root.path().join("state");
    let (_, admin) = AccessStore::open(&state)
        .unwrap()
        .create_principal(None, "bootstrap admin", [Role::Admin].into(), None, now)
        .unwrap();
    let audit = Arc::new(AuditTrail::open(&state, &keys).unwrap());
    let clock = Arc::new(ManualClock::new(now)) as Arc<dyn Clock>;
    let service =
        AccessService::new(&root.path().join("data"), &state, keys, audit, clock, AccessSettings::default()).unwrap();
    let pki = pki();
    let file = |name: &str, text: &str| {
        let path = root.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let files = cdrvault::service::TlsFiles {
        cert: file("server.pem", &pki.server.0),
        key: file("server.key", &pki.server.1),
        client_ca: Some(file("ca.pem", &pki.ca)),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(cdrvault::service::serve(
        listener,
        service,
        Some(files.server_config().unwrap()),
        std::future::pending(),
    ));

    let connect = async |identity: Option<(&str, &str)>| -> Client {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca)).domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        let channel = Endpoint::from_shared(url.clone()).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
        LawfulAccessClient::new(channel)
    };

    // The admin, with a bearer token over TLS, maps the handler's certificate.
    let mut plain = connect(None).await;
    let authority =
        proto::CreateAuthorityRequest { id: "dk-police".into(), country: "DK".into(), name: "Police".into() };
    plain.create_authority(authed(admin.expose(), authority)).await.unwrap();
    let created = plain
        .create_principal(authed(
            admin.expose(),
            proto::CreatePrincipalRequest {
                name: "handler".into(),
                roles: vec!["authority_handler".into()],
                authority: "dk-police".into(),
                client_certificate_sha256: sha256_hex(&pki.handler.2),
            },
        ))
        .await
        .unwrap()
        .into_inner();

    // The certificate alone authenticates the handler.
    let mut handler = connect(Some((&pki.handler.0, &pki.handler.1))).await;
    let me = handler.who_am_i(Request::new(proto::WhoAmIRequest {})).await.unwrap().into_inner();
    assert_eq!((me.id.as_str(), me.authority.as_str()), (created.principal.unwrap().id.as_str(), "dk-police"));

    // A certificate of the same CA that maps to nobody, and no credentials.
    let mut stranger = connect(Some((&pki.stranger.0, &pki.stranger.1))).await;
    let refused = stranger.who_am_i(Request::new(proto::WhoAmIRequest {})).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(refused.message().starts_with("unknown_certificate"), "{}", refused.message());
    let bare = plain.who_am_i(Request::new(proto::WhoAmIRequest {})).await.unwrap_err();
    assert!(bare.message().starts_with("missing_credentials"), "{}", bare.message());
    let trail = std::fs::read_to_string(state.join("audit.jsonl")).unwrap();
    assert!(
        trail.contains("\"reason\":\"unknown_certificate\"") && trail.contains("\"reason\":\"missing_credentials\"")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preserved_records_answer_only_the_authority_that_froze_them() {
    use cdrvault::models::TimestampMicros;
    use cdrvault::orders::{NewOrder, OrderStore, TargetInput};
    use cdrvault::retention::{RetentionConfig, SweepMode, Sweeper};

    let mut w = world(AccessSettings::default()).await;
    let cast = cast(&mut w).await;
    let target = w.target(4);
    let expected = truth(&w, &target, 3);
    assert!(!expected.is_empty());

    // dk-police freezes the target's week, then the year passes and
    // retention destroys those days, copying the frozen records first.
    let orders = Arc::new(OrderStore::open(&w.state()).unwrap());
    let today = TimestampMicros::from_datetime(w.until).partition_date();
    let ends = cdrvault::models::PartitionDate::from_days_since_epoch(today.days_since_epoch() + 800).unwrap();
    let order = NewOrder {
        authority: "dk-police".into(),
        reference: "QF-1".into(),
        targets: vec![TargetInput::parse(&format!("msisdn:{target}"), 1).unwrap()],
        window_start: w.until - chrono::Duration::days(7),
        window_end: w.until,
        ends,
    };
    orders.place(order, &w.keys, today, w.until).unwrap();
    w.clock.advance(chrono::Duration::days(380));
    let sweeper = Sweeper::new(
        &w.root.path().join("data"),
        Arc::clone(&w.keys),
        Arc::clone(&w.audit),
        w.clock.clone() as Arc<dyn Clock>,
        RetentionConfig::default(),
    )
    .with_orders(orders, ParquetConfig::default());
    assert!(sweeper.run(None, SweepMode::Delete).unwrap().days.len() >= 6, "the week is destroyed");

    // Both authorities hold approved warrants over that week.
    let valid = chrono::Duration::days(400);
    let police = approved_warrant(&mut w, &cast, std::slice::from_ref(&target), &["traffic"], valid).await;
    let mut foreign = warrant_request(&w, std::slice::from_ref(&target), &["traffic"], valid);
    foreign.authority = "se-police".into();
    let foreign = w.client.register_warrant(authed(&cast.alice, foreign)).await.unwrap().into_inner().id;
    let decide = proto::DecideWarrantRequest { warrant: foreign.clone(), approve: true, reason: String::new() };
    w.client.decide_warrant(authed(&cast.bob, decide)).await.unwrap();

    let ours =
        w.client.submit_request(authed(&cast.handler, submit(&w, &police, 1, &target, 3, proto::ResultFormat::Json)));
    let ours = ours.await.unwrap().into_inner();
    assert_eq!(ours.status, "answered_partially", "beyond retention, answered from the preserved copy");
    let (_, bytes) = fetch(&mut w.client, &cast.handler, &ours.request_id).await.unwrap();
    let document: Value = serde_json::from_slice(&bytes).unwrap();
    let records = document["records"].as_array().unwrap();
    let ids: BTreeSet<String> = records.iter().map(|r| r["record_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, expected);
    assert!(records.iter().all(|r| r["preserved_under"].is_string()));

    let theirs =
        w.client.submit_request(authed(&cast.stranger, submit(&w, &foreign, 1, &target, 3, proto::ResultFormat::Json)));
    let theirs = theirs.await.unwrap().into_inner();
    assert_eq!(
        (theirs.status.as_str(), theirs.records),
        ("unavailable", 0),
        "another authority's freeze is not theirs"
    );
}
