//! A gRPC client of the lawful-access API, as any other client would call
//! it: the bearer token on every call, result streams read and their bytes
//! checked against the digest the server audited. The command line
//! ([`crate::cli`]), the demo and the tests use it.

use anyhow::{Context, bail};
use tonic::Request;
use tonic::transport::Channel;

use super::render::sha256_hex;
use crate::proto;
use crate::proto::lawful_access_client::LawfulAccessClient;
use crate::proto::result_chunk::Part;

/// A connected client that adds the bearer token to every call.
pub struct Client {
    inner: LawfulAccessClient<Channel>,
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Client")
    }
}

impl Client {
    /// Connects to `server`; `tls` for an https:// server (and mTLS).
    pub async fn connect(
        server: &str,
        token: Option<String>,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> anyhow::Result<Client> {
        let mut endpoint = tonic::transport::Endpoint::from_shared(server.to_string())
            .with_context(|| format!("{server} is not a valid URL"))?;
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls)?;
        }
        let channel = endpoint.connect().await.with_context(|| format!("connecting to {server}"))?;
        Ok(Client { inner: LawfulAccessClient::new(channel), token })
    }

    /// `message` with the bearer token.
    pub fn call<T>(&self, message: T) -> anyhow::Result<Request<T>> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}").parse().context("the token is not valid header text")?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }

    /// The underlying generated client, for calls not wrapped here.
    pub fn raw(&mut self) -> &mut LawfulAccessClient<Channel> {
        &mut self.inner
    }

    pub async fn create_authority(
        &mut self,
        request: proto::CreateAuthorityRequest,
    ) -> anyhow::Result<proto::Authority> {
        let request = self.call(request)?;
        Ok(self.inner.create_authority(request).await?.into_inner())
    }

    pub async fn create_principal(
        &mut self,
        request: proto::CreatePrincipalRequest,
    ) -> anyhow::Result<proto::CreatePrincipalResponse> {
        let request = self.call(request)?;
        Ok(self.inner.create_principal(request).await?.into_inner())
    }

    pub async fn register_warrant(&mut self, request: proto::RegisterWarrantRequest) -> anyhow::Result<proto::Warrant> {
        let request = self.call(request)?;
        Ok(self.inner.register_warrant(request).await?.into_inner())
    }

    pub async fn decide_warrant(&mut self, request: proto::DecideWarrantRequest) -> anyhow::Result<proto::Warrant> {
        let request = self.call(request)?;
        Ok(self.inner.decide_warrant(request).await?.into_inner())
    }

    pub async fn submit_request(&mut self, request: proto::SubmitRequestRequest) -> anyhow::Result<proto::RequestInfo> {
        let request = self.call(request)?;
        Ok(self.inner.submit_request(request).await?.into_inner())
    }

    pub async fn verify_audit(&mut self) -> anyhow::Result<proto::VerifyAuditResponse> {
        let request = self.call(proto::VerifyAuditRequest {})?;
        Ok(self.inner.verify_audit(request).await?.into_inner())
    }

    /// A request's result: its info and bytes, the digest checked.
    pub async fn fetch_result(&mut self, request_id: &str) -> anyhow::Result<(proto::RequestInfo, Vec<u8>)> {
        let request = self.call(proto::FetchResultRequest { request_id: request_id.to_string() })?;
        let stream = self.inner.fetch_result(request).await?.into_inner();
        collect(stream).await
    }

    pub async fn export_subject(
        &mut self,
        request: proto::ExportSubjectRequest,
    ) -> anyhow::Result<(proto::RequestInfo, Vec<u8>)> {
        let request = self.call(request)?;
        let stream = self.inner.export_subject(request).await?.into_inner();
        collect(stream).await
    }
}

/// Reads a result stream (`FetchResult`, `ExportSubject`) and checks the
/// bytes against the announced digest.
pub async fn collect(
    mut stream: tonic::Streaming<proto::ResultChunk>,
) -> anyhow::Result<(proto::RequestInfo, Vec<u8>)> {
    let mut info = None;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await? {
        match chunk.part {
            Some(Part::Info(i)) => info = Some(i),
            Some(Part::Data(d)) => bytes.extend_from_slice(&d),
            None => {}
        }
    }
    let info = info.context("the server sent no result header")?;
    let digest = sha256_hex(&bytes);
    if digest != info.sha256 {
        bail!("the result's SHA-256 {digest} differs from the audited {}", info.sha256);
    }
    Ok((info, bytes))
}
