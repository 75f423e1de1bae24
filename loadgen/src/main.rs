//! The `loadgen` binary: parse the options, raise the open-files limit, start a tokio runtime
//! with `--threads` workers, [`loadgen::run`], then print the summary (a table, or JSON with
//! `--json`) and write the `.hgrm` file if asked.
//!
//! Exit status: 0 when the normal clients saw no gap, duplicate, missing or misrouted
//! event; 2 when they did (the reasons are printed); 1 when the run could not be set up.
//!
//! # Examples
//! ```text
//! # ringcast on :18181: 1000 clients, 1000 events/s, 5 s measured
//! loadgen --url http://127.0.0.1:18181 --clients 1000 --rate 1000 --duration 5
//!
//! # 10,000 idle connections: how fast they open, what they cost
//! loadgen --url http://127.0.0.1:18181 --clients 10000 --rate 0 --duration 3
//!
//! # a quarter of the clients stop reading: they get dropped, the others see no change
//! loadgen --url http://127.0.0.1:18181 --clients 1000 --rate 2000 --size 1024 \
//!     --slow-fraction 0.25 --duration 20 --json --hgrm latency.hgrm
//!
//! # over TLS (a self-signed test certificate), then HTTP/2 with 8 streams per connection
//! loadgen --url https://127.0.0.1:8443 --insecure --clients 1000 --rate 1000 --duration 5
//! loadgen --url https://127.0.0.1:8443 --ca-cert ca.pem --http2 --streams-per-connection 8 \
//!     --clients 1000 --rate 1000 --duration 5
//! ```
//!
//! # The same run against nginx + nchan
//! nchan publishes the raw request body to a channel named in the URL and streams it as
//! `text/event-stream` (the clients de-chunk it if it comes `transfer-encoding: chunked`;
//! they send `Accept: text/event-stream`, without which nchan's eventsource subscriber
//! answers 403). With this nginx configuration (nchan module loaded, e.g. Debian's
//! `libnginx-mod-nchan`):
//! ```text
//! worker_rlimit_nofile 20000;
//! events { worker_connections 16384; }
//! http {
//!     server {
//!         listen 127.0.0.1:8090;
//!         location ~ ^/sub/([\w-]+)$ {
//!             nchan_subscriber eventsource;
//!             nchan_channel_id $1;
//!             nchan_subscriber_first_message newest; # not the messages of earlier runs
//!         }
//!         location ~ ^/pub/([\w-]+)$ {
//!             nchan_publisher;
//!             nchan_channel_id $1;
//!             nchan_message_buffer_length 1024;
//!         }
//!     }
//! }
//! ```
//! run:
//! ```text
//! loadgen --url http://127.0.0.1:8090 \
//!     --subscribe-path '/sub/{topic}' --publish-path '/pub/{topic}' --publish-format raw \
//!     --topics 4 --publish-connections 4 --clients 1000 --rate 1000 --duration 5 \
//!     --topic-prefix run1-
//! ```
//! `raw` sends one request per event (nchan has no batch publish) and waits for each answer,
//! so a high `--rate` needs several `--publish-connections` (at most one per topic, which
//! keeps each topic in order); the report warns when the achieved rate falls short. A fresh
//! `--topic-prefix` per run keeps messages still buffered from an earlier run out of it.
//! nchan sends no goodbye comments: its disconnects show as `closed`.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use loadgen::Config;
use loadgen::report::write_hgrm;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let mut config = Config::parse();
    config.progress = !config.no_progress && std::io::stdout().is_terminal();
    match run(config) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("loadgen: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn run(config: Config) -> anyhow::Result<ExitCode> {
    // Best effort here; `loadgen::run` checks the limit against --clients with a clear error.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = if config.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(config.threads).enable_all().build()
    }
    .context("could not start the tokio runtime")?;
    let (json, hgrm) = (config.json, config.hgrm.clone());
    let report = runtime.block_on(loadgen::run(config))?;
    if let Some(path) = &hgrm {
        let file =
            std::fs::File::create(path).with_context(|| format!("could not create --hgrm {}", path.display()))?;
        let mut writer = std::io::BufWriter::new(file);
        write_hgrm(&report.histogram, &mut writer)
            .and_then(|()| writer.flush())
            .with_context(|| format!("could not write --hgrm {}", path.display()))?;
    }
    if json {
        eprint!("{}", report.table());
        let text = serde_json::to_string_pretty(&report).context("could not serialize the report")?;
        println!("{text}");
    } else {
        print!("{}", report.table());
    }
    if report.ok {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("loadgen: integrity check failed: {}", report.problems.join("; "));
        Ok(ExitCode::from(2))
    }
}
