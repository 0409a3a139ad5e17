//! The server's TLS: its certificate and key, and optionally the CA whose
//! client certificates it accepts (mTLS; a client may still present a
//! bearer token instead).

use std::path::PathBuf;

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
