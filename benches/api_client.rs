//! The handler's side of `benches/api_e2e.sh` through cdrvault's own Rust
//! client ([`cdrvault::access::client::Client`], tonic): one connection,
//! kept for the run, as a desk application would keep it.
//!
//! `benches/api_e2e.py` drives it so that its calls take turns with the
//! Python client's, between the other engines', target by target. Each line on
//! standard input is `NUMBER TARGET`: it submits that request (JSON result,
//! the `traffic` category, the window and warrant of its arguments), fetches
//! the result, checks its digest and size, and prints `RECORDS SUBMIT_MS
//! FETCH_MS`, the times taken around each call. Not a criterion benchmark:
//! the script reads its figures.
//!
//!   api_client --server http://127.0.0.1:PORT --token-file F --warrant W
//!              --from RFC3339 --to RFC3339

use std::io::{BufRead, Write};
use std::time::Instant;

use anyhow::{Context, bail};

use cdrvault::access::client::Client;
use cdrvault::proto;

struct Args {
    server: String,
    token_file: String,
    warrant: String,
    from: String,
    to: String,
}

/// The arguments; `None` when run with none (`cargo bench` runs every
/// bench with only `--bench`): this one needs a server.
fn args() -> anyhow::Result<Option<Args>> {
    if std::env::args().skip(1).all(|arg| arg == "--bench") {
        return Ok(None);
    }
    let mut args = std::env::args().skip(1);
    let (mut server, mut token_file, mut warrant, mut from, mut to) = Default::default();
    while let Some(flag) = args.next() {
        // `cargo bench` passes `--bench`: this harness is run by the
        // script, with the arguments below.
        if flag == "--bench" {
            continue;
        }
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--server" => server = value,
            "--token-file" => token_file = value,
            "--warrant" => warrant = value,
            "--from" => from = value,
            "--to" => to = value,
            other => bail!("unknown argument {other}"),
        }
    }
    if [&server, &token_file, &warrant, &from, &to].iter().any(|v| v.is_empty()) {
        bail!("usage: api_client --server URL --token-file F --warrant W --from T --to T");
    }
    Ok(Some(Args { server, token_file, warrant, from, to }))
}

fn main() -> anyhow::Result<()> {
    let Some(args) = args()? else {
        println!("api_client: run by benches/api_e2e.sh against a server it starts; nothing to measure alone");
        return Ok(());
    };
    let token = std::fs::read_to_string(&args.token_file)?.trim().to_string();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut client = Client::connect(&args.server, Some(token), None).await?;
        let stdout = std::io::stdout();
        for line in std::io::stdin().lock().lines() {
            let line = line?;
            let Some((number, target)) = line.split_once(' ') else { bail!("expected NUMBER TARGET, got {line}") };
            let request = proto::SubmitRequestRequest {
                warrant: args.warrant.clone(),
                request_number: number.parse()?,
                targets: vec![target.to_string()],
                window_start: args.from.clone(),
                window_end: args.to.clone(),
                categories: vec!["traffic".into()],
                format: proto::ResultFormat::Json as i32,
            };
            let started = Instant::now();
            let info = client.submit_request(request).await?;
            let submitted = Instant::now();
            // The digest is checked against the audited one as it is read.
            let (_, bytes) = client.fetch_result(&info.request_id).await?;
            let fetched = Instant::now();
            if bytes.len() as u64 != info.bytes {
                bail!("{} bytes fetched of {}", bytes.len(), info.bytes);
            }
            let ms = |from: Instant, to: Instant| (to - from).as_secs_f64() * 1000.0;
            let mut out = stdout.lock();
            writeln!(out, "{} {:.3} {:.3}", info.records, ms(started, submitted), ms(submitted, fetched))?;
            out.flush()?;
        }
        Ok(())
    })
}
