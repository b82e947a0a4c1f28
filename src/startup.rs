//! Startup: [`Application::build`] wires configuration, store, DingTalk client, mapper,
//! metrics and workers, binds both listeners (port 0 allowed), and
//! [`Application::run_until_stopped`] serves until the [`CancellationToken`] fires, then
//! drains. `anyhow` lives here and in `main` only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Mode, STANDARD_FIELDS, Secret, Settings};
use crate::delivery::{DeliveryHandle, Worker};
use crate::dingtalk::{self, DingTalkClient};
use crate::inbound;
use crate::mapping::Mapper;
use crate::metrics::Metrics;
use crate::quota::{self, Clock, Quota};
use crate::sandbox::{FakeDingTalk, FakeOptions};
use crate::state::{AppState, Runtime, SharedRuntime};
use crate::store;

/// A built, bound, not yet serving relay.
pub struct Application {
    listener: TcpListener,
    admin_listener: TcpListener,
    state: AppState,
    worker: Worker,
}

/// Re-reads the configuration and swaps it in when it is valid; a bad one keeps the old
/// configuration running, is logged and counted (`dingtalk_relay_config_reloads_total`).
/// Reloads run one at a time, and the new DingTalk client takes over the old one's tokens,
/// templates, pauses and call spacing ([`DingTalkClient::inherit`]).
pub struct Reloader {
    file: std::sync::Mutex<Option<Option<PathBuf>>>,
    mode: Mode,
    sandbox: Option<(String, FakeOptions)>,
    runtime: SharedRuntime,
    metrics: Metrics,
    shared_limit: Option<Arc<dyn dingtalk::SharedLimit>>,
    quota: Arc<Quota>,
    busy: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// Where reloads read from: `Some(None)` for the default files, `Some(Some(path))` for
    /// `--config path`. Without it (settings built in code) a reload is refused.
    pub fn set_config_file(&self, file: Option<PathBuf>) {
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = Some(file);
    }

    /// How this relay was started (the admin API's default depends on it).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Loads, validates and swaps in the configuration. `Err` says why the old one stays.
    pub async fn reload(&self) -> Result<String, String> {
        let _one_at_a_time = self.busy.lock().await;
        let result = self.try_reload().await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .config_reloads
            .with_label_values(&[outcome])
            .inc();
        self.metrics.config_loaded(result.is_ok());
        if result.is_ok() {
            self.metrics.track(&self.runtime.load().settings);
        }
        match &result {
            Ok(summary) => tracing::info!(summary, "configuration reloaded"),
            Err(reason) => {
                tracing::error!(reason, "configuration reload failed; keeping the old one");
            }
        }
        result
    }

    async fn try_reload(&self) -> Result<String, String> {
        let file = self
            .file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or("this relay was not started from a configuration file")?;
        let mut settings = Settings::load(file.as_deref()).map_err(|e| e.to_string())?;
        if let Some((base_url, options)) = &self.sandbox {
            use_sandbox(&mut settings, base_url, options);
        }
        settings.validate(self.mode).map_err(|e| e.to_string())?;
        let current = self.runtime.load_full();
        let old = &current.settings;
        for (key, same) in [
            ("server.listen", old.server.listen == settings.server.listen),
            (
                "server.admin_listen",
                old.server.admin_listen == settings.server.admin_listen,
            ),
            ("store.url", old.store.url == settings.store.url),
            (
                "server.header_read_timeout",
                old.server.header_read_timeout == settings.server.header_read_timeout,
            ),
        ] {
            if !same {
                return Err(format!("{key} changed: that needs a restart"));
            }
        }
        let mapper = Mapper::new(&settings)
            .map_err(|issues| crate::config::ConfigError::Invalid(issues).to_string())?;
        let client = DingTalkClient::with_ledger(
            &settings.dingtalk,
            self.metrics.clone(),
            self.shared_limit.clone(),
            Some(self.quota.clone()),
        )
        .map_err(|e| e.to_string())?
        .inherit(&settings.dingtalk, &current.client, &old.dingtalk)
        .await;
        check_templates(&settings, &client)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let summary = format!(
            "{} route(s), {} app(s)",
            settings.routes.len(),
            settings.dingtalk.apps.len()
        );
        self.quota.configure(settings.dingtalk.quota.clone());
        self.runtime.store(Arc::new(Runtime {
            settings: Arc::new(settings),
            mapper: Arc::new(mapper),
            client,
        }));
        Ok(summary)
    }
}

