//! The command-line client of the lawful-access API: `cdrvault authority |
//! principal | warrant | request | report | subject | audit verify --remote`
//! talk to a running server over gRPC, as any other gRPC client would.
//!
//! The bearer token comes from `CDRVAULT_TOKEN` or from the file named by
//! `--token-file`, and targets from the file named by `--targets-file`
//! ([`super::targets`]): never from an argument, which other users of the
//! machine could read in the process list. Results are written to files created
//! with mode 0600, and their SHA-256 is checked against the digest the
//! server recorded in its audit trail before the file is kept.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};

use super::targets::TargetsArgs;
use crate::access::client::Client;
use crate::access::render::{ResultFormat, sha256_hex};
use crate::proto;

/// Where the server is and who is calling.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// The lawful-access API, e.g. http://127.0.0.1:50051.
    #[arg(long, env = "CDRVAULT_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// A file holding the bearer token (otherwise CDRVAULT_TOKEN).
    #[arg(long, env = "CDRVAULT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// For an https:// server: the CA that signed its certificate (PEM).
    #[arg(long, env = "CDRVAULT_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// A client certificate and key (PEM) for mTLS, instead of a token.
    #[arg(long, env = "CDRVAULT_CERT_FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    #[arg(long, env = "CDRVAULT_KEY_FILE")]
    pub key_file: Option<PathBuf>,
}

/// A client connected as `args` say.
pub(super) async fn connect(args: &ServerArgs) -> anyhow::Result<Client> {
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the token file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("CDRVAULT_TOKEN").ok(),
    };
    if token.is_none() && args.cert_file.is_none() {
        bail!("no credentials: set CDRVAULT_TOKEN, pass --token-file, or a client certificate");
    }
    let read = |path: &PathBuf| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let tls = if args.server.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &args.ca_file {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&args.cert_file, &args.key_file) {
            tls = tls.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
        }
        Some(tls)
    } else {
        None
    };
    Client::connect(&args.server, token, tls).await
}

/// The SHA-256 (hex) of the DER of the first certificate in a PEM file.
fn certificate_sha256(path: &Path) -> anyhow::Result<String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_file(path)
        .map_err(|e| anyhow::anyhow!("{} holds no PEM certificate: {e}", path.display()))?;
    Ok(sha256_hex(&der))
}

