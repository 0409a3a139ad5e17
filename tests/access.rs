//! The lawful-access API, black-box through gRPC on 127.0.0.1: the whole
//! lifecycle from authority to delivered, digested results compared with the
//! generator's ground truth; a hostile suite in which every attempt is
//! refused with the right status, audited, and discloses nothing; and audit
//! tampering found through the API.

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use serde_json::Value;
use tonic::{Code, Request, Status};

use cdrvault::access::AccessStore;
use cdrvault::access::api::tls::TlsFiles;
use cdrvault::access::api::{self, AccessService};
use cdrvault::access::client::collect;
use cdrvault::access::config::AccessSettings;
use cdrvault::access::render::sha256_hex;
use cdrvault::ops::metrics::Metrics;
use cdrvault::proto;
use cdrvault::proto::lawful_access_client::LawfulAccessClient;
use common::api::*;
use common::{TestVault, noon};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authority_goes_from_warrant_to_delivered_digested_results() {
    let mut w = world(AccessSettings::default()).await;
    let cast = cast(&mut w).await;
    let (target, other) = (w.target(4), w.target(9));
    let targets = [target.clone(), other];
    let grant = Grant { categories: &["traffic", "location"], ..Grant::of(&targets) };
    let warrant = approved_warrant(&mut w, &cast, grant).await;

    // JSON: exactly the ground truth, digest recorded before delivery.
    let submitted = w
        .client
        .submit_request(authed(&cast.handler, w.submission(Ask::to(&warrant, &target))))
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
        .submit_request(authed(
            &cast.handler,
            w.submission(Ask { number: 2, format: proto::ResultFormat::Csv, ..Ask::to(&warrant, &target) }),
        ))
        .await
        .unwrap()
        .into_inner();
    let (_, csv_bytes) = fetch(&mut w.client, &cast.handler, &csv.request_id).await.unwrap();
    let rows = String::from_utf8(csv_bytes).unwrap().lines().count() - 1;
    assert_eq!(rows, expected.len());
    let xml = w
        .client
        .submit_request(authed(
            &cast.handler,
            w.submission(Ask { number: 3, format: proto::ResultFormat::EtsiXml, ..Ask::to(&warrant, &target) }),
        ))
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
    let theirs = proto::ListRequestsRequest { authority: "dk-police".into(), ..Default::default() };
    assert!(w.client.list_requests(authed(&cast.stranger, theirs)).await.unwrap().into_inner().requests.is_empty());
    // A page at a time: the same requests in the same order, and a page's
    // token gives another authority nothing of this one's.
    let page = |size: u32, token: &str| proto::ListRequestsRequest {
        page_size: size,
        page_token: token.to_string(),
        ..Default::default()
    };
    let first = w.client.list_requests(authed(&cast.handler, page(2, ""))).await.unwrap().into_inner();
    let ids_of = |page: &proto::ListRequestsResponse| -> Vec<String> {
        page.requests.iter().map(|r| r.request_id.clone()).collect()
    };
    assert_eq!(ids_of(&first), vec!["DK-dk-police-3".to_string(), "DK-dk-police-2".into()]);
    assert!(!first.next_page_token.is_empty());
    let token = first.next_page_token.clone();
    let second = w.client.list_requests(authed(&cast.handler, page(2, &token))).await.unwrap().into_inner();
    assert_eq!(ids_of(&second), vec!["DK-dk-police-1".to_string()]);
    assert!(second.next_page_token.is_empty(), "the last page");
    let foreign = w.client.list_requests(authed(&cast.stranger, page(2, &token))).await.unwrap().into_inner();
    assert!(foreign.requests.is_empty());
    expect_refused(
        &w,
        Hostile::new(
            "a page token the service did not give",
            {
                let mut client = w.client.clone();
                let asked = authed(&cast.handler, page(2, "not-a-token"));
                async move { client.list_requests(asked).await }
            },
            Code::InvalidArgument,
            "bad_page_token",
        ),
    )
    .await;
    let warrants = w.client.list_warrants(authed(&cast.handler, proto::ListWarrantsRequest::default())).await.unwrap();
    assert_eq!(warrants.into_inner().warrants.len(), 1);
    let foreign = w.client.list_warrants(authed(&cast.stranger, proto::ListWarrantsRequest::default())).await.unwrap();
    assert!(foreign.into_inner().warrants.is_empty());
    // Warrants a page at a time too: a reviewer walks every warrant of
    // every authority, each once, in the order of the whole list.
    for (reference, authority) in [("K-2", "dk-police"), ("K-3", "se-police"), ("K-4", "dk-police")] {
        let grant = Grant::of(std::slice::from_ref(&target));
        let request = proto::RegisterWarrantRequest {
            reference: reference.into(),
            authority: authority.into(),
            ..w.warrant_request(grant)
        };
        w.client.register_warrant(authed(&cast.alice, request)).await.unwrap();
    }
    let warrant_page = |size: u32, token: &str| proto::ListWarrantsRequest {
        page_size: size,
        page_token: token.to_string(),
        ..Default::default()
    };
    let whole = w.client.list_warrants(authed(&cast.alice, warrant_page(0, ""))).await.unwrap().into_inner();
    let whole: Vec<String> = whole.warrants.into_iter().map(|w| w.id).collect();
    assert_eq!(whole.len(), 4);
    let (mut walked, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = w.client.list_warrants(authed(&cast.alice, warrant_page(3, &token))).await.unwrap().into_inner();
        walked.extend(page.warrants.into_iter().map(|w| w.id));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!((walked, pages), (whole, 2));
    // The handler, given the reviewer's token, still sees only its own
    // authority's warrants.
    let handed = w.client.list_warrants(authed(&cast.handler, warrant_page(3, &token))).await.unwrap().into_inner();
    assert!(handed.warrants.iter().all(|w| w.authority == "dk-police"), "{handed:?}");
    let refused = w.client.list_warrants(authed(&cast.alice, warrant_page(3, "zz"))).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);

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
    let (export_info, export) = collect(stream).await.unwrap();
    let export_doc: Value = serde_json::from_slice(&export).unwrap();
    let all: BTreeSet<String> =
        w.records.iter().filter(|r| r.involves_number(&target)).map(|r| r.record_id.clone()).collect();
    assert_eq!(export_doc["records"].as_array().unwrap().len(), all.len());
    assert_eq!(export_info.sha256, sha256_hex(&export));
    assert!(w.audit_entries().iter().any(|e| e["action"] == "subject_exported" && e["reference"] == "DSAR-7"));
    // As the called party of someone else's call, the subject gets the
    // caller's number (an itemised bill shows it), never the caller's IMSI,
    // IMEI or cells; as the caller, its own.
    let exported: std::collections::HashMap<&str, &Value> =
        export_doc["records"].as_array().unwrap().iter().map(|r| (r["record_id"].as_str().unwrap(), r)).collect();
    let mut theirs = 0;
    for record in w.records.iter().filter(|r| r.involves_number(&target)) {
        let shown = exported[record.record_id.as_str()];
        let called_only = record.direction == Some("mo")
            && record.called_number.as_deref() == Some(target.as_str())
            && record.calling_number.as_deref() != Some(target.as_str());
        if called_only && record.imsi.is_some() {
            theirs += 1;
            for field in ["imsi", "imei", "cell_id_start", "cell_id_end", "src_ip", "dst_ip"] {
                assert!(shown[field].is_null(), "{field} of another party's record: {shown}");
            }
            assert_eq!(shown["calling_number"].as_str(), record.calling_number.as_deref());
        }
        if record.direction == Some("mo") && record.calling_number.as_deref() == Some(target.as_str()) {
            assert_eq!(shown["imsi"].as_str(), record.imsi.as_deref(), "the subject's own IMSI");
        }
    }
    assert!(theirs > 0, "the subject was called by others in the data");

    // Nothing the service wrote holds a raw identifier: results are sealed,
    // targets sealed, the trail holds tokens.
    let leaks = leaks_in(&w.state(), &w.records);
    assert!(leaks.is_empty(), "raw identifiers in the state directory: {leaks:?}");

    // An expired result is destroyed, key first, and audited.
    w.vault.clock.advance(chrono::Duration::days(8));
    let gone = fetch(&mut w.client, &cast.handler, "DK-dk-police-1").await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert!(w.audit_entries().iter().any(|e| e["action"] == "result_destroyed"));
    assert_eq!(common::kept_results(&w.state()), 0);
}