/// Points the settings at the sandbox DingTalk with its credentials.
pub(crate) fn use_sandbox(settings: &mut Settings, base_url: &str, options: &FakeOptions) {
    settings.dingtalk.base_url = base_url.to_owned();
    settings.dingtalk.token_base_url = base_url.to_owned();
    for app in settings.dingtalk.apps.values_mut() {
        app.app_key = options.app_key.clone();
        app.app_secret = Some(Secret::new(options.app_secret.clone()));
    }
}

/// How long startup waits for DingTalk to resolve named templates before going on.
const TEMPLATE_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

impl Application {
    /// Validates `settings` for `mode`, opens the store, starts the sandbox in sandbox mode,
    /// checks templates against DingTalk (a definite mismatch stops startup; an unreachable
    /// DingTalk does not) and binds both listeners.
    pub async fn build(settings: Settings, mode: Mode) -> anyhow::Result<Self> {
        Self::build_with_clock(settings, mode, quota::system_clock()).await
    }

    /// [`Application::build`] with the quota month read from `clock` (tests move it across a
    /// month boundary).
    pub async fn build_with_clock(
        mut settings: Settings,
        mode: Mode,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let sandbox = if mode == Mode::Sandbox {
            let options = FakeOptions::default();
            let (fake, base_url) = FakeDingTalk::spawn(options.clone())
                .await
                .context("starting the sandbox DingTalk")?;
            tracing::warn!(%base_url, "sandbox mode: reports go to the built-in DingTalk stand-in, not DingTalk");
            use_sandbox(&mut settings, &base_url, &options);
            Some((fake, base_url, options))
        } else {
            None
        };
        settings.validate(mode)?;
        let mapper = Mapper::new(&settings).map_err(crate::config::ConfigError::Invalid)?;
        for warning in settings.warnings() {
            tracing::warn!(path = %warning.path, "{}", warning.message);
        }
        for (name, route) in &settings.routes {
            if route.secret.is_none() {
                tracing::warn!(route = %name, "route has no secret: anyone can post to it");
            }
        }
        if inbound::admin::admin_api_closed(&settings, mode) {
            tracing::warn!(
                admin_listen = %settings.server.admin_listen,
                "server.admin_token is not set and the admin listener is not on a loopback address: /v1/* and /-/reload answer 403 until a token is set (anyone reaching the port could otherwise read report texts, retry deliveries and reload)"
            );
        }
        let metrics = Metrics::new();
        metrics.track(&settings);
        let store = store::open_settings(&settings.store)
            .await
            .context("opening the store")?;
        let store: Arc<dyn store::Store> = store::Observed::new(store, &metrics);
        // Replicas sharing a PostgreSQL store share DingTalk's rate limit through it.
        let shared_limit = store.shared_limit();
        let quota = Arc::new(Quota::new(
            store.quota(),
            settings.dingtalk.quota.clone(),
            clock,
            metrics.clone(),
        ));
        let client = DingTalkClient::with_ledger(
            &settings.dingtalk,
            metrics.clone(),
            shared_limit.clone(),
            Some(quota.clone()),
        )
        .context("building the DingTalk client")?;
        check_templates(&settings, &client).await?;

        let listener = bind(settings.listen_addr()?, "server.listen").await?;
        let admin_listener = bind(settings.admin_addr()?, "server.admin_listen").await?;
        let delivery = DeliveryHandle::new();
        let lease = settings.delivery.lease;
        let runtime: SharedRuntime = Arc::new(ArcSwap::from_pointee(Runtime {
            settings: Arc::new(settings),
            mapper: Arc::new(mapper),
            client,
        }));
        let worker = Worker {
            store: store.clone(),
            runtime: runtime.clone(),
            metrics: metrics.clone(),
            handle: delivery.clone(),
            lease,
            quota: quota.clone(),
        };
        let (sandbox, sandbox_source) = match sandbox {
            Some((fake, base_url, options)) => (Some(fake), Some((base_url, options))),
            None => (None, None),
        };
        let reloader = Arc::new(Reloader {
            file: std::sync::Mutex::new(None),
            mode,
            sandbox: sandbox_source,
            runtime: runtime.clone(),
            metrics: metrics.clone(),
            shared_limit,
            quota: quota.clone(),
            busy: tokio::sync::Mutex::new(()),
        });
        // Counted once everything above accepted the configuration.
        metrics.config_loaded(true);
        let state = AppState {
            runtime,
            store,
            delivery,
            metrics,
            sandbox,
            reloader,
            rate_limits: Arc::default(),
            quota,
        };
        Ok(Self {
            listener,
            admin_listener,
            state,
            worker,
        })
    }

