//! `picloud up`: every role in one process, on one port.

use anyhow::Context;
use picloud_bus::Bus;
use picloud_core::{Config, Shutdown};

use crate::embedded::Embedded;

pub async fn run(mut config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    // Configured (a variable or the config file) rather than generated.
    let token_configured = config.admin_token.is_some();
    let mut embedded = Embedded::start(&mut config, &shutdown).await?;
    let token = config.admin_token().unwrap_or_default().to_owned();

    let shown = if token_configured {
        // The operator chose it; do not echo a credential into logs.
        "(the configured one: PICLOUD_ADMIN_TOKEN or the config file)".to_owned()
    } else {
        token
    };
    let serving = serve(&config, shutdown.clone(), &shown, !token_configured);
    tokio::pin!(serving);
    // A private server that dies takes PiCloud down with a clear error,
    // rather than leaving it up and unable to serve.
    let result = tokio::select! {
        r = &mut serving => r,
        which = embedded.died() => {
            tracing::error!("the private {which} exited unexpectedly; stopping");
            shutdown.cancel();
            let _ = serving.await;
            Err(anyhow::anyhow!(
                "the private {which} exited unexpectedly (its log is under {})",
                config.data_dir.display()
            ))
        }
    };
    shutdown.cancel();
    embedded.stop().await;
    result
}

async fn serve(
    config: &Config,
    shutdown: Shutdown,
    token: &str,
    token_from_file: bool,
) -> anyhow::Result<()> {
    // One NATS connection for the three roles: in one process, a connection
    // each would only add sockets, syscalls and server-side work per call.
    let bus = Bus::for_role(config, "up").await?;
    let manager = picloud_manager::start(config, bus.clone(), shutdown.clone()).await?;
    let gateway = picloud_gateway::start(config, bus.clone(), shutdown.clone()).await?;
    let executor = picloud_executor::start(config, bus, shutdown.clone()).await?;
    let router = picloud_http::json_method_errors(
        manager
            .router
            .clone()
            .merge(gateway.router.clone())
            .merge(picloud_http::health_router(vec![
                manager.ready.clone(),
                gateway.ready.clone(),
                executor.ready.clone(),
            ]))
            .merge(picloud_http::metrics_router(config.metrics_token())),
    );
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (set PICLOUD_LISTEN)", config.listen))?;
    let addr = listener.local_addr()?;
    print_banner(&addr.to_string(), token, token_from_file, config);
    let limits = picloud_http::ServeLimits::from_config(config);
    picloud_http::serve_on(listener, router, shutdown.clone(), limits).await?;
    shutdown.cancel();
    executor.join().await;
    gateway.join().await;
    manager.join().await;
    Ok(())
}

fn print_banner(addr: &str, token: &str, token_from_file: bool, config: &Config) {
    let base = format!("http://{addr}");
    let saved = if token_from_file {
        format!(
            " (kept in {})",
            config.data_dir.join("admin-token").display()
        )
    } else {
        String::new()
    };
    // The CLI is this binary; its folder goes on PATH.
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.display().to_string()))
        .unwrap_or_else(|| "target/release".into());
    let login = if token_from_file {
        "picloud login --local".to_owned()
    } else {
        format!("picloud login {base}   # paste the admin token")
    };
    println!(
        "PiCloud is up on {base}\n\
         dashboard: {base}/dashboard   (log in with the admin token)\n\
         admin token: {token}{saved}\n\
         \n\
         From another terminal in this folder, deploy a sample and call it:\n  \
         export PATH=\"{bin_dir}:$PATH\"\n  \
         {login}\n  \
         picloud deploy examples/hello.rhai\n  \
         picloud invoke hello '?who=PiCloud'\n  \
         curl '{base}/fn/hello?who=PiCloud'\n\
         \n\
         Press Ctrl-C to stop."
    );
}
