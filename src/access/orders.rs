//! Preservation orders through the API: registered by a legal reviewer,
//! approved or rejected by another person, extended the same way, lifted
//! by a reviewer; read by reviewers, auditors, and the handlers of the
//! ordering authority. The order's own rules (targets, window, bounded
//! duration, keys, audit entries) are [`OrderStore`]'s; who may take each
//! step is [`authz`]'s.

use super::authz::{self, Action, Listing};
use super::desk::{Call, Desk};
use super::refusal::{AccessError, Refusal};
use super::warrants::Decision;
use crate::lifecycle::orders::{NewOrder, OrderError};
use crate::model::PartitionDate;
use crate::registry::{Actor, Order, OrderStatus, Principal};

impl From<OrderError> for AccessError {
    fn from(error: OrderError) -> Self {
        match error {
            OrderError::InvalidTarget { position, .. } => Refusal::MalformedTarget(position).into(),
            OrderError::TargetSyntax(syntax) => Refusal::TargetSyntax(syntax.0).into(),
            OrderError::CellTarget(_) => Refusal::BadOrderScope.into(),
            OrderError::InvalidPeriod => Refusal::EmptyWindow.into(),
            OrderError::TooLong(days) => Refusal::OrderTooLong(days).into(),
            OrderError::NotFound(_) => Refusal::UnknownOrder.into(),
            OrderError::State(is, needs) => Refusal::OrderState(is, needs).into(),
            OrderError::NoPendingEnd => Refusal::NoPendingEnd.into(),
            OrderError::Duplicate(_) => Refusal::Duplicate.into(),
            OrderError::Audit(error) => AccessError::AuditUnavailable(error),
            OrderError::Registry(error) => error.into(),
            OrderError::Keys(error) => error.into(),
            OrderError::Preserve(_) => AccessError::Internal("the order's preserved copies could not be changed"),
            OrderError::Sealing => AccessError::Internal("the order's targets cannot be unsealed"),
        }
    }
}

fn actor(principal: &Principal) -> Actor {
    Actor { principal: principal.id.clone(), person: principal.person.clone() }
}

impl Desk {
    /// Registers an order (legal reviewer) for a registered authority; it
    /// preserves nothing until another person approves it.
    pub fn register_order(&self, call: &mut Call, new: NewOrder) -> Result<Order, AccessError> {
        authz::permit(&call.principal, Action::ManageOrders)?;
        if self.store.authority_country(&new.authority)?.is_none() {
            return Err(Refusal::BadAuthority(new.authority).into());
        }
        let order = self.orders.register(new, &actor(&call.principal), self.now())?;
        call.order = Some(order.id.clone());
        Ok(order)
    }

    /// Decides a registered order, or the pending end date of an active one:
    /// by a reviewer who is another person than the one who asked.
    pub fn decide_order(&self, call: &mut Call, id: &str, decision: Decision) -> Result<Order, AccessError> {
        call.order = Some(id.to_string());
        authz::permit(&call.principal, Action::ManageOrders)?;
        let order = self.orders.get(id)?.ok_or(Refusal::UnknownOrder)?;
        let approve = decision == Decision::Approve;
        let now = self.now();
        match (&order.status, &order.pending) {
            (OrderStatus::Registered, _) => {
                authz::may_decide_order(&call.principal, &order.registered_by)?;
                let reason = match &decision {
                    Decision::Approve => None,
                    Decision::Reject(reason) if reason.trim().is_empty() => return Err(Refusal::ReasonRequired.into()),
                    Decision::Reject(reason) => Some(reason.trim()),
                };
                Ok(self.orders.decide(id, approve, &call.principal.id, reason, now)?)
            }
            (OrderStatus::Active, Some(pending)) => {
                authz::may_decide_order(&call.principal, &pending.by)?;
                Ok(self.orders.decide_end(id, approve, &call.principal.id, now)?)
            }
            (OrderStatus::Active, None) => Err(Refusal::NoPendingEnd.into()),
            (status, _) => Err(Refusal::OrderState(status.as_str(), "registered").into()),
        }
    }

    /// Asks for a new end date of an active order (legal reviewer), to be
    /// approved by another person.
    pub fn extend_order(&self, call: &mut Call, id: &str, ends: PartitionDate) -> Result<Order, AccessError> {
        call.order = Some(id.to_string());
        authz::permit(&call.principal, Action::ManageOrders)?;
        Ok(self.orders.request_end(id, ends, &actor(&call.principal), self.now())?)
    }

    /// Lifts an order (legal reviewer): its copies and key are destroyed at
    /// once. One reviewer suffices: lifting only takes data away.
    pub fn lift_order(&self, call: &mut Call, id: &str, reason: &str) -> Result<Order, AccessError> {
        call.order = Some(id.to_string());
        authz::permit(&call.principal, Action::ManageOrders)?;
        if reason.trim().is_empty() {
            return Err(Refusal::ReasonRequired.into());
        }
        self.orders.lift(id, reason.trim(), &call.principal.id, self.now())?;
        Ok(self.orders.get(id)?.ok_or(Refusal::UnknownOrder)?)
    }

    /// An order the caller may see.
    pub fn order(&self, call: &mut Call, id: &str) -> Result<Order, AccessError> {
        call.order = Some(id.to_string());
        let order = self.orders.get(id)?.ok_or(Refusal::UnknownOrder)?;
        authz::may_see_order(&call.principal, &order.authority)?;
        Ok(order)
    }

    /// The orders the caller may see, oldest first, optionally of one
    /// authority.
    pub fn list_orders(&self, call: &mut Call, authority: Option<&str>) -> Result<Vec<Order>, AccessError> {
        let all = self.orders.list()?;
        Ok(match authz::order_listing(&call.principal, authority)? {
            Listing::All(None) => all,
            Listing::All(Some(asked)) | Listing::Authority(asked) => {
                all.into_iter().filter(|o| o.authority == asked).collect()
            }
            Listing::Nothing => Vec::new(),
        })
    }
}

/// The last day of an order, from its text form.
pub fn order_end(text: &str) -> Result<PartitionDate, Refusal> {
    PartitionDate::parse(text.trim()).ok_or(Refusal::BadTime("ends"))
}
