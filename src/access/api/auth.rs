//! What a gRPC call presents: the bearer token of its `authorization`
//! header, over mTLS the SHA-256 of its client certificate's DER, and the
//! peer's address.

use tonic::Request;

use crate::access::desk::Credentials;

pub fn credentials<T>(request: &Request<T>) -> Credentials {
    let token = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    let certificate = request.peer_certs().and_then(|chain| {
        chain.first().map(|leaf| ring::digest::digest(&ring::digest::SHA256, leaf).as_ref().to_vec())
    });
    let peer = request.remote_addr().map(|address| address.ip());
    Credentials { token, certificate, peer }
}
