//! The lawful-access promises against insiders, through the API: an admin
//! who wants several roles, a reviewer with a second principal, a principal
//! that should no longer work, a warrant stretched into a cell dump, an
//! order placed without review, and a change whose audit entry cannot be
//! written.

mod common;

use tonic::Code;

use cdrvault::access::config::AccessSettings;
use cdrvault::model::PartitionDate;
use cdrvault::proto;
use common::api::*;
use common::{files_below, kept_results};

fn creating(name: &str, person: &str, roles: &[&str], authority: &str) -> proto::CreatePrincipalRequest {
    proto::CreatePrincipalRequest {
        name: name.into(),
        person: person.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        authority: authority.into(),
        ..proto::CreatePrincipalRequest::default()
    }
}

/// The reason code of a refused call.
fn reason(status: &tonic::Status) -> &str {
    status.message().split(':').next().unwrap_or_default()
}

fn order_request(w: &World, reference: &str, targets: &[String], days: i64) -> proto::RegisterOrderRequest {
    proto::RegisterOrderRequest {
        authority: "dk-police".into(),
        reference: reference.into(),
        targets: targets.to_vec(),
        window_start: time(w.until - chrono::Duration::days(3)),
        window_end: time(w.until),
        ends: PartitionDate::from_days_since_epoch(w.vault.today().days_since_epoch() + days).unwrap().to_string(),
    }
}