/// Submits `message` (a hostile attempt owns its client).
fn sending(
    w: &World,
    message: Request<proto::SubmitRequestRequest>,
) -> impl Future<Output = Result<tonic::Response<proto::RequestInfo>, Status>> + Send + 'static {
    let mut c = w.client.clone();
    async move { c.submit_request(message).await }
}

/// Submits `ask` with `token`, or with no credentials.
fn submitting(
    w: &World,
    token: Option<&str>,
    ask: Ask<'_>,
) -> impl Future<Output = Result<tonic::Response<proto::RequestInfo>, Status>> + Send + 'static {
    let message = w.submission(ask);
    sending(
        w,
        match token {
            Some(token) => authed(token, message),
            None => Request::new(message),
        },
    )
}

fn fetching(
    w: &World,
    token: &str,
    request_id: &str,
) -> impl Future<Output = Result<(proto::RequestInfo, Vec<u8>), Status>> + Send + 'static {
    let (mut c, token, request_id) = (w.client.clone(), token.to_string(), request_id.to_string());
    async move { fetch(&mut c, &token, &request_id).await }
}

fn registering_an_authority(
    w: &World,
    token: &str,
) -> impl Future<Output = Result<tonic::Response<proto::Authority>, Status>> + Send + 'static {
    let mut c = w.client.clone();
    let request =
        authed(token, proto::CreateAuthorityRequest { id: "xx-evil".into(), country: "xx".into(), name: "x".into() });
    async move { c.create_authority(request).await }
}

