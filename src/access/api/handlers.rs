//! One handler per RPC: convert the message, call the desk, convert back.

use tonic::{Request, Response, Status};

use super::{AccessService, ChunkStream, chunks, convert};
use crate::access::input;
use crate::access::orders::order_end;
use crate::proto;
use crate::proto::lawful_access_server::LawfulAccess;

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl LawfulAccess for AccessService {
    async fn who_am_i(&self, request: Request<proto::WhoAmIRequest>) -> Reply<proto::PrincipalInfo> {
        let info = self.call("WhoAmI", request, |_, call, _| Ok(convert::principal_info(&call.principal))).await?;
        Ok(Response::new(info))
    }

    async fn create_authority(&self, request: Request<proto::CreateAuthorityRequest>) -> Reply<proto::Authority> {
        let created = self
            .call("CreateAuthority", request, |desk, call, body| {
                input::within_limit(&[("id", &body.id), ("name", &body.name), ("country", &body.country)])?;
                desk.create_authority(call, &body.id, &body.country, &body.name)?;
                Ok(proto::Authority { country: body.country.to_ascii_uppercase(), id: body.id, name: body.name })
            })
            .await?;
        Ok(Response::new(created))
    }

    async fn create_principal(
        &self,
        request: Request<proto::CreatePrincipalRequest>,
    ) -> Reply<proto::CreatePrincipalResponse> {
        let created = self
            .call("CreatePrincipal", request, |desk, call, body| {
                let (principal, token) = desk.create_principal(call, convert::new_principal(body)?)?;
                Ok(proto::CreatePrincipalResponse {
                    principal: Some(convert::principal_info(&principal)),
                    token: token.expose().to_string(),
                })
            })
            .await?;
        Ok(Response::new(created))
    }

    async fn revoke_principal(&self, request: Request<proto::RevokePrincipalRequest>) -> Reply<proto::PrincipalInfo> {
        let revoked = self
            .call("RevokePrincipal", request, |desk, call, body| {
                input::within_limit(&[("principal", &body.principal), ("reason", &body.reason)])?;
                Ok(convert::principal_info(&desk.revoke_principal(call, &body.principal, &body.reason)?))
            })
            .await?;
        Ok(Response::new(revoked))
    }

    async fn rotate_token(&self, request: Request<proto::RotateTokenRequest>) -> Reply<proto::RotateTokenResponse> {
        let rotated = self
            .call("RotateToken", request, |desk, call, body| {
                input::within_limit(&[("principal", &body.principal)])?;
                let id = input::optional(&body.principal).map_or_else(|| call.principal.id.clone(), str::to_string);
                let token = desk.rotate_token(call, &id)?;
                Ok(proto::RotateTokenResponse { token: token.expose().to_string() })
            })
            .await?;
        Ok(Response::new(rotated))
    }

    async fn register_warrant(&self, request: Request<proto::RegisterWarrantRequest>) -> Reply<proto::Warrant> {
        let warrant = self
            .call("RegisterWarrant", request, |desk, call, body| {
                let new = convert::new_warrant(body, desk.settings().max_targets)?;
                Ok(convert::warrant_info(&desk.register_warrant(call, new)?))
            })
            .await?;
        Ok(Response::new(warrant))
    }

    async fn decide_warrant(&self, request: Request<proto::DecideWarrantRequest>) -> Reply<proto::Warrant> {
        let warrant = self
            .call("DecideWarrant", request, |desk, call, body| {
                call.warrant = Some(body.warrant.clone());
                let decision = convert::decision(&body)?;
                Ok(convert::warrant_info(&desk.decide_warrant(call, &body.warrant, decision)?))
            })
            .await?;
        Ok(Response::new(warrant))
    }

    async fn close_warrant(&self, request: Request<proto::CloseWarrantRequest>) -> Reply<proto::Warrant> {
        let warrant = self
            .call("CloseWarrant", request, |desk, call, body| {
                Ok(convert::warrant_info(&desk.close_warrant(call, &body.warrant)?))
            })
            .await?;
        Ok(Response::new(warrant))
    }

    async fn get_warrant(&self, request: Request<proto::GetWarrantRequest>) -> Reply<proto::Warrant> {
        let warrant = self
            .call("GetWarrant", request, |desk, call, body| {
                Ok(convert::warrant_info(&desk.warrant(call, &body.warrant)?))
            })
            .await?;
        Ok(Response::new(warrant))
    }

    async fn list_warrants(&self, request: Request<proto::ListWarrantsRequest>) -> Reply<proto::ListWarrantsResponse> {
        let listed = self
            .call("ListWarrants", request, |desk, call, body| {
                let page =
                    desk.list_warrants(call, input::optional(&body.authority), body.page_size, &body.page_token)?;
                Ok(proto::ListWarrantsResponse {
                    warrants: page.warrants.iter().map(convert::warrant_info).collect(),
                    next_page_token: page.next_page_token.unwrap_or_default(),
                })
            })
            .await?;
        Ok(Response::new(listed))
    }

    async fn submit_request(&self, request: Request<proto::SubmitRequestRequest>) -> Reply<proto::RequestInfo> {
        let answered = self
            .call("SubmitRequest", request, |desk, call, body| {
                Ok(convert::request_info(&desk.submit(call, convert::submission(body))?))
            })
            .await?;
        Ok(Response::new(answered))
    }

    async fn get_request(&self, request: Request<proto::GetRequestRequest>) -> Reply<proto::RequestInfo> {
        let found = self
            .call("GetRequest", request, |desk, call, body| {
                Ok(convert::request_info(&desk.request(call, &body.request_id)?))
            })
            .await?;
        Ok(Response::new(found))
    }

    async fn list_requests(&self, request: Request<proto::ListRequestsRequest>) -> Reply<proto::ListRequestsResponse> {
        let listed = self
            .call("ListRequests", request, |desk, call, body| {
                let page =
                    desk.list_requests(call, input::optional(&body.authority), body.page_size, &body.page_token)?;
                Ok(proto::ListRequestsResponse {
                    requests: page.requests.iter().map(convert::request_info).collect(),
                    next_page_token: page.next_page_token.unwrap_or_default(),
                })
            })
            .await?;
        Ok(Response::new(listed))
    }

    type FetchResultStream = ChunkStream;

    async fn fetch_result(&self, request: Request<proto::FetchResultRequest>) -> Reply<Self::FetchResultStream> {
        let (info, bytes) = self
            .call("FetchResult", request, |desk, call, body| {
                let (request, bytes) = desk.fetch(call, &body.request_id)?;
                Ok((convert::request_info(&request), bytes))
            })
            .await?;
        Ok(Response::new(chunks(info, bytes)))
    }

    async fn verify_audit(&self, request: Request<proto::VerifyAuditRequest>) -> Reply<proto::VerifyAuditResponse> {
        let check = self
            .call("VerifyAudit", request, |desk, call, _| Ok(convert::verification(&desk.verify_audit(call)?)))
            .await?;
        Ok(Response::new(check))
    }

    async fn statistics(&self, request: Request<proto::StatisticsRequest>) -> Reply<proto::StatisticsReport> {
        let report = self
            .call("Statistics", request, |desk, call, body| {
                Ok(convert::statistics(body.year, desk.statistics(call, body.year)?))
            })
            .await?;
        Ok(Response::new(report))
    }

    async fn register_order(&self, request: Request<proto::RegisterOrderRequest>) -> Reply<proto::Order> {
        let order = self
            .call("RegisterOrder", request, |desk, call, body| {
                let new = convert::new_order(body, desk.settings().max_targets)?;
                Ok(convert::order_info(&desk.register_order(call, new)?))
            })
            .await?;
        Ok(Response::new(order))
    }

    async fn decide_order(&self, request: Request<proto::DecideOrderRequest>) -> Reply<proto::Order> {
        let order = self
            .call("DecideOrder", request, |desk, call, body| {
                let decision = convert::order_decision(&body)?;
                Ok(convert::order_info(&desk.decide_order(call, &body.order, decision)?))
            })
            .await?;
        Ok(Response::new(order))
    }

    async fn extend_order(&self, request: Request<proto::ExtendOrderRequest>) -> Reply<proto::Order> {
        let order = self
            .call("ExtendOrder", request, |desk, call, body| {
                input::within_limit(&[("order", &body.order), ("ends", &body.ends)])?;
                let ends = order_end(&body.ends)?;
                Ok(convert::order_info(&desk.extend_order(call, &body.order, ends)?))
            })
            .await?;
        Ok(Response::new(order))
    }

    async fn lift_order(&self, request: Request<proto::LiftOrderRequest>) -> Reply<proto::Order> {
        let order = self
            .call("LiftOrder", request, |desk, call, body| {
                input::within_limit(&[("order", &body.order), ("reason", &body.reason)])?;
                Ok(convert::order_info(&desk.lift_order(call, &body.order, &body.reason)?))
            })
            .await?;
        Ok(Response::new(order))
    }

    async fn get_order(&self, request: Request<proto::GetOrderRequest>) -> Reply<proto::Order> {
        let order = self
            .call("GetOrder", request, |desk, call, body| Ok(convert::order_info(&desk.order(call, &body.order)?)))
            .await?;
        Ok(Response::new(order))
    }

    async fn list_orders(&self, request: Request<proto::ListOrdersRequest>) -> Reply<proto::ListOrdersResponse> {
        let listed = self
            .call("ListOrders", request, |desk, call, body| {
                let orders = desk.list_orders(call, input::optional(&body.authority))?;
                Ok(proto::ListOrdersResponse { orders: orders.iter().map(convert::order_info).collect() })
            })
            .await?;
        Ok(Response::new(listed))
    }

    type ExportSubjectStream = ChunkStream;

    async fn export_subject(&self, request: Request<proto::ExportSubjectRequest>) -> Reply<Self::ExportSubjectStream> {
        let (records, rendered) = self
            .call("ExportSubject", request, |desk, call, body| desk.export_subject(call, &body.reference, &body.target))
            .await?;
        let info = proto::RequestInfo {
            status: "answered".into(),
            records,
            format: proto::ResultFormat::Json as i32,
            sha256: rendered.sha256.clone(),
            bytes: rendered.bytes.len() as u64,
            ..proto::RequestInfo::default()
        };
        Ok(Response::new(chunks(info, rendered.bytes)))
    }
}