fn approve_order(order: &str) -> proto::DecideOrderRequest {
    proto::DecideOrderRequest { order: order.into(), approve: true, reason: String::new() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_eyes_are_two_persons_and_duties_stay_apart() {
    let mut w = world(AccessSettings::default()).await;
    let cast = cast(&mut w).await;
    let admin = w.admin.clone();
    let mut c = w.client.clone();

    // An admin cannot make itself, or anyone, admin and anything else.
    for roles in [&["admin", "legal_reviewer"][..], &["admin", "auditor"], &["legal_reviewer", "authority_handler"]] {
        let request = creating("mallory", "mallory", roles, "dk-police");
        let refused = c.create_principal(authed(&admin, request)).await.unwrap_err();
        assert_eq!((refused.code(), reason(&refused)), (Code::PermissionDenied, "incompatible_roles"), "{roles:?}");
    }
    let refusals = w.audit_entries().iter().filter(|e| e["reason"] == "incompatible_roles").count();
    assert_eq!(refusals, 3, "each refusal is audited");

    // Nor across a person's principals: the reviewer alice may not also
    // handle for an authority under a second principal.
    let second = creating("alice as handler", "alice", &["authority_handler"], "dk-police");
    let refused = c.create_principal(authed(&admin, second)).await.unwrap_err();
    assert_eq!(reason(&refused), "incompatible_roles");

    // A second reviewer principal of alice is possible (say for another
    // team), but it is still alice: it cannot approve alice's warrant.
    let alias = creating("alice (second desk)", "alice", &["legal_reviewer"], "");
    let alias = c.create_principal(authed(&admin, alias)).await.unwrap().into_inner().token;
    let warrant = w.warrant_request(Grant::of(&[w.target(1)]));
    let warrant = c.register_warrant(authed(&cast.alice, warrant)).await.unwrap().into_inner();
    let decide = proto::DecideWarrantRequest { warrant: warrant.id.clone(), approve: true, reason: String::new() };
    let refused = c.decide_warrant(authed(&alias, decide.clone())).await.unwrap_err();
    assert_eq!(reason(&refused), "self_approval");
    assert_eq!(c.decide_warrant(authed(&cast.bob, decide)).await.unwrap().into_inner().status, "approved");

    // A person without a name is refused.
    let nobody = creating("ghost", " ", &["auditor"], "");
    assert_eq!(reason(&c.create_principal(authed(&admin, nobody)).await.unwrap_err()), "person_required");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_rotated_and_expired_credentials_stop_working() {
    let mut w = world(AccessSettings::default()).await;
    let cast = cast(&mut w).await;
    let admin = w.admin.clone();
    let mut c = w.client.clone();
    let whoami = |token: &str| authed(token, proto::WhoAmIRequest {});

    // Rotation: the old token stops working at once, the new one works.
    let registry = w.state().join(cdrvault::registry::REGISTRY_FILE);
    let row = |name: &str| -> (Vec<u8>, Vec<u8>) {
        rusqlite::Connection::open(&registry)
            .unwrap()
            .query_row("SELECT token_sha256, seal FROM principals WHERE name = ?1", [name], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap()
    };
    let (old_token_sha256, old_seal) = row("handler");
    let rotated = c.rotate_token(authed(&cast.handler, proto::RotateTokenRequest::default())).await.unwrap();
    let handler = rotated.into_inner().token;
    assert_eq!(reason(&c.who_am_i(whoami(&cast.handler)).await.unwrap_err()), "unknown_token");
    let me = c.who_am_i(whoami(&handler)).await.unwrap().into_inner();
    assert_eq!(me.authority, "dk-police");
    // Nor when someone who can write the registry puts the row back as it
    // was, seal and all: the rotation is kept in the keys directory too.
    let (new_token_sha256, new_seal) = row("handler");
    let put_back = "UPDATE principals SET token_sha256 = ?2, seal = ?3 WHERE id = ?1";
    let connection = rusqlite::Connection::open(&registry).unwrap();
    connection.execute(put_back, rusqlite::params![me.id, old_token_sha256, old_seal]).unwrap();
    assert_eq!(reason(&c.who_am_i(whoami(&cast.handler)).await.unwrap_err()), "unknown_token");
    connection.execute(put_back, rusqlite::params![me.id, new_token_sha256, new_seal]).unwrap();
    drop(connection);
    // Another principal's token is the admin's to rotate.
    let theirs = proto::RotateTokenRequest { principal: me.id.clone() };
    assert_eq!(reason(&c.rotate_token(authed(&cast.auditor, theirs)).await.unwrap_err()), "missing_role");

    // Revocation: audited, and the credentials never work again.
    let seal_before: Vec<u8> = rusqlite::Connection::open(&registry)
        .unwrap()
        .query_row("SELECT seal FROM principals WHERE id = ?1", [&me.id], |r| r.get(0))
        .unwrap();
    let revoke = proto::RevokePrincipalRequest { principal: me.id.clone(), reason: "left the unit".into() };
    assert!(c.revoke_principal(authed(&handler, revoke.clone())).await.is_err(), "only an admin revokes");
    let revoked = c.revoke_principal(authed(&admin, revoke)).await.unwrap().into_inner();
    assert!(revoked.revoked);
    let refused = c.who_am_i(whoami(&handler)).await.unwrap_err();
    assert_eq!((refused.code(), reason(&refused)), (Code::Unauthenticated, "revoked_credentials"));
    assert!(w.audit_entries().iter().any(|e| e["action"] == "principal_revoked" && e["principal"] == me.id.as_str()));
    // Not even when someone who can write the registry puts the row back
    // as it was, seal and all: the revocation is kept in the keys
    // directory too.
    let put_back = "UPDATE principals SET revoked_at = NULL, seal = ?2 WHERE id = ?1";
    let restored =
        rusqlite::Connection::open(&registry).unwrap().execute(put_back, rusqlite::params![me.id, seal_before]);
    assert_eq!(restored.unwrap(), 1);
    let refused = c.who_am_i(whoami(&handler)).await.unwrap_err();
    assert_eq!((refused.code(), reason(&refused)), (Code::Unauthenticated, "revoked_credentials"));
    let me_admin = c.who_am_i(whoami(&admin)).await.unwrap().into_inner();
    let last = proto::RevokePrincipalRequest { principal: me_admin.id, reason: "oops".into() };
    assert_eq!(reason(&c.revoke_principal(authed(&admin, last)).await.unwrap_err()), "last_admin");

    // Expiry, on the injected clock.
    let mut temporary = creating("contractor", "carol", &["auditor"], "");
    temporary.valid_until = time(w.until + chrono::Duration::hours(1));
    let temporary = c.create_principal(authed(&admin, temporary)).await.unwrap().into_inner().token;
    assert!(c.who_am_i(whoami(&temporary)).await.is_ok());
    w.vault.clock.advance(chrono::Duration::hours(2));
    assert_eq!(reason(&c.who_am_i(whoami(&temporary)).await.unwrap_err()), "expired_credentials");
    w.desk.flush_failures().unwrap();
    let reasons: Vec<String> = w
        .audit_entries()
        .iter()
        .filter(|e| e["action"].as_str().is_some_and(|a| a.starts_with("authentication_failure")))
        .flat_map(|e| e["reasons"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r.as_str().map(str::to_string))
        .collect();
    let first = w.audit_entries().iter().find(|e| e["action"] == "authentication_failed").map(|e| e["reason"].clone());
    assert_eq!(first, Some("unknown_token".into()), "the first failure of the interval, audited at once");
    assert!(reasons.contains(&"revoked_credentials".to_string()) && reasons.contains(&"expired_credentials".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_dump_needs_its_own_grant_and_the_location_category() {
    let mut w = world(AccessSettings::default()).await;
    let cast = cast(&mut w).await;
    let mut c = w.client.clone();
    let cell = w.records.iter().find_map(|r| r.cell_id_start.clone()).expect("a cell in the data");
    let cells = [cell.clone()];

    // A warrant that grants traffic only cannot name a cell, nor can one
    // without the explicit cell-dump grant.
    for (categories, cell_dump) in [(&["traffic"][..], true), (&["traffic", "location"], false)] {
        let mut request = w.warrant_request(Grant { categories, ..Grant::of(&cells) });
        request.targets = vec![format!("cell:{cell}")];
        request.cell_dump = cell_dump;
        let refused = c.register_warrant(authed(&cast.alice, request)).await.unwrap_err();
        assert_eq!(reason(&refused), "cell_dump_not_granted", "{categories:?}, cell_dump {cell_dump}");
    }

    // Granted: a request must still ask for location.
    let mut request = w.warrant_request(Grant { categories: &["traffic", "location"], ..Grant::of(&cells) });
    request.targets = vec![format!("cell:{cell}")];
    request.cell_dump = true;
    let warrant = c.register_warrant(authed(&cast.alice, request)).await.unwrap().into_inner();
    assert!(warrant.cell_dump);
    let decide = proto::DecideWarrantRequest { warrant: warrant.id.clone(), approve: true, reason: String::new() };
    c.decide_warrant(authed(&cast.bob, decide)).await.unwrap();
    let mut ask = w.submission(Ask { days: 5, ..Ask::to(&warrant.id, "") });
    ask.targets = vec![format!("cell:{cell}")];
    let refused = c.submit_request(authed(&cast.handler, ask.clone())).await.unwrap_err();
    assert_eq!(reason(&refused), "cell_dump_not_granted");
    ask.request_number = 2;
    ask.categories = vec!["traffic".into(), "location".into()];
    let answered = c.submit_request(authed(&cast.handler, ask)).await.unwrap().into_inner();
    assert!(answered.records > 0, "{answered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preservation_order_is_reviewed_bounded_and_audited_under_its_principals() {
    let mut w = world(AccessSettings::default()).await;
    let cast = cast(&mut w).await;
    let mut c = w.client.clone();
    let target = [format!("msisdn:{}", w.target(3))];

    let refusals = [
        (cast.handler.clone(), order_request(&w, "QF-1", &target, 30), "missing_role"),
        (
            cast.alice.clone(),
            proto::RegisterOrderRequest { authority: "xx-nobody".into(), ..order_request(&w, "QF-1", &target, 30) },
            "bad_authority",
        ),
        (cast.alice.clone(), order_request(&w, "QF-1", &target, 20_000), "order_too_long"),
        (cast.alice.clone(), order_request(&w, "QF-1", &["cell:238-01-1-1".to_string()], 30), "bad_order_scope"),
    ];
    for (token, request, expected) in refusals {
        let refused = c.register_order(authed(&token, request)).await.unwrap_err();
        assert_eq!(reason(&refused), expected);
    }

    let order = c.register_order(authed(&cast.alice, order_request(&w, "QF-1", &target, 30))).await.unwrap();
    let order = order.into_inner();
    assert_eq!((order.status.as_str(), order.target_kinds.as_slice()), ("registered", &["msisdn".to_string()][..]));
    let refused = c.decide_order(authed(&cast.alice, approve_order(&order.id))).await.unwrap_err();
    assert_eq!(reason(&refused), "self_approval");
    let active = c.decide_order(authed(&cast.bob, approve_order(&order.id))).await.unwrap().into_inner();
    assert_eq!(active.status, "active");

    // A new end date waits for another person's approval.
    let too_far = proto::ExtendOrderRequest { order: order.id.clone(), ends: "2099-12-31".into() };
    assert_eq!(reason(&c.extend_order(authed(&cast.alice, too_far)).await.unwrap_err()), "order_too_long");
    let ends = PartitionDate::from_days_since_epoch(w.vault.today().days_since_epoch() + 80).unwrap().to_string();
    let extend = proto::ExtendOrderRequest { order: order.id.clone(), ends: ends.clone() };
    let pending = c.extend_order(authed(&cast.alice, extend)).await.unwrap().into_inner();
    assert_eq!((pending.ends.as_str(), pending.pending_ends.as_str()), (active.ends.as_str(), ends.as_str()));
    assert_eq!(
        reason(&c.decide_order(authed(&cast.alice, approve_order(&order.id))).await.unwrap_err()),
        "self_approval"
    );
    let extended = c.decide_order(authed(&cast.bob, approve_order(&order.id))).await.unwrap().into_inner();
    assert_eq!(extended.ends, ends);

    // Handlers see their own authority's orders; another authority's is
    // unknown to them.
    let mine = c.list_orders(authed(&cast.handler, proto::ListOrdersRequest::default())).await.unwrap();
    assert_eq!(mine.into_inner().orders.len(), 1);
    let get = proto::GetOrderRequest { order: order.id.clone() };
    assert_eq!(reason(&c.get_order(authed(&cast.stranger, get)).await.unwrap_err()), "unknown_order");

    // Every step is in the trail under the principal who took it.
    let alice = c.who_am_i(authed(&cast.alice, proto::WhoAmIRequest {})).await.unwrap().into_inner().id;
    let bob = c.who_am_i(authed(&cast.bob, proto::WhoAmIRequest {})).await.unwrap().into_inner().id;
    let steps: Vec<(String, String)> = w
        .audit_entries()
        .iter()
        .filter(|e| e["order"] == order.id.as_str() && e["action"] != "access_refused")
        .map(|e| (e["action"].as_str().unwrap().to_string(), e["actor"].as_str().unwrap().to_string()))
        .collect();
    let expected = [
        ("order_registered", &alice),
        ("order_decided", &bob),
        ("order_end_requested", &alice),
        ("order_end_decided", &bob),
    ];
    assert_eq!(steps, expected.map(|(a, p)| (a.to_string(), p.clone())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_change_commits_without_its_audit_entry() {
    let mut w = world(AccessSettings::default()).await;
    let cast = cast(&mut w).await;
    let admin = w.admin.clone();
    let mut c = w.client.clone();
    let target = w.target(2);
    let approved = approved_warrant(&mut w, &cast, Grant::of(std::slice::from_ref(&target))).await;
    let mut registered = w.warrant_request(Grant::of(std::slice::from_ref(&target)));
    registered.reference = "K-pending".into();
    let registered = c.register_warrant(authed(&cast.alice, registered)).await.unwrap().into_inner().id;
    let entries_before = w.audit_entries().len();
    let results_before = common::kept_results(&w.state());

    // The trail refuses every append: each change fails as unavailable and
    // leaves the registry as it was.
    w.audit.fail_appends(true);
    let unavailable = |status: tonic::Status| assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let authority = proto::CreateAuthorityRequest { id: "fi-police".into(), country: "fi".into(), name: "x".into() };
    unavailable(c.create_authority(authed(&admin, authority.clone())).await.unwrap_err());
    let principal = creating("dave", "dave", &["auditor"], "");
    unavailable(c.create_principal(authed(&admin, principal.clone())).await.unwrap_err());
    let mut warrant = w.warrant_request(Grant::of(std::slice::from_ref(&target)));
    warrant.reference = "K-unaudited".into();
    unavailable(c.register_warrant(authed(&cast.alice, warrant.clone())).await.unwrap_err());
    let decide = proto::DecideWarrantRequest { warrant: registered.clone(), approve: true, reason: String::new() };
    unavailable(c.decide_warrant(authed(&cast.bob, decide.clone())).await.unwrap_err());
    let close = proto::CloseWarrantRequest { warrant: approved.clone() };
    unavailable(c.close_warrant(authed(&cast.alice, close)).await.unwrap_err());
    let submit = w.submission(Ask::to(&approved, &target));
    unavailable(c.submit_request(authed(&cast.handler, submit.clone())).await.unwrap_err());
    let order = order_request(&w, "QF-unaudited", &[format!("msisdn:{target}")], 30);
    unavailable(c.register_order(authed(&cast.alice, order.clone())).await.unwrap_err());
    let revoke = proto::RevokePrincipalRequest { principal: "p-unknown".into(), reason: "x".into() };
    assert!(c.revoke_principal(authed(&admin, revoke)).await.is_err());
    let rotate = c.rotate_token(authed(&cast.auditor, proto::RotateTokenRequest::default())).await.unwrap_err();
    unavailable(rotate);
    assert_eq!(w.audit_entries().len(), entries_before, "nothing was written");

    // Nothing happened: with the trail back, each change is still to do,
    // and succeeds once.
    w.audit.fail_appends(false);
    c.who_am_i(authed(&cast.auditor, proto::WhoAmIRequest {})).await.expect("the old token still works");
    let listed = c.list_warrants(authed(&cast.alice, proto::ListWarrantsRequest::default())).await.unwrap();
    let warrants = listed.into_inner().warrants;
    assert!(!warrants.iter().any(|w| w.reference == "K-unaudited"), "no warrant without its entry");
    assert_eq!(warrants.iter().find(|w| w.id == registered).unwrap().status, "registered");
    assert_eq!(warrants.iter().find(|w| w.id == approved).unwrap().status, "approved");
    assert_eq!(common::kept_results(&w.state()), results_before, "no sealed result left behind");
    c.create_authority(authed(&admin, authority)).await.expect("the authority was never created");
    c.create_principal(authed(&admin, principal)).await.expect("nor the principal");
    c.register_warrant(authed(&cast.alice, warrant)).await.expect("nor the warrant");
    c.decide_warrant(authed(&cast.bob, decide)).await.expect("nor the decision");
    c.submit_request(authed(&cast.handler, submit)).await.expect("the request number was never used");
    c.register_order(authed(&cast.alice, order)).await.expect("nor the order");
}

/// Someone with write access to the registry, where sealed results are
/// kept, changes one result's bytes, puts another result's bytes in place
/// of a third, and deletes a fourth: no fetch returns anything but the
/// bytes that were recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_result_changed_or_swapped_in_the_registry_is_refused_not_delivered() {
    let mut w = world(AccessSettings::default()).await;
    let cast = cast(&mut w).await;
    let target = w.target(3);
    let warrant = approved_warrant(&mut w, &cast, Grant::of(std::slice::from_ref(&target))).await;
    let ids = submitted(&mut w, &cast.handler, &warrant, &target, 1..=4).await;
    let delivered = fetch(&mut w.client, &cast.handler, &ids[0]).await.unwrap();
    assert!(!delivered.1.is_empty());

    let db = rusqlite::Connection::open(w.state().join(cdrvault::registry::REGISTRY_FILE)).unwrap();
    let name_of = |id: &str| -> String {
        db.query_row("SELECT result_name FROM requests WHERE request_id = ?1", [id], |r| r.get(0)).unwrap()
    };
    let (first, second, third, fourth) = (name_of(&ids[0]), name_of(&ids[1]), name_of(&ids[2]), name_of(&ids[3]));
    // One byte flipped in the first.
    let mut bytes: Vec<u8> =
        db.query_row("SELECT sealed FROM sealed_results WHERE name = ?1", [&first], |r| r.get(0)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    db.execute("UPDATE sealed_results SET sealed = ?1 WHERE name = ?2", rusqlite::params![bytes, first]).unwrap();
    // The second's bytes in place of the third's.
    db.execute(
        "UPDATE sealed_results SET sealed = (SELECT sealed FROM sealed_results WHERE name = ?1) WHERE name = ?2",
        [&second, &third],
    )
    .unwrap();
    db.execute("DELETE FROM sealed_results WHERE name = ?1", [&fourth]).unwrap();
    drop(db);

    for id in [&ids[0], &ids[2]] {
        let refused = fetch(&mut w.client, &cast.handler, id).await.unwrap_err();
        assert_eq!(refused.code(), Code::DataLoss, "{id}: {refused:?}");
        assert_eq!(reason(&refused), "result_damaged", "{refused:?}");
    }
    let gone = fetch(&mut w.client, &cast.handler, &ids[3]).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    // The result whose bytes were copied is untouched.
    assert!(fetch(&mut w.client, &cast.handler, &ids[1]).await.is_ok());
}

/// Someone with write access to the data directory spoils the files a
/// request must read. The result's key is made while the lookup runs, so
/// the failed lookup must take it away again: no key, no kept result, and
/// the handler gets an error, not a partial answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_lookup_fails_leaves_no_result_key_behind() {
    let mut w = world(AccessSettings::default()).await;
    let cast = cast(&mut w).await;
    let target = w.target(3);
    let warrant = approved_warrant(&mut w, &cast, Grant::of(std::slice::from_ref(&target))).await;
    let spoiled: Vec<_> =
        files_below(&w.vault.data()).into_iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")).collect();
    assert!(!spoiled.is_empty());
    for file in &spoiled {
        let length = std::fs::metadata(file).unwrap().len() as usize;
        std::fs::write(file, vec![0u8; length]).unwrap();
    }

    let ask = w.submission(Ask::to(&warrant, &target));
    let failed = w.client.submit_request(authed(&cast.handler, ask)).await.unwrap_err();
    assert_eq!(failed.code(), Code::Internal, "{failed:?}");
    let result_keys = w.vault.keys_dir().join("result");
    assert!(result_keys.is_dir(), "the key was made while the lookup ran");
    assert_eq!(files_below(&result_keys), Vec::<std::path::PathBuf>::new(), "and destroyed when it failed");
    assert_eq!(kept_results(&w.state()), 0);
}

/// Someone who can write the state directory, but not the keys directory,
/// edits the registry behind the service: approves a warrant no second
/// reviewer approved, widens an approved warrant to categories it does not
/// grant, makes a handler an admin, adds an admin of their own, and
/// activates a preservation order no second reviewer approved. Each of
/// those rows carries a seal under a key of the keys directory: every
/// edited row is refused, nothing is disclosed or preserved through it, and
/// the rows left alone still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_rows_edited_behind_the_service_are_refused() {
    let mut w = world(AccessSettings::default()).await;
    let cast = cast(&mut w).await;
    let second_handler = common::api::principal(&mut w, "second handler", &["authority_handler"], "dk-police").await;
    let target = w.target(3);
    let targets = std::slice::from_ref(&target);
    let referenced = |reference: &str| proto::RegisterWarrantRequest {
        reference: reference.into(),
        ..w.warrant_request(Grant::of(targets))
    };
    let (first, second, registered) = (referenced("K-1"), referenced("K-2"), referenced("K-3"));
    let untouched = common::api::approved(&mut w, &cast, first).await;
    let widened = common::api::approved(&mut w, &cast, second).await;
    let unapproved = w.client.register_warrant(authed(&cast.alice, registered)).await.unwrap().into_inner().id;
    let order = order_request(&w, "QF-9", &[format!("msisdn:{target}")], 30);
    let order = w.client.register_order(authed(&cast.alice, order)).await.unwrap().into_inner().id;

    let db = rusqlite::Connection::open(w.state().join(cdrvault::registry::REGISTRY_FILE)).unwrap();
    let edits = [
        ("UPDATE warrants SET status = 'approved', decided_by = registered_by WHERE id = ?1", unapproved.as_str()),
        ("UPDATE warrants SET categories = 'traffic,device,location,ip' WHERE id = ?1", widened.as_str()),
        ("UPDATE principals SET roles = 'admin' WHERE name = ?1", "second handler"),
    ];
    for (edit, id) in edits {
        assert_eq!(db.execute(edit, [id]).unwrap(), 1, "{edit}");
    }
    let forged = "a-token-of-the-insiders-own-making";
    let forged_sha256 = ring::digest::digest(&ring::digest::SHA256, forged.as_bytes()).as_ref().to_vec();
    db.execute(
        "INSERT INTO principals (id, name, person, roles, token_sha256, created_at)
         VALUES ('p-mallory', 'mallory', 'mallory', 'admin', ?1, '2026-01-01T00:00:00+00:00')",
        [forged_sha256],
    )
    .unwrap();
    drop(db);

    // Neither warrant answers, in what it was given nor in what was added.
    for (number, warrant, categories) in [(1, &unapproved, &["traffic"][..]), (2, &widened, &["traffic", "device"])] {
        let mut ask = w.submission(Ask { number, ..Ask::to(warrant, &target) });
        ask.categories = categories.iter().map(|c| c.to_string()).collect();
        let refused = w.client.submit_request(authed(&cast.handler, ask)).await.unwrap_err();
        assert_eq!(refused.code(), Code::Internal, "{warrant}: {refused:?}");
    }
    // Neither edited principal is an admin.
    for token in [&second_handler, &forged.to_string()] {
        let request = proto::CreateAuthorityRequest { id: "xx-police".into(), country: "xx".into(), name: "x".into() };
        assert!(w.client.create_authority(authed(token, request)).await.is_err(), "{token}");
    }
    let created = w.audit_entries().iter().filter(|e| e["action"] == "authority_created").count();
    assert_eq!(created, 2, "only the cast's two authorities");
    let kept = kept_results(&w.state());
    assert_eq!(kept, 0, "nothing answered through an edited row");
    // Each refusal is counted for the operator's alert, and audited with
    // the row it refused.
    assert_eq!(w.metrics.registry_rows_refused.get(), 4);
    let refused: Vec<(String, String)> = w
        .audit_entries()
        .iter()
        .filter(|e| e["action"] == "registry_row_refused")
        .map(|e| (e["table"].as_str().unwrap().to_string(), e["id"].as_str().unwrap().to_string()))
        .collect();
    let expected = [("warrants", &unapproved), ("warrants", &widened), ("principals", &"p-mallory".to_string())];
    assert_eq!(refused.len(), 4, "{refused:?}");
    for (table, id) in expected {
        assert!(refused.contains(&(table.to_string(), id.clone())), "{table} {id}: {refused:?}");
    }

    // What nobody edited still works.
    let ask = w.submission(Ask { number: 3, ..Ask::to(&untouched, &target) });
    let answered = w.client.submit_request(authed(&cast.handler, ask)).await.unwrap().into_inner();
    assert!(answered.records > 0, "{answered:?}");

    // An order activated behind the service is refused, and so is every
    // lookup and sweep that would have to honour it, until the operator
    // deals with the row.
    let db = rusqlite::Connection::open(w.state().join(cdrvault::registry::REGISTRY_FILE)).unwrap();
    let edit =
        "UPDATE preservation_orders SET status = 'active', decided_by = 'p-x', ends = '2029-01-01' WHERE id = ?1";
    assert_eq!(db.execute(edit, [&order]).unwrap(), 1);
    drop(db);
    let get = proto::GetOrderRequest { order: order.clone() };
    assert_eq!(w.client.get_order(authed(&cast.alice, get)).await.unwrap_err().code(), Code::Internal);
    let ask = w.submission(Ask { number: 4, ..Ask::to(&untouched, &target) });
    assert_eq!(w.client.submit_request(authed(&cast.handler, ask)).await.unwrap_err().code(), Code::Internal);
    // A year on, retention will not act on the forged order: it stops
    // rather than preserve under it (or destroy what a true order holds).
    let sweeper = w.vault.sweeper(&w.audit, w.vault.orders(&w.registries, &w.audit));
    w.vault.clock.advance(chrono::Duration::days(400));
    sweeper.confirm_clock("operator").unwrap();
    assert!(sweeper.run(cdrvault::lifecycle::retention::SweepMode::Delete).is_err());
    assert!(!w.vault.data().join("preserved").exists(), "nothing copied under the forged order");
}

/// A handler of another authority who can also write the registry moves a
/// request (its result and the digest that checks it) to their own
/// authority, or points their own request at another's result: either way
/// the result must stay with the authority that asked for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_moved_to_another_authority_in_the_registry_is_refused() {
    let mut w = world(AccessSettings::default()).await;
    let cast = cast(&mut w).await;
    let target = w.target(3);
    let warrant = approved_warrant(&mut w, &cast, Grant::of(std::slice::from_ref(&target))).await;
    let ids = submitted(&mut w, &cast.handler, &warrant, &target, 1..=3).await;
    assert!(fetch(&mut w.client, &cast.stranger, &ids[0]).await.is_err(), "another authority's request");

    let db = rusqlite::Connection::open(w.state().join(cdrvault::registry::REGISTRY_FILE)).unwrap();
    let moved = db.execute("UPDATE requests SET authority_id = 'se-police' WHERE request_id = ?1", [&ids[0]]).unwrap();
    assert_eq!(moved, 1);
    // The second request's result, digest and all, under the third's id,
    // which is then moved too.
    let pointed = db
        .execute(
            "UPDATE requests SET (result_name, sha256, bytes, records, authority_id) =
                 (SELECT result_name, sha256, bytes, records, 'se-police' FROM requests WHERE request_id = ?1)
             WHERE request_id = ?2",
            [&ids[1], &ids[2]],
        )
        .unwrap();
    assert_eq!(pointed, 1);
    drop(db);

    for id in [&ids[0], &ids[2]] {
        // A delivery is reported by its size alone: its bytes are records.
        match fetch(&mut w.client, &cast.stranger, id).await {
            Ok((info, bytes)) => panic!("{id}: {} records, {} bytes delivered", info.records, bytes.len()),
            Err(refused) => assert_eq!(refused.code(), Code::Internal, "{id}: {refused:?}"),
        }
    }
    let delivered = w.audit_entries().iter().filter(|e| e["action"] == "result_delivered").count();
    assert_eq!(delivered, 0, "nothing delivered through an edited row");
    assert_eq!(w.metrics.registry_rows_refused.get(), 2);
    let refused = w.audit_entries().iter().filter(|e| e["action"] == "registry_row_refused").count();
    assert_eq!(refused, 2);
    // The request nobody edited is still delivered to its authority.
    assert!(fetch(&mut w.client, &cast.handler, &ids[1]).await.is_ok());
}

/// A revocation or a rotation is kept out of the registry's reach (in the
/// keys directory) before it commits, never after: if that record cannot
/// be made, nothing commits, so no moment exists in which the registry
/// says revoked (or rotated) and an older copy of the row, put back, would
/// still authenticate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_or_rotation_commits_only_with_its_record_in_the_keys_directory() {
    let mut w = world(AccessSettings::default()).await;
    let cast = cast(&mut w).await;
    let admin = w.admin.clone();
    let mut c = w.client.clone();
    let whoami = |token: &str| authed(token, proto::WhoAmIRequest {});
    let me = c.who_am_i(whoami(&cast.handler)).await.unwrap().into_inner();
    // Records in the keys directory cannot be made (their directories lead
    // nowhere), while the checks at authentication still find none.
    let registry_keys = w.vault.keys_dir().join("registry");
    for kind in ["retired", "retired-tokens"] {
        let _ = std::fs::remove_dir_all(registry_keys.join(kind));
        std::os::unix::fs::symlink(registry_keys.join("nowhere"), registry_keys.join(kind)).unwrap();
    }
    assert!(c.who_am_i(whoami(&cast.handler)).await.is_ok());

    let revoke = proto::RevokePrincipalRequest { principal: me.id.clone(), reason: "left the unit".into() };
    assert!(c.revoke_principal(authed(&admin, revoke)).await.is_err());
    let rotate = proto::RotateTokenRequest { principal: me.id.clone() };
    assert!(c.rotate_token(authed(&admin, rotate)).await.is_err());

    let registry = rusqlite::Connection::open(w.state().join(cdrvault::registry::REGISTRY_FILE)).unwrap();
    let revoked: Option<String> =
        registry.query_row("SELECT revoked_at FROM principals WHERE id = ?1", [&me.id], |r| r.get(0)).unwrap();
    assert_eq!(revoked, None, "revoked in the registry, not in the keys directory");
    // Neither committed: the handler's token is the one it had, and works.
    let still = c.who_am_i(whoami(&cast.handler)).await.unwrap().into_inner();
    assert_eq!(still.id, me.id);
}

/// Someone who can write the registry but not the data deletes an active
/// preservation order's row, so that retention destroys the days the order
/// holds without copying them. The order's key, out of the registry's
/// reach, says it exists: retention stops instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_stops_when_an_orders_row_is_gone_but_its_key_is_not() {
    let mut w = world(AccessSettings::default()).await;
    let cast = cast(&mut w).await;
    let target = w.target(3);
    let order = order_request(&w, "QF-gone", &[format!("msisdn:{target}")], 30);
    let order = w.client.register_order(authed(&cast.alice, order)).await.unwrap().into_inner().id;
    w.client.decide_order(authed(&cast.bob, approve_order(&order))).await.unwrap();
    let db = rusqlite::Connection::open(w.state().join(cdrvault::registry::REGISTRY_FILE)).unwrap();
    db.execute("DELETE FROM preservation_targets WHERE order_id = ?1", [&order]).unwrap();
    assert_eq!(db.execute("DELETE FROM preservation_orders WHERE id = ?1", [&order]).unwrap(), 1);
    drop(db);

    let files_before = files_below(&w.vault.data()).len();
    let sweeper = w.vault.sweeper(&w.audit, w.vault.orders(&w.registries, &w.audit));
    w.vault.clock.advance(chrono::Duration::days(400));
    sweeper.confirm_clock("operator").unwrap();
    let stopped = sweeper.run(cdrvault::lifecycle::retention::SweepMode::Delete);
    assert!(stopped.is_err(), "retention destroyed the order's days: {stopped:?}");
    assert_eq!(files_below(&w.vault.data()).len(), files_before, "nothing destroyed");
}

/// Someone who can write the registry keeps a copy of an order's row and
/// puts it back after a decision: the row from before its approval (so
/// retention would not preserve under it, and would end it), or the row
/// from before its end was moved later (so it would end early). Each still
/// carries the seal the service gave it then; what the last decision made
/// the order is kept in the keys directory too, and retention stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orders_row_put_back_from_before_its_last_decision_stops_retention() {
    let mut w = world(AccessSettings::default()).await;
    let cast = cast(&mut w).await;
    let target = w.target(3);
    let registry = w.state().join(cdrvault::registry::REGISTRY_FILE);
    let row_of = |order: &str| -> Vec<rusqlite::types::Value> {
        let db = rusqlite::Connection::open(&registry).unwrap();
        db.query_row("SELECT * FROM preservation_orders WHERE id = ?1", [order], |r| {
            (0..r.as_ref().column_count()).map(|i| r.get(i)).collect()
        })
        .unwrap()
    };
    let put_back = |row: &[rusqlite::types::Value]| {
        let db = rusqlite::Connection::open(&registry).unwrap();
        let marks = vec!["?"; row.len()].join(", ");
        db.execute(&format!("REPLACE INTO preservation_orders VALUES ({marks})"), rusqlite::params_from_iter(row))
            .unwrap();
    };
    // One order put back as it was before its approval.
    let first = order_request(&w, "QF-first", &[format!("msisdn:{target}")], 50);
    let first = w.client.register_order(authed(&cast.alice, first)).await.unwrap().into_inner().id;
    let registered = row_of(&first);
    w.client.decide_order(authed(&cast.bob, approve_order(&first))).await.unwrap();
    // Another as it was before its end was moved from 30 to 60 days on.
    let second = order_request(&w, "QF-second", &[format!("msisdn:{target}")], 30);
    let second = w.client.register_order(authed(&cast.alice, second)).await.unwrap().into_inner().id;
    w.client.decide_order(authed(&cast.bob, approve_order(&second))).await.unwrap();
    let ending_sooner = row_of(&second);
    let ends = PartitionDate::from_days_since_epoch(w.vault.today().days_since_epoch() + 60).unwrap();
    let extend = proto::ExtendOrderRequest { order: second.clone(), ends: ends.to_string() };
    w.client.extend_order(authed(&cast.alice, extend)).await.unwrap();
    w.client.decide_order(authed(&cast.bob, approve_order(&second))).await.unwrap();

    let sweeper = w.vault.sweeper(&w.audit, w.vault.orders(&w.registries, &w.audit));
    w.vault.clock.advance(chrono::Duration::days(40));
    sweeper.confirm_clock("operator").unwrap();
    for (order, row) in [(&first, &registered), (&second, &ending_sooner)] {
        let now = row_of(order);
        put_back(row);
        let stopped = sweeper.run(cdrvault::lifecycle::retention::SweepMode::Delete);
        assert!(stopped.is_err(), "{order}: the sweep went on: {stopped:?}");
        put_back(&now);
        let lifted = w.audit_entries().iter().filter(|e| e["action"] == "order_lifted").count();
        assert_eq!(lifted, 0, "{order} was ended under the row put back");
    }
    // With the rows as the service left them, the sweep goes on and both
    // orders stay.
    sweeper.run(cdrvault::lifecycle::retention::SweepMode::Delete).unwrap();
    for order in [&first, &second] {
        let get = proto::GetOrderRequest { order: order.clone() };
        assert_eq!(w.client.get_order(authed(&cast.alice, get)).await.unwrap().into_inner().status, "active");
    }
}

/// A call whose audit entry cannot be made durable because an fsync failed
/// stops the service, as a failed fsync anywhere does: the state of the
/// disk is unknown, and an entry written after it could sit on a trail
/// that lost the one before. A trail that is merely unwritable refuses the
/// call and the service goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_during_a_call_stops_the_service() {
    let mut w = world(AccessSettings::default()).await;
    let admin = w.admin.clone();
    let authority = |id: &str| proto::CreateAuthorityRequest { id: id.into(), country: "dk".into(), name: "x".into() };
    w.audit.fail_appends(true);
    assert!(w.client.create_authority(authed(&admin, authority("dk-a"))).await.is_err());
    assert!(!w.shutdown.is_triggered(), "an unwritable trail is not a failed fsync");
    w.audit.fail_appends(false);
    w.audit.fail_fsyncs(true);
    assert!(w.client.create_authority(authed(&admin, authority("dk-b"))).await.is_err());
    assert!(w.shutdown.is_triggered(), "the service went on after a failed fsync");
}

/// The yearly statistics an operator reports to its oversight body count
/// what the requests' rows say: someone who can write the registry adds a
/// request that never was, or makes a delivery look older than it was.
/// Each counted row (its ages included) is checked against its seal, and
/// the report is refused rather than given wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_yearly_statistics_count_only_what_the_service_recorded() {
    let mut w = world(AccessSettings::default()).await;
    let cast = cast(&mut w).await;
    let target = w.target(3);
    let warrant = approved_warrant(&mut w, &cast, Grant::of(std::slice::from_ref(&target))).await;
    let ask = w.submission(Ask { number: 1, ..Ask::to(&warrant, &target) });
    let asked = w.client.submit_request(authed(&cast.handler, ask)).await.unwrap().into_inner().request_id;
    let report = || proto::StatisticsRequest { year: 2026 };
    let honest = w.client.statistics(authed(&cast.auditor, report())).await.unwrap().into_inner();
    assert_eq!(honest.authorities.iter().map(|a| a.received).sum::<u64>(), 1);

    let registry = w.state().join(cdrvault::registry::REGISTRY_FILE);
    let db = rusqlite::Connection::open(&registry).unwrap();
    // The delivery's records moved to the oldest age bucket, then back.
    let buckets: Vec<(i64, i64)> = db
        .prepare("SELECT rowid, bucket FROM request_ages WHERE request_id = ?1")
        .unwrap()
        .query_map([&asked], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!buckets.is_empty());
    db.execute("UPDATE request_ages SET bucket = 5 WHERE request_id = ?1", [&asked]).unwrap();
    let refused = w.client.statistics(authed(&cast.auditor, report())).await;
    assert_eq!(refused.map(|r| r.into_inner().authorities.len()).unwrap_err().code(), Code::Internal);
    for (rowid, bucket) in &buckets {
        db.execute("UPDATE request_ages SET bucket = ?2 WHERE rowid = ?1", [rowid, bucket]).unwrap();
    }
    let restored = w.client.statistics(authed(&cast.auditor, report())).await.unwrap().into_inner();
    assert_eq!(restored, honest, "the rows as the service wrote them");
    // A request that never was.
    db.execute(
        "INSERT INTO requests (request_id, authority_id, request_number, warrant_id, principal_id, status,
             submitted_at_us, reason)
         SELECT 'DK-dk-police-99', authority_id, 99, warrant_id, principal_id, 'refused', submitted_at_us, 'x'
         FROM requests WHERE request_id = ?1",
        [&asked],
    )
    .unwrap();
    let refused = w.client.statistics(authed(&cast.auditor, report())).await;
    assert_eq!(refused.map(|r| r.into_inner().authorities.len()).unwrap_err().code(), Code::Internal);
}

/// Someone who can write the registry edits a request's row (what it
/// delivered, or whose it is): a listing shows the rows the service wrote,
/// never the edited one. The listing is refused, audited and counted, as
/// any other read of a row that fails its seal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_listing_never_shows_a_row_edited_behind_the_service() {
    let mut w = world(AccessSettings::default()).await;
    let cast = cast(&mut w).await;
    let target = w.target(3);
    let warrant = approved_warrant(&mut w, &cast, Grant::of(std::slice::from_ref(&target))).await;
    let ask = w.submission(Ask { number: 1, ..Ask::to(&warrant, &target) });
    let asked = w.client.submit_request(authed(&cast.handler, ask)).await.unwrap().into_inner().request_id;
    let list = || proto::ListRequestsRequest::default();
    let honest = w.client.list_requests(authed(&cast.handler, list())).await.unwrap().into_inner();
    assert_eq!(honest.requests.len(), 1);

    let db = rusqlite::Connection::open(w.state().join(cdrvault::registry::REGISTRY_FILE)).unwrap();
    let edited = db.execute("UPDATE requests SET records = records + 1000 WHERE request_id = ?1", [&asked]).unwrap();
    assert_eq!(edited, 1);
    let refused = w.client.list_requests(authed(&cast.handler, list())).await;
    match refused {
        Ok(listed) => panic!("the edited row listed: {:?}", listed.into_inner().requests),
        Err(status) => assert_eq!(status.code(), Code::Internal, "{status:?}"),
    }
    assert_eq!(w.metrics.registry_rows_refused.get(), 1);
    let audited = w.audit_entries().iter().filter(|e| e["action"] == "registry_row_refused").count();
    assert_eq!(audited, 1);
    db.execute("UPDATE requests SET records = records - 1000 WHERE request_id = ?1", [&asked]).unwrap();
    let restored = w.client.list_requests(authed(&cast.handler, list())).await.unwrap().into_inner();
    assert_eq!(restored, honest, "the row as the service wrote it");
}

/// Someone who can write the registry deletes a request's row while its
/// result is kept, or a warrant's row while it is open: no expiry would
/// ever find that result again, and no closing that warrant, so the result
/// and the warrant's targets would stay sealed under keys that live for
/// good, for whoever reads both directories. The housekeeping destroys a
/// key that no row names (a result's with the sealed bytes kept under it),
/// audited, once the key is older than a call in flight could be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_whose_rows_were_deleted_are_destroyed_not_kept() {
    use cdrvault::ops::periodic::Job;

    let mut w = world(AccessSettings::default()).await;
    let Swept { cast, target, warrant, other, ids } = two_results_and_another_warrant(&mut w).await;
    assert_eq!(kept_results(&w.state()), 2);
    let keys = |of: &str| files_below(&w.vault.keys_dir().join(of));
    assert_eq!(keys("result").len(), 2);
    assert_eq!(keys("warrant").len(), 2);

    let db = rusqlite::Connection::open(w.state().join(cdrvault::registry::REGISTRY_FILE)).unwrap();
    let result: String =
        db.query_row("SELECT result_name FROM requests WHERE request_id = ?1", [&ids[0]], |r| r.get(0)).unwrap();
    assert!(db.execute("DELETE FROM request_ages WHERE request_id = ?1", [&ids[0]]).unwrap() > 0);
    assert_eq!(db.execute("DELETE FROM requests WHERE request_id = ?1", [&ids[0]]).unwrap(), 1);
    assert!(db.execute("DELETE FROM warrant_targets WHERE warrant_id = ?1", [&other]).unwrap() > 0);
    assert_eq!(db.execute("DELETE FROM warrants WHERE id = ?1", [&other]).unwrap(), 1);
    drop(db);

    // Just written, the keys could be calls' in flight: kept.
    let done = w.desk.run_once().unwrap();
    assert_eq!(done.unnamed, 0);
    assert_eq!((keys("result").len(), keys("warrant").len()), (2, 2));

    // Every key written longer ago than the grace: only those no row
    // names go, the result's with its sealed bytes.
    age_record_keys(&w);
    let done = w.desk.run_once().unwrap();
    assert_eq!(done.unnamed, 2);
    let (results_left, warrants_left) = (keys("result"), keys("warrant"));
    assert_eq!((results_left.len(), warrants_left.len()), (1, 1));
    assert!(!results_left[0].to_string_lossy().contains(&result), "the unnamed result's key is the one destroyed");
    assert!(!warrants_left[0].to_string_lossy().contains(&other), "the unnamed warrant's key is the one destroyed");
    assert_eq!(kept_results(&w.state()), 1, "the sealed bytes no request names are gone too");
    let audited: Vec<(String, String)> = w
        .audit_entries()
        .into_iter()
        .filter(|e| e["action"] == "unnamed_key_destroyed")
        .map(|e| (e["of"].as_str().unwrap().to_string(), e["name"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(audited, vec![("result".to_string(), result), ("warrant".to_string(), other)]);
    // What nobody touched still works.
    assert!(fetch(&mut w.client, &cast.handler, &ids[1]).await.is_ok());
    let ask = w.submission(Ask { number: 3, ..Ask::to(&warrant, &target) });
    assert!(w.client.submit_request(authed(&cast.handler, ask)).await.is_ok());
    assert_eq!(w.desk.run_once().unwrap().unnamed, 0, "nothing left to sweep");
}

/// What the sweep tests start from: a warrant with two requests answered
/// (their results kept), and another warrant with no request.
struct Swept {
    cast: Cast,
    target: String,
    warrant: String,
    other: String,
    ids: Vec<String>,
}

async fn two_results_and_another_warrant(w: &mut World) -> Swept {
    let cast = cast(w).await;
    let target = w.target(3);
    let warrant = approved_warrant(w, &cast, Grant::of(std::slice::from_ref(&target))).await;
    let others = [w.target(4), w.target(5)];
    let other = approved_warrant(w, &cast, Grant::of(&others)).await;
    let ids = submitted(w, &cast.handler, &warrant, &target, 1..=2).await;
    Swept { cast, target, warrant, other, ids }
}

/// Sets every result and warrant key's modification time back beyond the
/// grace of the sweep of unnamed keys.
fn age_record_keys(w: &World) {
    use cdrvault::access::unnamed::UNNAMED_KEY_GRACE;
    let long_ago = std::time::SystemTime::now() - UNNAMED_KEY_GRACE - std::time::Duration::from_secs(60);
    for of in ["result", "warrant"] {
        for key in files_below(&w.vault.keys_dir().join(of)) {
            std::fs::File::options().write(true).open(&key).unwrap().set_modified(long_ago).unwrap();
        }
    }
}

/// Someone who can write the registry keeps a result for good by editing
/// its request's row (no expiry), and a warrant's targets by editing its
/// row (valid for ever): the rows still name the keys, but their seals no
/// longer hold, so they name nothing and the keys go, each refusal in the
/// trail.
#[tokio::test]
async fn a_row_edited_to_keep_a_key_alive_keeps_nothing() {
    use cdrvault::ops::periodic::Job;

    let mut w = world(AccessSettings::default()).await;
    let Swept { cast, other, ids, .. } = two_results_and_another_warrant(&mut w).await;
    let keys = |of: &str| files_below(&w.vault.keys_dir().join(of));

    let db = rusqlite::Connection::open(w.state().join(cdrvault::registry::REGISTRY_FILE)).unwrap();
    let result: String =
        db.query_row("SELECT result_name FROM requests WHERE request_id = ?1", [&ids[0]], |r| r.get(0)).unwrap();
    let edited = "UPDATE requests SET result_expires_us = NULL WHERE request_id = ?1";
    assert_eq!(db.execute(edited, [&ids[0]]).unwrap(), 1);
    let edited = "UPDATE warrants SET valid_until_us = 9000000000000000 WHERE id = ?1";
    assert_eq!(db.execute(edited, [&other]).unwrap(), 1);
    drop(db);
    age_record_keys(&w);

    let done = w.desk.run_once().unwrap();
    assert_eq!(done.unnamed, 2, "the keys that only edited rows name are destroyed");
    let (results_left, warrants_left) = (keys("result"), keys("warrant"));
    assert_eq!((results_left.len(), warrants_left.len()), (1, 1));
    assert!(!results_left[0].to_string_lossy().contains(&result), "the edited request's key is the one destroyed");
    assert!(!warrants_left[0].to_string_lossy().contains(&other), "the edited warrant's key is the one destroyed");
    let entries = w.audit_entries();
    let refused: Vec<(String, String, String)> = entries
        .iter()
        .filter(|e| e["action"] == "registry_row_refused")
        .map(|e| {
            let field = |name: &str| e[name].as_str().unwrap().to_string();
            (field("table"), field("id"), field("method"))
        })
        .collect();
    let housekeeping = "housekeeping".to_string();
    assert_eq!(
        refused,
        vec![
            ("requests".to_string(), ids[0].clone(), housekeeping.clone()),
            ("warrants".to_string(), other.clone(), housekeeping)
        ]
    );
    let destroyed = entries.iter().filter(|e| e["action"] == "unnamed_key_destroyed").count();
    assert_eq!(destroyed, 2);
    // The request nobody touched is still fetched; the edited one is refused.
    assert!(fetch(&mut w.client, &cast.handler, &ids[1]).await.is_ok());
    assert!(fetch(&mut w.client, &cast.handler, &ids[0]).await.is_err());
    assert_eq!(w.desk.run_once().unwrap().unnamed, 0, "nothing left to sweep");
}