/// Writes a result to a new private file (0600); never overwrites.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist)", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum AuthorityCommand {
    /// Register an authority (admin).
    Create {
        /// Lower-case letters, digits and dashes, e.g. dk-police.
        id: String,
        /// ISO 3166-1 alpha-2 country code.
        #[arg(long)]
        country: String,
        #[arg(long)]
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum PrincipalCommand {
    /// Create a principal and print its token, once (admin).
    Create {
        #[arg(long)]
        name: String,
        /// The person it belongs to (an employee or system id): four eyes
        /// means two persons.
        #[arg(long)]
        person: String,
        /// When its credentials stop working (RFC 3339).
        #[arg(long)]
        valid_until: Option<String>,
        /// admin, legal_reviewer, authority_handler, auditor, dpo; repeat for several.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// The authority a handler acts for.
        #[arg(long)]
        authority: Option<String>,
        /// A client certificate (PEM) that authenticates the principal over mTLS.
        #[arg(long)]
        certificate: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show who the token belongs to.
    Whoami {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Revoke a principal: its credentials never work again (admin).
    Revoke {
        principal: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Replace a token and print the new one, once: the caller's own, or
    /// (admin) another principal's.
    RotateToken {
        /// Default: the caller.
        principal: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum WarrantCommand {
    /// Register a warrant (legal reviewer).
    Register {
        #[arg(long)]
        authority: String,
        #[arg(long)]
        reference: String,
        #[arg(long)]
        issued_by: String,
        #[arg(long)]
        legal_basis: String,
        #[command(flatten)]
        targets: TargetsArgs,
        /// Communications covered, RFC 3339 (e.g. 2026-11-01T00:00:00Z).
        #[arg(long)]
        period_start: String,
        #[arg(long)]
        period_end: String,
        /// traffic, location, device, ip; repeat for several.
        #[arg(long = "category", required = true)]
        categories: Vec<String>,
        #[arg(long)]
        valid_until: String,
        /// Grant cell dumps: cell targets (which also need the location
        /// category).
        #[arg(long)]
        cell_dump: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Approve a warrant registered by another reviewer.
    Approve {
        warrant: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Reject a warrant, with the reason.
    Reject {
        warrant: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Close a warrant: its sealed targets are destroyed.
    Close {
        warrant: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// One warrant: its state, period, categories and validity (the kinds of
    /// its targets, never their values).
    Show {
        warrant: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// The warrants the caller may see.
    List {
        #[arg(long)]
        authority: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FormatArg {
    Json,
    Csv,
    EtsiXml,
}

#[derive(Subcommand, Debug)]
pub enum RequestCommand {
    /// Submit a request under an approved warrant (authority handler).
    Submit {
        #[arg(long)]
        warrant: String,
        /// The authority's request number, never reused.
        #[arg(long)]
        number: u64,
        // The targets, a subset of the warrant's.
        #[command(flatten)]
        targets: TargetsArgs,
        /// Window start and end, RFC 3339.
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long = "category", required = true)]
        categories: Vec<String>,
        #[arg(long, value_enum, default_value_t = FormatArg::Json)]
        format: FormatArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// One request: its state, record count, size, SHA-256 and how long its
    /// result is kept.
    Show {
        request_id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// The requests the caller may see, newest first.
    List {
        #[arg(long)]
        authority: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Fetch a result into a new file, its digest checked.
    Fetch {
        request_id: String,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum SubjectCommand {
    /// Export every retained record of one subscriber as JSON (DPO).
    Export {
        // The subscriber: a targets file naming one target.
        #[command(flatten)]
        target: TargetsArgs,
        /// The data-subject request's case reference.
        #[arg(long)]
        reference: String,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
    },
}

fn print_warrant(w: &proto::Warrant) {
    println!(
        "warrant {}: {} for {} (ref {}), targets {} ({}), period {} .. {}, categories {}, valid until {}",
        w.id,
        w.status,
        w.authority,
        w.reference,
        w.target_kinds.len(),
        w.target_kinds.join(","),
        w.period_start,
        w.period_end,
        w.categories.join(","),
        w.valid_until
    );
}

fn print_request(r: &proto::RequestInfo) {
    println!(
        "request {}: {}, {} records, {} bytes, sha256 {} (result kept until {})",
        r.request_id, r.status, r.records, r.bytes, r.sha256, r.result_expires
    );
}

pub async fn authority(command: AuthorityCommand) -> anyhow::Result<()> {
    let AuthorityCommand::Create { id, country, name, server } = command;
    let mut client = connect(&server).await?;
    let created = client.create_authority(proto::CreateAuthorityRequest { id, country, name }).await?;
    println!("authority {} ({}) created", created.id, created.country);
    Ok(())
}

pub async fn principal(command: PrincipalCommand) -> anyhow::Result<()> {
    match command {
        PrincipalCommand::Create { name, person, valid_until, roles, authority, certificate, server } => {
            let mut client = connect(&server).await?;
            let client_certificate_sha256 = match certificate {
                Some(path) => certificate_sha256(&path)?,
                None => String::new(),
            };
            let request = proto::CreatePrincipalRequest {
                name,
                person,
                roles,
                authority: authority.unwrap_or_default(),
                client_certificate_sha256,
                valid_until: valid_until.unwrap_or_default(),
            };
            let created = client.create_principal(request).await?;
            let principal = created.principal.unwrap_or_default();
            println!(
                "principal {} ({}) created with roles {}",
                principal.id,
                principal.name,
                principal.roles.join(",")
            );
            println!("token (shown once): {}", created.token);
        }
        PrincipalCommand::Whoami { server } => {
            let mut client = connect(&server).await?;
            let request = client.call(proto::WhoAmIRequest {})?;
            let me = client.raw().who_am_i(request).await?.into_inner();
            println!(
                "{} ({}, person {}), roles {}, authority {}",
                me.id,
                me.name,
                me.person,
                me.roles.join(","),
                me.authority
            );
        }
        PrincipalCommand::Revoke { principal, reason, server } => {
            let mut client = connect(&server).await?;
            let request = client.call(proto::RevokePrincipalRequest { principal, reason })?;
            let revoked = client.raw().revoke_principal(request).await?.into_inner();
            println!("principal {} ({}) revoked", revoked.id, revoked.name);
        }
        PrincipalCommand::RotateToken { principal, server } => {
            let mut client = connect(&server).await?;
            let request = client.call(proto::RotateTokenRequest { principal: principal.unwrap_or_default() })?;
            let rotated = client.raw().rotate_token(request).await?.into_inner();
            println!("token replaced; the old one no longer works");
            println!("token (shown once): {}", rotated.token);
        }
    }
    Ok(())
}

pub async fn warrant(command: WarrantCommand) -> anyhow::Result<()> {
    let shown = match command {
        WarrantCommand::Register {
            authority,
            reference,
            issued_by,
            legal_basis,
            targets,
            period_start,
            period_end,
            categories,
            valid_until,
            cell_dump,
            server,
        } => {
            let targets = targets.texts()?;
            let mut client = connect(&server).await?;
            let request = proto::RegisterWarrantRequest {
                authority,
                reference,
                issued_by,
                legal_basis,
                targets,
                period_start,
                period_end,
                categories,
                valid_until,
                cell_dump,
            };
            client.register_warrant(request).await?
        }
        WarrantCommand::Approve { warrant, server } => {
            let mut client = connect(&server).await?;
            client.decide_warrant(proto::DecideWarrantRequest { warrant, approve: true, reason: String::new() }).await?
        }
        WarrantCommand::Reject { warrant, reason, server } => {
            let mut client = connect(&server).await?;
            client.decide_warrant(proto::DecideWarrantRequest { warrant, approve: false, reason }).await?
        }
        WarrantCommand::Close { warrant, server } => {
            let mut client = connect(&server).await?;
            let request = client.call(proto::CloseWarrantRequest { warrant })?;
            client.raw().close_warrant(request).await?.into_inner()
        }
        WarrantCommand::List { authority, server } => {
            let mut client = connect(&server).await?;
            let (mut page_token, mut any) = (String::new(), false);
            loop {
                let asked = proto::ListWarrantsRequest {
                    authority: authority.clone().unwrap_or_default(),
                    page_size: 0,
                    page_token,
                };
                let asked = client.call(asked)?;
                let listed = client.raw().list_warrants(asked).await?.into_inner();
                for warrant in &listed.warrants {
                    print_warrant(warrant);
                }
                any |= !listed.warrants.is_empty();
                if listed.next_page_token.is_empty() {
                    break;
                }
                page_token = listed.next_page_token;
            }
            if !any {
                println!("(no warrants)");
            }
            return Ok(());
        }
        WarrantCommand::Show { warrant, server } => {
            let mut client = connect(&server).await?;
            let request = client.call(proto::GetWarrantRequest { warrant })?;
            client.raw().get_warrant(request).await?.into_inner()
        }
    };
    print_warrant(&shown);
    Ok(())
}

pub async fn request(command: RequestCommand) -> anyhow::Result<()> {
    match command {
        RequestCommand::Submit { warrant, number, targets, from, to, categories, format, server } => {
            let targets = targets.texts()?;
            let mut client = connect(&server).await?;
            let format = proto::ResultFormat::from(match format {
                FormatArg::Json => ResultFormat::Json,
                FormatArg::Csv => ResultFormat::Csv,
                FormatArg::EtsiXml => ResultFormat::EtsiXml,
            });
            let request = proto::SubmitRequestRequest {
                warrant,
                request_number: number,
                targets,
                window_start: from,
                window_end: to,
                categories,
                format: format as i32,
            };
            print_request(&client.submit_request(request).await?);
        }
        RequestCommand::Show { request_id, server } => {
            let mut client = connect(&server).await?;
            let request = client.call(proto::GetRequestRequest { request_id })?;
            print_request(&client.raw().get_request(request).await?.into_inner());
        }
        RequestCommand::List { authority, server } => {
            let mut client = connect(&server).await?;
            let (mut page_token, mut any) = (String::new(), false);
            loop {
                let asked = proto::ListRequestsRequest {
                    authority: authority.clone().unwrap_or_default(),
                    page_size: 0,
                    page_token,
                };
                let asked = client.call(asked)?;
                let listed = client.raw().list_requests(asked).await?.into_inner();
                for request in &listed.requests {
                    print_request(request);
                }
                any |= !listed.requests.is_empty();
                if listed.next_page_token.is_empty() {
                    break;
                }
                page_token = listed.next_page_token;
            }
            if !any {
                println!("(no requests)");
            }
        }
        RequestCommand::Fetch { request_id, out, server } => {
            let mut client = connect(&server).await?;
            let (info, bytes) = client.fetch_result(&request_id).await?;
            write_private(&out, &bytes)?;
            println!(
                "wrote {}: {} records, {} bytes, sha256 {} (matches the audited digest)",
                out.display(),
                info.records,
                bytes.len(),
                info.sha256
            );
        }
    }
    Ok(())
}

pub async fn report(year: i32, server: ServerArgs) -> anyhow::Result<()> {
    let mut client = connect(&server).await?;
    let request = client.call(proto::StatisticsRequest { year })?;
    let report = client.raw().statistics(request).await?.into_inner();
    println!("lawful requests in {year} (Directive 2006/24/EC art. 10; no personal data)");
    println!(
        "{:<20} {:>8} {:>8} {:>8} {:>11} {:>8}",
        "authority", "received", "answered", "partial", "unavailable", "refused"
    );
    for a in &report.authorities {
        println!(
            "{:<20} {:>8} {:>8} {:>8} {:>11} {:>8}",
            a.authority, a.received, a.answered, a.answered_partially, a.unavailable, a.refused
        );
        let ages: Vec<String> = a.ages.iter().map(|b| format!("{}: {}", b.label, b.records)).collect();
        println!("{:<20} records delivered by age of data: {}", "", ages.join(", "));
    }
    if report.authorities.is_empty() {
        println!("(no requests)");
    }
    Ok(())
}

pub async fn verify_audit(server: ServerArgs) -> anyhow::Result<bool> {
    let mut client = connect(&server).await?;
    let check = client.verify_audit().await?;
    if check.intact {
        println!("audit trail verifies: {} entries, chain, signatures and signed head intact", check.entries);
    } else {
        println!("audit trail is damaged: first bad entry {}: {}", check.bad_entry, check.problem);
    }
    Ok(check.intact)
}

pub async fn subject(command: SubjectCommand) -> anyhow::Result<()> {
    let SubjectCommand::Export { target, reference, out, server } = command;
    let target = match target.texts()?.as_slice() {
        [target] => target.clone(),
        more => bail!("a subject export names one subscriber; the targets file names {}", more.len()),
    };
    let mut client = connect(&server).await?;
    let (info, bytes) = client.export_subject(proto::ExportSubjectRequest { target, reference }).await?;
    write_private(&out, &bytes)?;
    println!("wrote {}: {} records, sha256 {} (audited)", out.display(), info.records, info.sha256);
    Ok(())
}
