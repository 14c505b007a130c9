//! `baseline-axum --listen ADDR`: the raw axum hello-world. Every path
//! answers `200 Hello, world!`; it is the ceiling for HTTP on this machine.

#![forbid(unsafe_code)]

use std::net::SocketAddr;

use axum::Router;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Raw axum hello-world (benchmark baseline)")]
struct Args {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let app = Router::new().fallback(|| async { "Hello, world!" });
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!(
        "baseline-axum listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(picloud_bench::shutdown_signal())
        .await?;
    Ok(())
}
