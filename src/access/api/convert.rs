//! Between the wire and the domain: proto messages into the desk's inputs,
//! and the desk's records into proto messages. Nothing here decides.

use std::collections::BTreeSet;

use crate::access::input;
use crate::access::orders::order_end;
use crate::access::render::ResultFormat;
use crate::access::requests::Submission;
use crate::access::warrants::{Decision, NewWarrant};
use crate::access::{NewPrincipal, Refusal};
use crate::audit::Verification;
use crate::lifecycle::orders::NewOrder;
use crate::model::Category;
use crate::proto;
use crate::registry::{AGE_BUCKETS, AuthorityStatistics, Order, Principal, RequestRecord, Role, Warrant};

pub fn result_format(value: i32) -> ResultFormat {
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

fn category_names(categories: &BTreeSet<Category>) -> Vec<String> {
    categories.iter().map(|c| c.as_str().to_string()).collect()
}

pub fn new_principal(body: proto::CreatePrincipalRequest) -> Result<NewPrincipal, Refusal> {
    input::within_limit(&[("name", &body.name), ("authority", &body.authority), ("person", &body.person)])?;
    let roles: BTreeSet<Role> =
        body.roles.iter().map(|r| Role::parse(r)).collect::<Option<_>>().ok_or(Refusal::UnknownRole)?;
    let certificate = match body.client_certificate_sha256.trim() {
        "" => None,
        text => match hex::decode(text) {
            Ok(bytes) if bytes.len() == 32 => Some(bytes),
            _ => return Err(Refusal::BadCertificate),
        },
    };
    let expires_at = match input::optional(&body.valid_until) {
        Some(text) => Some(input::time(text, "valid_until")?),
        None => None,
    };
    Ok(NewPrincipal {
        name: body.name,
        person: body.person.trim().to_string(),
        roles,
        authority: input::optional(&body.authority).map(str::to_string),
        certificate,
        expires_at,
    })
}

pub fn new_warrant(body: proto::RegisterWarrantRequest, max_targets: usize) -> Result<NewWarrant, Refusal> {
    input::within_limit(&[
        ("authority", &body.authority),
        ("reference", &body.reference),
        ("issued_by", &body.issued_by),
        ("legal_basis", &body.legal_basis),
    ])?;
    Ok(NewWarrant {
        targets: input::targets(&body.targets, max_targets)?,
        period_start: input::time(&body.period_start, "period_start")?,
        period_end: input::time(&body.period_end, "period_end")?,
        categories: input::categories(&body.categories)?,
        valid_until: input::time(&body.valid_until, "valid_until")?,
        cell_dump: body.cell_dump,
        authority: body.authority,
        reference: body.reference,
        issued_by: body.issued_by,
        legal_basis: body.legal_basis,
    })
}

pub fn decision(body: &proto::DecideWarrantRequest) -> Result<Decision, Refusal> {
    input::within_limit(&[("warrant", &body.warrant), ("reason", &body.reason)])?;
    Ok(if body.approve { Decision::Approve } else { Decision::Reject(body.reason.trim().to_string()) })
}

pub fn submission(body: proto::SubmitRequestRequest) -> Submission {
    Submission {
        format: result_format(body.format),
        warrant: body.warrant,
        number: body.request_number,
        targets: body.targets,
        window_start: body.window_start,
        window_end: body.window_end,
        categories: body.categories,
    }
}

pub fn principal_info(principal: &Principal) -> proto::PrincipalInfo {
    proto::PrincipalInfo {
        id: principal.id.clone(),
        name: principal.name.clone(),
        roles: principal.roles.iter().map(|r| r.as_str().to_string()).collect(),
        authority: principal.authority.clone().unwrap_or_default(),
        person: principal.person.clone(),
        valid_until: principal.expires_at.map(|t| t.rfc3339()).unwrap_or_default(),
        revoked: principal.revoked,
    }
}

pub fn warrant_info(w: &Warrant) -> proto::Warrant {
    proto::Warrant {
        id: w.id.clone(),
        authority: w.authority.clone(),
        reference: w.reference.clone(),
        issued_by: w.issued_by.clone(),
        legal_basis: w.legal_basis.clone(),
        target_kinds: w.target_kinds.iter().map(|k| k.as_str().to_string()).collect(),
        period_start: w.period_start.rfc3339(),
        period_end: w.period_end.rfc3339(),
        categories: category_names(&w.categories),
        valid_until: w.valid_until.rfc3339(),
        status: w.status.as_str().to_string(),
        registered_by: w.registered_by.clone(),
        decided_by: w.decided_by.clone().unwrap_or_default(),
        decision_reason: w.decision_reason.clone().unwrap_or_default(),
        cell_dump: w.cell_dump,
    }
}

pub fn new_order(body: proto::RegisterOrderRequest, max_targets: usize) -> Result<NewOrder, Refusal> {
    input::within_limit(&[("authority", &body.authority), ("reference", &body.reference), ("ends", &body.ends)])?;
    Ok(NewOrder {
        targets: input::targets(&body.targets, max_targets)?,
        window_start: input::time(&body.window_start, "window_start")?,
        window_end: input::time(&body.window_end, "window_end")?,
        ends: order_end(&body.ends)?,
        authority: body.authority,
        reference: body.reference,
    })
}

pub fn order_decision(body: &proto::DecideOrderRequest) -> Result<Decision, Refusal> {
    input::within_limit(&[("order", &body.order), ("reason", &body.reason)])?;
    Ok(if body.approve { Decision::Approve } else { Decision::Reject(body.reason.trim().to_string()) })
}

pub fn order_info(o: &Order) -> proto::Order {
    proto::Order {
        id: o.id.clone(),
        authority: o.authority.clone(),
        reference: o.reference.clone(),
        target_kinds: o.targets.iter().map(|t| t.kind.as_str().to_string()).collect(),
        window_start: o.window_start.rfc3339(),
        window_end: o.window_end.rfc3339(),
        ends: o.ends.to_string(),
        status: o.status.as_str().to_string(),
        registered_by: o.registered_by.principal.clone(),
        decided_by: o.decided_by.clone().unwrap_or_default(),
        decision_reason: o.decision_reason.clone().unwrap_or_default(),
        pending_ends: o.pending.as_ref().map(|p| p.ends.to_string()).unwrap_or_default(),
        pending_by: o.pending.as_ref().map(|p| p.by.principal.clone()).unwrap_or_default(),
    }
}

pub fn request_info(r: &RequestRecord) -> proto::RequestInfo {
    proto::RequestInfo {
        request_id: r.request_id.clone(),
        warrant: r.warrant.clone(),
        status: r.status.as_str().to_string(),
        records: r.records,
        format: proto_format(r.format.as_deref()),
        sha256: r.sha256.clone().unwrap_or_default(),
        bytes: r.bytes,
        submitted_at: r.submitted_at.rfc3339(),
        result_expires: r.result_expires.map(|t| t.rfc3339()).unwrap_or_default(),
        days_unavailable: r.days_unavailable,
    }
}

pub fn verification(check: &Verification) -> proto::VerifyAuditResponse {
    let (bad_entry, problem) = check.problem.clone().unwrap_or((0, String::new()));
    proto::VerifyAuditResponse { intact: check.is_intact(), entries: check.entries, bad_entry, problem }
}

pub fn statistics(year: i32, statistics: Vec<AuthorityStatistics>) -> proto::StatisticsReport {
    proto::StatisticsReport {
        year,
        authorities: statistics
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
    }
}