    /// The webhook listener's port.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The admin listener's port.
    pub fn admin_port(&self) -> u16 {
        self.admin_listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(0)
    }

    /// The shared state (tests inspect the store and the sandbox through it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves both listeners and runs the workers until `cancel` fires; then stops taking
    /// webhooks, finishes the requests and deliveries in flight, and returns.
    pub async fn run_until_stopped(self, cancel: CancellationToken) -> anyhow::Result<()> {
        // Read once: like the listen addresses, the header timeout changes with a restart.
        let header_timeout = self.state.settings().server.header_read_timeout;
        let webhook = inbound::serve::serve(
            self.listener,
            inbound::router(self.state.clone()),
            header_timeout,
            cancel.clone(),
        );
        let admin = inbound::serve::serve(
            self.admin_listener,
            inbound::admin_router(self.state.clone()),
            header_timeout,
            cancel.clone(),
        );
        let workers = tokio::spawn(self.worker.run(cancel.clone()));
        let digests = tokio::spawn(crate::digest::run(self.state.clone(), cancel.clone()));
        tokio::join!(webhook, admin);
        workers.await.context("delivery workers")?;
        digests.await.context("digest scheduler")?;
        tracing::info!("stopped");
        Ok(())
    }
}

async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{key}: cannot listen on {addr}"))
}

/// Resolves every route's template and checks the fields it fills. A template that lacks a
/// field (or has it as a non-text field) is an error naming the key; an unreachable
/// DingTalk only warns (templates are resolved again at send time).
pub async fn check_templates(settings: &Settings, client: &DingTalkClient) -> anyhow::Result<()> {
    let problems = template_problems(settings, client, false).await;
    if problems.is_empty() {
        Ok(())
    } else {
        bail!(
            "templates do not fit the configuration: {}",
            problems.join("; ")
        )
    }
}

/// What [`check_templates`] finds, one line per problem; `strict` (`check-config --online`)
/// also counts a template that cannot be checked now (DingTalk unreachable, timed out,
/// answering with a transient error), since "checked against DingTalk" must mean it was.
pub(crate) async fn template_problems(
    settings: &Settings,
    client: &DingTalkClient,
    strict: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, route) in &settings.routes {
        let owner = route.template.owner.as_deref().unwrap_or(&route.author);
        let lookup = quota::spending_for(
            name,
            client.resolve_template(&route.app, &route.template, owner),
        );
        let template = match tokio::time::timeout(TEMPLATE_CHECK_TIMEOUT, lookup).await {
            Ok(Ok(t)) => t,
            Ok(Err(dingtalk::Error::Config(message))) => {
                problems.push(format!("routes.{name}.template: {message}"));
                continue;
            }
            Ok(Err(e)) if e.disposition(true) == dingtalk::Disposition::Permanent => {
                problems.push(format!(
                    "routes.{name}.template: DingTalk refused the lookup: {e}"
                ));
                continue;
            }
            Ok(Err(e)) if strict => {
                problems.push(format!(
                    "routes.{name}.template (app {}): could not look it up: {e}",
                    route.app
                ));
                continue;
            }
            Ok(Err(e)) => {
                tracing::warn!(route = %name, error = %e, "could not check the template now; will resolve it at send time");
                continue;
            }
            Err(_) if strict => {
                problems.push(format!(
                    "routes.{name}.template (app {}): DingTalk did not answer the lookup within {}s",
                    route.app,
                    TEMPLATE_CHECK_TIMEOUT.as_secs()
                ));
                continue;
            }
            Err(_) => {
                tracing::warn!(route = %name, "template lookup timed out; will resolve it at send time");
                continue;
            }
        };
        let fields: Vec<&str> = match &route.fields {
            Some(map) => map.keys().map(String::as_str).collect(),
            None => STANDARD_FIELDS.to_vec(),
        };
        if let Err(e) = dingtalk::check_fields(&template, fields) {
            let key = if route.fields.is_some() {
                "fields"
            } else {
                "template"
            };
            problems.push(format!("routes.{name}.{key}: {e}"));
        }
    }
    problems
}