fn creating_an_admin(
    w: &World,
    token: &str,
) -> impl Future<Output = Result<tonic::Response<proto::CreatePrincipalResponse>, Status>> + Send + 'static {
    let mut c = w.client.clone();
    let request = authed(
        token,
        proto::CreatePrincipalRequest {
            name: "me".into(),
            person: "me".into(),
            roles: vec!["admin".into()],
            ..proto::CreatePrincipalRequest::default()
        },
    );
    async move { c.create_principal(request).await }
}

fn exporting(
    w: &World,
    token: &str,
    target: &str,
) -> impl Future<Output = Result<tonic::Response<tonic::Streaming<proto::ResultChunk>>, Status>> + Send + 'static {
    let mut c = w.client.clone();
    let request = authed(token, proto::ExportSubjectRequest { target: target.into(), reference: "DSAR-9".into() });
    async move { c.export_subject(request).await }
}

fn peeking(
    w: &World,
    token: &str,
    warrant: &str,
) -> impl Future<Output = Result<tonic::Response<proto::Warrant>, Status>> + Send + 'static {
    let mut c = w.client.clone();
    let request = authed(token, proto::GetWarrantRequest { warrant: warrant.into() });
    async move { c.get_warrant(request).await }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_request_is_refused_audited_and_discloses_nothing() {
    use Code::*;
    let mut w = world(AccessSettings::default()).await;
    let cast = cast(&mut w).await;
    let target = w.target(4);
    let warrant = approved_warrant(&mut w, &cast, Grant::of(std::slice::from_ref(&target))).await;
    let ask = Ask::to(&warrant, &target);
    let answered = w.client.submit_request(authed(&cast.handler, w.submission(ask))).await.unwrap().into_inner();
    let results_before = common::kept_results(&w.state());
    // Authentication, roles and objects.
    let attempts = [
        Hostile::new(
            "no credentials",
            submitting(&w, None, Ask { number: 2, ..ask }),
            Unauthenticated,
            "missing_credentials",
        ),
        Hostile::new(
            "forged token",
            submitting(&w, Some("cdv_0000"), Ask { number: 2, ..ask }),
            Unauthenticated,
            "unknown_token",
        ),
        Hostile::new(
            "forged token fetch",
            fetching(&w, "cdv_forged", &answered.request_id),
            Unauthenticated,
            "unknown_token",
        ),
        Hostile::new(
            "auditor submits",
            submitting(&w, Some(&cast.auditor), Ask { number: 2, ..ask }),
            PermissionDenied,
            "missing_role",
        ),
        Hostile::new(
            "handler registers an authority",
            registering_an_authority(&w, &cast.handler),
            PermissionDenied,
            "missing_role",
        ),
        Hostile::new(
            "handler makes itself admin",
            creating_an_admin(&w, &cast.handler),
            PermissionDenied,
            "missing_role",
        ),
        Hostile::new(
            "another authority's warrant",
            submitting(&w, Some(&cast.stranger), Ask { number: 2, ..ask }),
            NotFound,
            "not_found",
        ),
        Hostile::new(
            "another authority's result",
            fetching(&w, &cast.stranger, &answered.request_id),
            NotFound,
            "unknown_request",
        ),
        Hostile::new("another authority peeks", peeking(&w, &cast.stranger, &warrant), NotFound, "not_found"),
        Hostile::new(
            "another authority's handler who is also an auditor fetches",
            fetching(&w, &cast.watcher, &answered.request_id),
            NotFound,
            "unknown_request",
        ),
        Hostile::new(
            "a warrant that does not exist",
            submitting(&w, Some(&cast.handler), Ask { number: 20, ..Ask::to("w-0000000000000000", &target) }),
            NotFound,
            "not_found",
        ),
        Hostile::new(
            "the DPO exports a cell",
            exporting(&w, &cast.dpo, "cell:238-01-1-1"),
            InvalidArgument,
            "not_a_subject",
        ),
        Hostile::new(
            "the DPO exports an address",
            exporting(&w, &cast.dpo, "ip:10.0.0.1"),
            InvalidArgument,
            "not_a_subject",
        ),
    ];
    for attempt in attempts {
        expect_refused(&w, attempt).await;
    }
    // Another authority's warrant and no warrant at all look the same from
    // outside; the trail keeps the precise reason of each.
    let theirs = submitting(&w, Some(&cast.stranger), Ask { number: 3, ..ask }).await.unwrap_err();
    let nothing = submitting(&w, Some(&cast.stranger), Ask { number: 4, ..Ask::to("w-0000000000000000", &target) });
    let nothing = nothing.await.unwrap_err();
    assert_eq!((theirs.code(), theirs.message()), (nothing.code(), nothing.message()));
    let reasons: Vec<Value> = w.audit_entries().iter().rev().take(2).map(|e| e["reason"].clone()).collect();
    assert_eq!(reasons, ["unknown_warrant", "other_authority"]);

    // Warrant state: unapproved, self-approval.
    let pending = Grant { categories: &["traffic", "device"], ..Grant::of(std::slice::from_ref(&target)) };
    let pending =
        w.client.register_warrant(authed(&cast.alice, w.warrant_request(pending))).await.unwrap().into_inner().id;
    let own_decision = {
        let mut c = w.client.clone();
        let request = authed(
            &cast.alice,
            proto::DecideWarrantRequest { warrant: pending.clone(), approve: true, reason: String::new() },
        );
        async move { c.decide_warrant(request).await }
    };
    let attempts = [
        Hostile::new(
            "unapproved warrant",
            submitting(&w, Some(&cast.handler), Ask { number: 2, ..Ask::to(&pending, &target) }),
            FailedPrecondition,
            "warrant_not_approved",
        ),
        Hostile::new("self-approval", own_decision, PermissionDenied, "self_approval"),
    ];
    for attempt in attempts {
        expect_refused(&w, attempt).await;
    }

    // An expired warrant; then scope (target, window, category), replay and size.
    let short = Grant { valid: chrono::Duration::hours(1), ..Grant::of(std::slice::from_ref(&target)) };
    let short = approved_warrant(&mut w, &cast, short).await;
    // A warrant over a century: a request may still span only twice the
    // retention period.
    let mut century = w.warrant_request(Grant::of(std::slice::from_ref(&target)));
    century.reference = "K-century".into();
    century.period_start = time(w.until - chrono::Duration::days(36_500));
    let century = approved(&mut w, &cast, century).await;
    let too_long = 2 * i64::from(AccessSettings::default().retention_days);
    w.vault.clock.advance(chrono::Duration::hours(2));
    let stranger_target = w.target(7);
    let mut devices = w.submission(Ask { number: 7, ..ask });
    devices.categories.push("device".into());
    let devices = sending(&w, authed(&cast.handler, devices));
    let sized = |number: u64, targets: Vec<String>| {
        let mut message = w.submission(Ask { number, ..ask });
        message.targets = targets;
        sending(&w, authed(&cast.handler, message))
    };
    let attempts = [
        Hostile::new(
            "expired warrant",
            submitting(&w, Some(&cast.handler), Ask { number: 4, ..Ask::to(&short, &target) }),
            FailedPrecondition,
            "warrant_expired",
        ),
        Hostile::new(
            "a target outside the warrant",
            submitting(&w, Some(&cast.handler), Ask { number: 5, ..Ask::to(&warrant, &stranger_target) }),
            PermissionDenied,
            "target_out_of_scope",
        ),
        Hostile::new(
            "a window outside the warrant",
            submitting(&w, Some(&cast.handler), Ask { number: 6, days: 30, ..ask }),
            PermissionDenied,
            "window_out_of_scope",
        ),
        Hostile::new(
            "a window longer than twice the retention, inside the warrant",
            submitting(&w, Some(&cast.handler), Ask { number: 10, days: too_long, ..Ask::to(&century, &target) }),
            InvalidArgument,
            "window_too_long",
        ),
        Hostile::new("a category outside the warrant", devices, PermissionDenied, "category_out_of_scope"),
        Hostile::new(
            "a reused request number",
            submitting(&w, Some(&cast.handler), ask),
            AlreadyExists,
            "request_number_reused",
        ),
        Hostile::new(
            "too many targets",
            sized(8, (0..1000).map(|n| format!("msisdn:+45{n:08}")).collect()),
            InvalidArgument,
            "request_too_large",
        ),
    ];
    for attempt in attempts {
        expect_refused(&w, attempt).await;
    }
    // A message over 256 KiB (but under the transport's limit) is refused
    // and audited under its caller too.
    let before = w.audit_entries().len();
    let oversized = sized(9, vec![format!("msisdn:+45{}", "1".repeat(300_000))]);
    expect_refused(&w, Hostile::new("an oversized message", oversized, ResourceExhausted, "message_too_large")).await;
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
    assert_eq!(common::kept_results(&w.state()), results_before);
    let mut c = w.client.clone();
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
            authed(&cast.handler, w.submission(Ask { number, days: 1, ..Ask::to("w-unknown", &w.target(1)) }));
        assert_eq!(c.submit_request(unknown).await.unwrap_err().code(), Code::NotFound);
    }
    let fourth = authed(&cast.handler, w.submission(Ask { number: 4, days: 1, ..Ask::to("w-unknown", &w.target(1)) }));
    expect_refused(&w, Hostile::new("over the rate", sending(&w, fourth), Code::ResourceExhausted, "rate_limited"))
        .await;
    // Another authority has its own budget; and time refills the bucket.
    let other = authed(&cast.stranger, w.submission(Ask { days: 1, ..Ask::to("w-unknown", &w.target(1)) }));
    assert_eq!(c.submit_request(other).await.unwrap_err().code(), Code::NotFound);
    w.vault.clock.advance(chrono::Duration::seconds(30));
    let later = authed(&cast.handler, w.submission(Ask { number: 5, days: 1, ..Ask::to("w-unknown", &w.target(1)) }));
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

    // Any call that would be audited, even one without credentials, finds
    // the cut and fails: the service does not re-sign the shortened trail,
    // and refuses every audited action from then on.
    let anonymous = w.client.who_am_i(authed("cdv_forged", proto::WhoAmIRequest {})).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unavailable, "{anonymous:?}");
    let approved = w.client.who_am_i(authed(&cast.handler, proto::WhoAmIRequest {})).await;
    assert!(approved.is_ok(), "a call that audits nothing still works");
    let submit = authed(&cast.handler, w.submission(Ask::to("w-unknown", &w.target(1))));
    assert_eq!(w.client.submit_request(submit).await.unwrap_err().code(), Code::Unavailable);
    assert!(w.audit.damage().is_some());
    let report = w.client.verify_audit(authed(&cast.auditor, proto::VerifyAuditRequest {})).await.unwrap().into_inner();
    assert!(!report.intact, "still cut, never re-signed");
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), lines.len() - 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_credentials_cost_the_trail_two_entries_an_interval() {
    let mut w = world(AccessSettings::default()).await;
    let before = w.audit_entries().len();
    for n in 0..300 {
        let token = if n % 2 == 0 { "cdv_forged".to_string() } else { format!("cdv_{n:060}") };
        let refused = w.client.who_am_i(authed(&token, proto::WhoAmIRequest {})).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
    }
    let plain = w.client.who_am_i(Request::new(proto::WhoAmIRequest {})).await.unwrap_err();
    assert_eq!(plain.code(), Code::Unauthenticated);
    let during = w.audit_entries();
    assert_eq!(during.len(), before + 1, "only the interval's first failure is audited at once");
    assert_eq!(
        (&during[before]["action"], &during[before]["peer"]),
        (&"authentication_failed".into(), &"127.0.0.1".into())
    );

    // The interval ends: one summary with the count and the reasons.
    assert_eq!(w.desk.flush_failures().unwrap(), 1);
    let after = w.audit_entries();
    assert_eq!(after.len(), before + 2);
    let summary = &after[before + 1];
    assert_eq!(summary["action"], "authentication_failures");
    assert_eq!(summary["count"], 300);
    assert_eq!(summary["reasons"], serde_json::json!(["missing_credentials", "unknown_token"]));
    let refusals = common::metric(&w.metrics.encode(), "cdrvault_access_refusals_total{reason=\"unknown_token\"}");
    assert_eq!(refusals, Some(300.0), "every failure is still counted in the metrics");
    assert_eq!(w.desk.flush_failures().unwrap(), 0, "nothing left to report");
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

    let vault = TestVault::new(noon());
    let registries = vault.registries();
    let audit = vault.audit();
    let (_, admin) = AccessStore::new(Arc::clone(&registries.access))
        .bootstrap(&audit, "bootstrap admin", "root", vault.now())
        .unwrap();
    let desk = vault.desk(&audit, registries, AccessSettings::default(), Metrics::new());
    let service = AccessService::new(Arc::clone(&desk));
    let pki = pki();
    let file = |name: &str, text: &str| {
        let path = vault.root.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let files = TlsFiles {
        cert: file("server.pem", &pki.server.0),
        key: file("server.key", &pki.server.1),
        client_ca: Some(file("ca.pem", &pki.ca)),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(api::serve(listener, service, Some(files.server_config().unwrap()), std::future::pending()));

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
                person: "handler".into(),
                roles: vec!["authority_handler".into()],
                authority: "dk-police".into(),
                client_certificate_sha256: sha256_hex(&pki.handler.2),
                ..proto::CreatePrincipalRequest::default()
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
    // The first failure from 127.0.0.1 is audited at once; the second is
    // counted into the interval's summary.
    let entries = || -> Vec<Value> {
        let trail = std::fs::read_to_string(vault.state().join("audit.jsonl")).unwrap();
        trail.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    };
    let first = entries().pop().unwrap();
    assert_eq!(
        (&first["action"], &first["peer"], &first["reason"]),
        (&"authentication_failed".into(), &"127.0.0.1".into(), &"unknown_certificate".into())
    );
    assert_eq!(desk.flush_failures().unwrap(), 1);
    let summary = entries().pop().unwrap();
    assert_eq!(summary["action"], "authentication_failures");
    assert_eq!(
        (summary["count"].as_u64(), &summary["reasons"]),
        (Some(1), &serde_json::json!(["missing_credentials"]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preserved_records_answer_only_the_authority_that_froze_them() {
    use cdrvault::lifecycle::retention::SweepMode;
    use cdrvault::model::PartitionDate;

    let mut w = world(AccessSettings::default()).await;
    let cast = cast(&mut w).await;
    let target = w.target(4);
    let expected = truth(&w, &target, 3);
    assert!(!expected.is_empty());

    // dk-police's order, registered by alice and approved by bob, freezes
    // the target's week. Each end date is at most 90 days out, so the order
    // is extended every 80 days, each extension approved by the other
    // reviewer; it outlives the year after which retention destroys those
    // days, copying the frozen records first.
    let register = proto::RegisterOrderRequest {
        authority: "dk-police".into(),
        reference: "QF-1".into(),
        targets: vec![format!("msisdn:{target}")],
        window_start: time(w.until - chrono::Duration::days(7)),
        window_end: time(w.until),
        ends: PartitionDate::from_days_since_epoch(w.vault.today().days_since_epoch() + 90).unwrap().to_string(),
    };
    let order = w.client.register_order(authed(&cast.alice, register)).await.unwrap().into_inner();
    assert_eq!(order.status, "registered");
    let approve = |order: &str| proto::DecideOrderRequest { order: order.into(), approve: true, reason: String::new() };
    let active = w.client.decide_order(authed(&cast.bob, approve(&order.id))).await.unwrap().into_inner();
    assert_eq!(active.status, "active");
    for _ in 0..5 {
        w.vault.clock.advance(chrono::Duration::days(80));
        let ends = PartitionDate::from_days_since_epoch(w.vault.today().days_since_epoch() + 90).unwrap();
        let extend = proto::ExtendOrderRequest { order: order.id.clone(), ends: ends.to_string() };
        let pending = w.client.extend_order(authed(&cast.bob, extend)).await.unwrap().into_inner();
        assert_eq!(pending.pending_ends, ends.to_string());
        let extended = w.client.decide_order(authed(&cast.alice, approve(&order.id))).await.unwrap().into_inner();
        assert_eq!((extended.ends, extended.pending_ends), (ends.to_string(), String::new()));
    }
    let sweeper = w.vault.sweeper(&w.audit, w.vault.orders(&w.registries, &w.audit));
    // A year without data or sweeps: the operator vouches for the clock.
    sweeper.confirm_clock("operator").unwrap();
    assert!(sweeper.run(SweepMode::Delete).unwrap().days.len() >= 6, "the week is destroyed");

    // Both authorities hold approved warrants over that week.
    let grant = Grant { valid: chrono::Duration::days(500), ..Grant::of(std::slice::from_ref(&target)) };
    let police = approved_warrant(&mut w, &cast, grant).await;
    let mut foreign = w.warrant_request(grant);
    foreign.authority = "se-police".into();
    let foreign = w.client.register_warrant(authed(&cast.alice, foreign)).await.unwrap().into_inner().id;
    let decide = proto::DecideWarrantRequest { warrant: foreign.clone(), approve: true, reason: String::new() };
    w.client.decide_warrant(authed(&cast.bob, decide)).await.unwrap();

    let ours = w.client.submit_request(authed(&cast.handler, w.submission(Ask::to(&police, &target))));
    let ours = ours.await.unwrap().into_inner();
    assert_eq!(ours.status, "answered_partially", "beyond retention, answered from the preserved copy");
    let (_, bytes) = fetch(&mut w.client, &cast.handler, &ours.request_id).await.unwrap();
    let document: Value = serde_json::from_slice(&bytes).unwrap();
    let records = document["records"].as_array().unwrap();
    let ids: BTreeSet<String> = records.iter().map(|r| r["record_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, expected);
    assert!(records.iter().all(|r| r["preserved_under"].is_string()));

    let theirs = w.client.submit_request(authed(&cast.stranger, w.submission(Ask::to(&foreign, &target))));
    let theirs = theirs.await.unwrap().into_inner();
    assert_eq!(
        (theirs.status.as_str(), theirs.records),
        ("unavailable", 0),
        "another authority's freeze is not theirs"
    );

    // The copies answer only for the order's own target: a dk-police
    // warrant for someone the target talked to gets none of their records.
    let from = w.until - chrono::Duration::days(3);
    let counterpart = w
        .records
        .iter()
        .filter(|r| r.involves_number(&target) && r.start_time.is_some_and(|t| t >= from && t <= w.until))
        .flat_map(|r| [&r.calling_number, &r.called_number])
        .flatten()
        .find(|n| **n != target)
        .cloned()
        .expect("the target talked to someone that week");
    let others = [counterpart.clone()];
    let mut second = w.warrant_request(Grant { valid: chrono::Duration::days(500), ..Grant::of(&others) });
    second.reference = "K-counterpart".into();
    let second = w.client.register_warrant(authed(&cast.alice, second)).await.unwrap().into_inner().id;
    let decide = proto::DecideWarrantRequest { warrant: second.clone(), approve: true, reason: String::new() };
    w.client.decide_warrant(authed(&cast.bob, decide)).await.unwrap();
    let ask = Ask { number: 2, ..Ask::to(&second, &counterpart) };
    let answer = w.client.submit_request(authed(&cast.handler, w.submission(ask))).await.unwrap().into_inner();
    assert_eq!((answer.status.as_str(), answer.records), ("unavailable", 0), "not the order's target");

    // A subject export never reads the copies, so never names the order.
    let export = w.client.export_subject(authed(
        &cast.dpo,
        proto::ExportSubjectRequest { target: format!("msisdn:{target}"), reference: "DSAR-8".into() },
    ));
    let (_, bytes) = collect(export.await.unwrap().into_inner()).await.unwrap();
    let document: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(document["records"].as_array().map(Vec::len), Some(0), "the subject's week is destroyed");
    assert!(!String::from_utf8_lossy(&bytes).contains("po-"), "no order named");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_end_with_their_keep_time_or_their_warrant_whether_or_not_anyone_calls() {
    use cdrvault::ops::periodic::Job;
    let keep = std::time::Duration::from_secs(3600);
    let mut w = world(AccessSettings { result_keep: keep, ..AccessSettings::default() }).await;
    let cast = cast(&mut w).await;
    let (first, second) = (w.target(4), w.target(9));
    let kept = approved_warrant(&mut w, &cast, Grant::of(std::slice::from_ref(&first))).await;
    let mut closing = w.warrant_request(Grant::of(std::slice::from_ref(&second)));
    closing.reference = "K-closing".into();
    let closing = w.client.register_warrant(authed(&cast.alice, closing)).await.unwrap().into_inner().id;
    let decide = proto::DecideWarrantRequest { warrant: closing.clone(), approve: true, reason: String::new() };
    w.client.decide_warrant(authed(&cast.bob, decide)).await.unwrap();

    let mut client = w.client.clone();
    let one = authed(&cast.handler, w.submission(Ask { number: 1, ..Ask::to(&kept, &first) }));
    let one = client.submit_request(one).await.unwrap().into_inner();
    let two = authed(&cast.handler, w.submission(Ask { number: 2, ..Ask::to(&closing, &second) }));
    let two = client.submit_request(two).await.unwrap().into_inner();
    let state = w.state();
    let results = || common::kept_results(&state);
    assert_eq!(results(), 2);
    // A result may be fetched again while it is kept (a delivery that broke
    // on the way is retried), each delivery audited.
    for _ in 0..2 {
        fetch(&mut client, &cast.handler, &two.request_id).await.unwrap();
    }

    // Closing the warrant ends access to its results at once.
    let close = proto::CloseWarrantRequest { warrant: closing.clone() };
    client.close_warrant(authed(&cast.alice, close)).await.unwrap();
    let gone = fetch(&mut client, &cast.handler, &two.request_id).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(results(), 1);
    let destroyed = |reason: &str| {
        w.audit_entries().iter().filter(|e| e["action"] == "result_destroyed" && e["reason"] == reason).count()
    };
    assert_eq!(destroyed("warrant closed"), 1);

    // Past its keep time the other goes at the next housekeeping, with no
    // call on the API in between.
    w.vault.clock.advance(chrono::Duration::seconds(3601));
    let done = w.desk.run_once().unwrap();
    assert_eq!((done.expired, done.unnamed, done.peers), (1, 0, 0));
    assert_eq!(results(), 0, "the sealed result is gone without waiting for a call");
    assert_eq!(destroyed("expired"), 1);
    let gone = fetch(&mut client, &cast.handler, &one.request_id).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_the_trail_nor_the_registry_holds_a_token_that_matches_the_data() {
    use cdrvault::model::IdentifierKind;
    use cdrvault::privacy::token::Tokeniser;
    let mut w = world(AccessSettings::default()).await;
    let cast = cast(&mut w).await;
    let target = w.target(4);
    let warrant = approved_warrant(&mut w, &cast, Grant::of(std::slice::from_ref(&target))).await;
    w.client.submit_request(authed(&cast.handler, w.submission(Ask::to(&warrant, &target)))).await.unwrap();

    // The data files' tokens of the target (one per day), as a local user
    // reading the Parquet files without a key sees them.
    let days = w.vault.keys.days_with_keys().unwrap();
    assert!(!days.is_empty());
    let tokens: Vec<i64> = days
        .iter()
        .map(|day| {
            let key = w.vault.keys.day_key(*day).unwrap();
            Tokeniser::new(&key.token).token(IdentifierKind::Msisdn, target.as_bytes()).0
        })
        .collect();
    let trail = std::fs::read_to_string(w.state().join("audit.jsonl")).unwrap();
    for token in &tokens {
        for form in [format!("{token:016x}"), token.to_string()] {
            assert!(!trail.contains(&form), "the trail holds the target's data token");
        }
    }
    // The trail names the target by a keyed reference, the same in every
    // entry about it.
    let entries = w.audit_entries();
    let registered = entries.iter().find(|e| e["action"] == "warrant_registered").unwrap();
    let answered = entries.iter().find(|e| e["action"] == "request_answered").unwrap();
    let reference = registered["target_refs"][0].as_str().unwrap();
    assert_eq!(reference.len(), 32);
    assert_eq!(answered["target_refs"][0].as_str(), Some(reference));
    assert_eq!(w.audit.target_ref(IdentifierKind::Msisdn, &target), reference);

    // The registry stores no token of a target: a warrant's targets are
    // sealed under its own key, their tokens computed when used.
    let registry = w.state().join("registry.sqlite");
    let mut bytes = std::fs::read(&registry).unwrap();
    bytes.extend(std::fs::read(w.state().join("registry.sqlite-wal")).unwrap_or_default());
    for token in &tokens {
        assert!(!bytes.windows(8).any(|window| window == token.to_be_bytes()), "the registry holds a data token");
    }
    let db = rusqlite::Connection::open(&registry).unwrap();
    let tables: i64 =
        db.query_row("SELECT count(*) FROM sqlite_master WHERE name LIKE '%target_tokens'", [], |r| r.get(0)).unwrap();
    assert_eq!(tables, 0);
}
