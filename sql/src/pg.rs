//! The PostgreSQL wire protocol server, so psql, Grafana's PostgreSQL data source and BI tools can query
//! Vigil.
//!
//! Built on `datafusion-postgres` (pg catalog, type encoding, SET/SHOW and transaction handling) with our own
//! pieces where its defaults do not fit a network-facing endpoint: our own accept loop (tests bind port 0,
//! the binary controls shutdown and a connection cap), a cleartext-password startup handler that asks a
//! [`PgAuth`] (so the binary can accept API tokens as passwords), and query handlers that put every
//! statement through the read-only guard and the shared query limits before DataFusion sees it.
//!
//! Cleartext passwords need TLS or a trusted network: with [`PgServer::with_tls`] the server negotiates TLS
//! (SSLRequest) and refuses to log anyone in over a plain connection.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion_postgres::arrow_pg::datatypes::df::encode_dataframe;
use datafusion_postgres::auth::AuthManager;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::pgwire;
use datafusion_postgres::pgwire::tokio::TlsAcceptor;
use datafusion_postgres::DfSessionService;
use futures::Sink;
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
    DefaultServerParameterProvider, LoginInfo, StartupHandler,
};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, PgWireConnectionState, PgWireServerHandlers, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::extendedquery::{Bind, Describe, Execute};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::types::format::FormatOptions;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use vigil_ingest::security::{record_failure, AuthFailure, Authenticator, Scope, TokenHash};

use crate::context::{read_only_options, Interface, QueryLimits};
use crate::error::{DataErrorKind, QueryError};
use crate::guard::{self, GuardPolicy};
use crate::metrics;

/// Decides whether a user may log in with a password, and whether a logged-in session may go on. The
/// binary plugs in its token check here.
pub trait PgAuth: Send + Sync {
    /// `Some(grant)` lets the login in. The grant stays with the connection and is handed to
    /// [`PgAuth::still_valid`] before each statement, so it must not be the password itself.
    fn check(&self, user: &str, password: &str) -> Option<String>;

    /// Whether the session that logged in with `grant` may run another statement. A session lasts as
    /// long as its client likes (Grafana keeps its connections for hours), so a token revoked or removed
    /// after the login must end the sessions it opened, not only refuse the next login.
    fn still_valid(&self, grant: &str) -> bool;
}

/// A fixed user and password, for the demo and tests.
pub struct StaticPassword {
    pub user: String,
    pub password: String,
}

impl PgAuth for StaticPassword {
    fn check(&self, user: &str, password: &str) -> Option<String> {
        // Compare everything, so the time taken does not tell how much of the password matched.
        let user_ok = constant_time_eq(user.as_bytes(), self.user.as_bytes());
        let password_ok = constant_time_eq(password.as_bytes(), self.password.as_bytes());
        (user_ok & password_ok).then(String::new)
    }

    /// A fixed password cannot be revoked.
    fn still_valid(&self, _grant: &str) -> bool {
        true
    }
}

/// The label of this listener in `vigil_auth_failures_total`.
pub const LISTENER: &str = "pg";

/// API tokens as passwords: the password must be a token with the `query` scope; the user name is not
/// consulted (the token alone names the source). Refusals are counted like every other listener's. The
/// grant is the token's hash, which sessions re-check before each statement.
pub struct TokenPassword {
    pub auth: Arc<Authenticator>,
}

impl PgAuth for TokenPassword {
    fn check(&self, _user: &str, password: &str) -> Option<String> {
        match self.auth.authorize_token(Some(password), Scope::Query) {
            // The token as `authorize_token` took it (trimmed), or a pasted trailing newline logs in and
            // then fails every statement as revoked.
            Ok(_) => Some(TokenHash::of(password.trim()).to_string()),
            Err(failure) => {
                record_failure(LISTENER, &failure);
                None
            }
        }
    }

    fn still_valid(&self, grant: &str) -> bool {
        let outcome = match TokenHash::parse(grant) {
            Some(hash) => self.auth.authorize_hash(&hash, Scope::Query),
            None => Err(AuthFailure::Invalid),
        };
        match outcome {
            Ok(_) => true,
            Err(failure) => {
                record_failure(LISTENER, &failure);
                false
            }
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

#[derive(Debug, thiserror::Error)]
pub enum PgServerError {
    #[error("setting up the pg catalog: {0}")]
    Catalog(String),
}

/// The pg-wire server over one shared [`SessionContext`].
pub struct PgServer {
    service: Arc<GuardedService>,
    sessions: Arc<Sessions>,
    max_connections: usize,
    login_timeout: Duration,
    tls: Option<TlsAcceptor>,
}

/// How long a connection may take from its TCP accept to an accepted password. pgwire's own limit is a
/// minute, and until then the connection holds a slot: 64 silent sockets, reopened every minute, would
/// lock every user out without a token.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

impl PgServer {
    /// Adds the pg catalog (`pg_catalog.*`, `current_database()`, ...) to `ctx`: call once per context.
    pub fn new(
        ctx: Arc<SessionContext>,
        auth: Arc<dyn PgAuth>,
        limits: QueryLimits,
    ) -> Result<Self, PgServerError> {
        // By value: an `Arc<AuthManager>` here recurses without end on `pg_roles` (psql's `\du`).
        setup_pg_catalog(&ctx, "datafusion", AuthManager::new())
            .map_err(|e| PgServerError::Catalog(e.to_string()))?;
        let inner = Arc::new(DfSessionService::new(ctx.clone()));
        let sql_parser = Arc::new(PostgresCompatibilityParser::new());
        let sessions = Arc::new(Sessions {
            auth,
            closing: Arc::new(PeerSignals::default()),
        });
        let service = Arc::new(GuardedService {
            parser: Arc::new(GuardedParser {
                inner: inner.query_parser(),
                sql_parser: sql_parser.clone(),
                limits: limits.clone(),
                sessions: sessions.clone(),
            }),
            sql_parser,
            inner,
            ctx,
            limits,
            sessions: sessions.clone(),
        });
        Ok(Self {
            service,
            sessions,
            max_connections: 64,
            login_timeout: LOGIN_TIMEOUT,
            tls: None,
        })
    }

    /// Serves TLS (the acceptor must not offer ALPN; see `vigil_ingest::security::tls::acceptor_without_alpn`)
    /// and refuses logins over plain connections, so a token never crosses the network in cleartext.
    /// Call before [`PgServer::serve`].
    pub fn with_tls(mut self, acceptor: TlsAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }

    /// Caps concurrent connections; connections over the cap are closed at once.
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Closes connections that have not logged in within `timeout` (default [`LOGIN_TIMEOUT`]).
    pub fn with_login_timeout(mut self, timeout: Duration) -> Self {
        self.login_timeout = timeout;
        self
    }

    /// Accepts connections on `listener` until `shutdown` completes.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let closing = self.sessions.closing.clone();
        let logged_in = Arc::new(PeerSignals::default());
        let startup = Arc::new(PasswordStartup {
            auth: self.sessions.auth.clone(),
            parameters: DefaultServerParameterProvider::default(),
            require_tls: self.tls.is_some(),
            closing: closing.clone(),
            logged_in: logged_in.clone(),
        });
        let login_timeout = self.login_timeout;
        let handlers = Arc::new(VigilPgHandlers {
            service: self.service.clone(),
            startup,
        });
        let slots = Arc::new(Semaphore::new(self.max_connections));
        tokio::pin!(shutdown);
        loop {
            let (mut socket, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "pg accept failed");
                        // Out of file descriptors and similar: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            vigil_ingest::security::tls_listener::no_delay(&mut socket);
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, max = self.max_connections, "pg connection refused: too many connections");
                continue;
            };
            let handlers = handlers.clone();
            let tls = self.tls.clone();
            let (closing, logged_in) = (closing.clone(), logged_in.clone());
            let to_close = closing.watch(peer);
            let login = logged_in.watch(peer);
            tokio::spawn(async move {
                let connection = pgwire::tokio::process_socket(socket, tls, handlers);
                tokio::pin!(connection);
                let login_deadline = async {
                    tokio::select! {
                        Ok(()) = login => std::future::pending::<()>().await,
                        _ = tokio::time::sleep(login_timeout) => {}
                    }
                };
                let result = tokio::select! {
                    result = &mut connection => result,
                    () = login_deadline => {
                        record_failure(LISTENER, &AuthFailure::Missing);
                        tracing::info!(%peer, timeout = ?login_timeout, "pg connection closed: no login in time");
                        Ok(())
                    }
                    Ok(()) = to_close => {
                        // pgwire has its FATAL to send; then the connection and its slot go, whatever the
                        // client does.
                        tokio::time::timeout(CLOSE_GRACE, &mut connection)
                            .await
                            .unwrap_or(Ok(()))
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "pg connection ended with an error");
                }
                closing.forget(peer);
                logged_in.forget(peer);
                drop(permit);
            });
        }
    }
}

struct VigilPgHandlers {
    service: Arc<GuardedService>,
    startup: Arc<PasswordStartup>,
}

impl PgWireServerHandlers for VigilPgHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.service.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.service.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}

/// How long a connection to be closed stays open for pgwire to send its FATAL.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// One-shot signals to the task serving a connection, by peer address. Two sets exist:
/// - `closing`: connections to close, those whose login was refused and sessions whose token was revoked.
///   pgwire answers both with FATAL but keeps reading until the client hangs up, so a client that never
///   does would hold one of the `max_connections` slots for good: a few such connections lock every user
///   out.
/// - `logged_in`: connections whose password was accepted, which stops their login deadline.
#[derive(Default)]
struct PeerSignals(std::sync::Mutex<HashMap<SocketAddr, tokio::sync::oneshot::Sender<()>>>);

impl PeerSignals {
    /// Resolves when `peer` is signalled (or the watch is forgotten).
    fn watch(&self, peer: SocketAddr) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Ok(mut m) = self.0.lock() {
            m.insert(peer, tx);
        }
        rx
    }

    fn signal(&self, peer: SocketAddr) {
        if let Some(tx) = self.0.lock().ok().and_then(|mut m| m.remove(&peer)) {
            let _ = tx.send(());
        }
    }

    fn forget(&self, peer: SocketAddr) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(&peer);
        }
    }
}

/// Cleartext password authentication against a [`PgAuth`]. MD5 and SCRAM need the stored secret, which a
/// token check does not have, so cleartext is the method that can ask a `check(user, password)`.
struct PasswordStartup {
    auth: Arc<dyn PgAuth>,
    parameters: DefaultServerParameterProvider,
    /// Refuse plain connections before asking for a password.
    require_tls: bool,
    closing: Arc<PeerSignals>,
    logged_in: Arc<PeerSignals>,
}

#[async_trait]
impl StartupHandler for PasswordStartup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        use futures::SinkExt;
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                if self.require_tls && !client.is_secure() {
                    tracing::info!(peer = %client.socket_addr(), "pg connection refused: TLS required");
                    self.closing.signal(client.socket_addr());
                    return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                        "FATAL".to_owned(),
                        "28000".to_owned(),
                        "this server requires TLS (sslmode=require or stricter)".to_owned(),
                    ))));
                }
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::CleartextPassword,
                    ))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(pwd) => {
                let pwd = pwd.into_password()?;
                let user = LoginInfo::from_client_info(client)
                    .user()
                    .unwrap_or_default()
                    .to_owned();
                if let Some(grant) = self.auth.check(&user, &pwd.password) {
                    client.session_extensions().insert(LoggedIn(grant));
                    self.logged_in.signal(client.socket_addr());
                    finish_authentication(client, &self.parameters).await?;
                } else {
                    tracing::info!(user = %user, peer = %client.socket_addr(), "pg login refused");
                    self.closing.signal(client.socket_addr());
                    return Err(PgWireError::InvalidPassword(user));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The [`PgAuth`] grant of a connection whose password was accepted. Kept in the connection's typed
/// session extensions, which only the server writes: its string metadata also holds every startup parameter
/// the client sent, so a key there (as this was before) could be set by a client that never logged in.
struct LoggedIn(String);

/// Who may run a statement: a connection that logged in, with a grant that is still valid.
struct Sessions {
    auth: Arc<dyn PgAuth>,
    closing: Arc<PeerSignals>,
}

impl Sessions {
    /// Every query handler calls this first. pgwire answers a failed login with a FATAL error and shuts
    /// its sending half, but keeps reading and hands later messages to the query handlers as if the
    /// connection were ready: a client that pipelines Startup, a wrong password and a query would have the
    /// query planned and run (its rows unread, its cost and timing not). And a session whose token was
    /// revoked since its login is ended here, at its next statement, and its connection closed.
    fn require<C: ClientInfo + ?Sized>(&self, client: &C) -> PgWireResult<()> {
        let fatal = |message: &str| {
            PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".to_owned(),
                "28000".to_owned(),
                message.to_owned(),
            )))
        };
        let Some(logged_in) = client.session_extensions().get::<LoggedIn>() else {
            record_failure(LISTENER, &AuthFailure::Missing);
            tracing::info!(peer = %client.socket_addr(), "pg statement refused: not logged in");
            return Err(fatal("not logged in"));
        };
        if self.auth.still_valid(&logged_in.0) {
            return Ok(());
        }
        tracing::info!(peer = %client.socket_addr(), "pg session ended: its token was revoked or removed");
        self.closing.signal(client.socket_addr());
        Err(fatal(
            "the token this session logged in with was revoked or removed",
        ))
    }
}

type DfStatement = (String, Option<(Statement, LogicalPlan)>);

/// Guard, limits and metrics around `datafusion-postgres`' session service.
struct GuardedService {
    inner: Arc<DfSessionService>,
    sql_parser: Arc<PostgresCompatibilityParser>,
    parser: Arc<GuardedParser>,
    ctx: Arc<SessionContext>,
    limits: QueryLimits,
    sessions: Arc<Sessions>,
}

/// Statements answered by `datafusion-postgres`' hooks from per-connection state; they never plan a query.
fn is_session_statement(statement: &Statement) -> bool {
    matches!(
        statement,
        Statement::Set(_)
            | Statement::ShowVariable { .. }
            | Statement::ShowStatus { .. }
            | Statement::ShowCatalogs { .. }
            | Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
    )
}

/// Parses with the pg-compatibility parser (which rewrites pg-isms for DataFusion) and guards every statement.
/// DataFusion-only syntax (`CREATE EXTERNAL TABLE`) does not parse there; such SQL is re-checked with
/// DataFusion's parser so the error names what was refused rather than a syntax error.
fn parse_and_guard(
    parser: &PostgresCompatibilityParser,
    sql: &str,
) -> Result<Vec<Statement>, QueryError> {
    guard::check_nesting(sql, &PostgreSqlDialect {})?;
    let statements = match parser.parse(sql) {
        Ok(statements) => statements,
        Err(e) => {
            guard::check_sql(sql, GuardPolicy::PG_SESSION)?;
            return Err(QueryError::Invalid(e.to_string()));
        }
    };
    for statement in &statements {
        guard::check_statement(statement, GuardPolicy::PG_SESSION)?;
    }
    Ok(statements)
}

/// The SQLSTATE for each kind of failure, so clients show the usual messages (e.g. psql's "canceling
/// statement due to statement timeout" for 57014).
fn to_pg_error(e: &QueryError) -> PgWireError {
    let code = match e {
        QueryError::Refused(_) => "42501",
        QueryError::Invalid(_) => "42601",
        QueryError::TooComplex { .. } => "54001",
        QueryError::Data { kind, .. } => match kind {
            DataErrorKind::DivisionByZero => "22012",
            DataErrorKind::InvalidText => "22P02",
            DataErrorKind::Overflow => "22003",
            DataErrorKind::InvalidArgument => "22023",
        },
        QueryError::Timeout(_) => "57014",
        QueryError::ResourcesExhausted(_) => "53200",
        QueryError::TooManyRows(_) | QueryError::TooManyBytes(_) => "54000",
        QueryError::Busy(_) => "53000",
        QueryError::Reported { code, .. } => code.as_str(),
        QueryError::Execution(_) => "XX000",
    };
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        code.to_owned(),
        e.to_string(),
    )))
}

/// Errors from the wrapped service: keep SQLSTATEs it chose, classify DataFusion errors like we do.
fn inner_error(e: PgWireError) -> QueryError {
    match e {
        PgWireError::ApiError(source) => {
            match source.downcast::<datafusion::error::DataFusionError>() {
                Ok(df) => QueryError::from(*df),
                Err(other) => QueryError::Invalid(other.to_string()),
            }
        }
        PgWireError::UserError(info) => {
            let ErrorInfo { code, message, .. } = *info;
            QueryError::Reported { code, message }
        }
        other => QueryError::Invalid(other.to_string()),
    }
}

fn record(outcome: Result<(), &QueryError>, started: Instant) {
    let outcome = match outcome {
        Ok(()) => "ok",
        Err(e) => e.outcome(),
    };
    metrics::record(
        Interface::Pg.as_str(),
        outcome,
        started.elapsed().as_secs_f64(),
    );
}

/// A streamed query's outcome, recorded once: when its rows end, fail or time out, or (rows left
/// unread, the client gone) when the stream is dropped. Recorded when the response was built, a query
/// that then timed out or ran out of memory while its rows were sent was counted as `ok`.
struct StreamOutcome {
    started: Instant,
    recorded: bool,
}

impl StreamOutcome {
    fn finish(&mut self, outcome: &'static str) {
        if !self.recorded {
            self.recorded = true;
            metrics::record(
                Interface::Pg.as_str(),
                outcome,
                self.started.elapsed().as_secs_f64(),
            );
        }
    }
}

impl Drop for StreamOutcome {
    fn drop(&mut self) {
        self.finish("ok");
    }
}

/// An error met while rows were produced, classified as one before them would be (a division by zero is
/// SQLSTATE 22012, not pgwire's catch-all XX000), with its metrics outcome.
fn stream_error(e: PgWireError) -> (PgWireError, &'static str) {
    match e {
        PgWireError::ApiError(source) => {
            match source.downcast::<datafusion::error::DataFusionError>() {
                Ok(df) => {
                    let e = QueryError::from(*df);
                    (to_pg_error(&e), e.outcome())
                }
                Err(other) => (PgWireError::ApiError(other), "error"),
            }
        }
        other => (other, "error"),
    }
}

/// Ends the row stream with a timeout error once `deadline` passes, so the timeout covers rows produced
/// while they are sent, not only planning; records the query's outcome when the stream ends.
///
/// At the deadline the query itself (its DataFusion stream, the memory it reserved, its tasks) is dropped
/// by a timer, whether or not the stream is being polled: pgwire polls it only between writes, so a client
/// that stops reading its results (or leaves a portal suspended) would otherwise hold the query's resources
/// for as long as it keeps the connection open.
fn with_deadline(
    mut response: QueryResponse,
    deadline: tokio::time::Instant,
    timeout: Duration,
    started: Instant,
) -> QueryResponse {
    let rows = std::mem::replace(&mut response.data_rows, Box::pin(futures::stream::empty()));
    let running = Arc::new(std::sync::Mutex::new(Running {
        rows: Some(rows),
        outcome: StreamOutcome {
            started,
            recorded: false,
        },
        waiting: false,
    }));
    let release = {
        let running = Arc::downgrade(&running);
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            loop {
                let Some(running) = running.upgrade() else {
                    return;
                };
                // A poll in progress may be computing rows inline; rather than block this worker thread
                // on it, look again shortly (if it returns Pending, it ends the stream itself).
                let ended = match running.try_lock() {
                    Ok(r) => Some(r),
                    Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
                    Err(std::sync::TryLockError::WouldBlock) => None,
                }
                .map(|mut r| (!r.waiting, r.end("timeout")));
                drop(running);
                match ended {
                    Some((unread, rows)) => {
                        if unread && rows.is_some() {
                            metrics::PG_RESULTS_RELEASED.inc();
                            tracing::info!(
                                ?timeout,
                                "pg query released at its statement timeout, its results unread"
                            );
                        }
                        // Dropped outside the lock: ending a DataFusion stream joins its tasks' handles.
                        drop(rows);
                        return;
                    }
                    None => tokio::time::sleep(RELEASE_RETRY).await,
                }
            }
        })
        .abort_handle()
    };
    response.data_rows = Box::pin(Bounded {
        running,
        sleep: Box::pin(tokio::time::sleep_until(deadline)),
        timeout,
        release,
        done: false,
    });
    response
}

/// The state a statement's row stream shares with the timer that ends it.
struct Running {
    /// `None` once the rows ended, failed or were released at the deadline.
    rows: Option<pgwire::api::results::SendableRowStream>,
    outcome: StreamOutcome,
    /// The client asked for the next row and waits for the query: a timeout then is a slow query, not
    /// results left unread.
    waiting: bool,
}

/// How soon the deadline's timer looks again when a poll of the rows is in progress.
const RELEASE_RETRY: Duration = Duration::from_millis(50);

impl Running {
    /// Records `outcome` (once) and hands back the rows to drop, if they were still running.
    fn end(&mut self, outcome: &'static str) -> Option<pgwire::api::results::SendableRowStream> {
        self.outcome.finish(outcome);
        self.rows.take()
    }
}

fn lock(running: &std::sync::Mutex<Running>) -> std::sync::MutexGuard<'_, Running> {
    running
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A statement's rows, ended by its deadline (see [`with_deadline`]).
struct Bounded {
    running: Arc<std::sync::Mutex<Running>>,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    release: tokio::task::AbortHandle,
    done: bool,
}

impl futures::Stream for Bounded {
    type Item = PgWireResult<pgwire::messages::data::DataRow>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.done {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        let mut running = lock(&this.running);
        let polled = match running.rows.as_mut() {
            Some(rows) => rows.as_mut().poll_next(cx),
            // The timer released the rows: the deadline has passed.
            None => Poll::Pending,
        };
        running.waiting = polled.is_pending();
        let (item, ended) = match polled {
            Poll::Ready(Some(Ok(row))) => return Poll::Ready(Some(Ok(row))),
            Poll::Ready(Some(Err(e))) => {
                let (e, outcome) = stream_error(e);
                let ended = running.end(outcome);
                (Some(Err(e)), ended)
            }
            Poll::Ready(None) => (None, running.end("ok")),
            Poll::Pending => {
                if running.rows.is_some() && this.sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let ended = running.end("timeout");
                let e = to_pg_error(&QueryError::Timeout(this.timeout));
                (Some(Err(e)), ended)
            }
        };
        drop(running);
        drop(ended);
        this.done = true;
        this.release.abort();
        Poll::Ready(item)
    }
}

impl Drop for Bounded {
    fn drop(&mut self) {
        self.release.abort();
    }
}

impl GuardedService {
    /// Plans `statement` and answers with its row stream, which records the outcome when it ends.
    async fn run_statement<C>(
        &self,
        client: &C,
        statement: &Statement,
        started: Instant,
    ) -> Result<Response, QueryError>
    where
        C: ClientInfo + ?Sized,
    {
        let deadline = tokio::time::Instant::now() + self.limits.timeout;
        let sql = statement.to_string();
        let format_options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let plan = async {
            let df = self.ctx.sql_with_options(&sql, read_only_options()).await?;
            encode_dataframe(df, &Format::UnifiedText, Some(format_options))
                .await
                .map_err(inner_error)
        };
        let response = tokio::time::timeout_at(deadline, plan)
            .await
            .map_err(|_| QueryError::Timeout(self.limits.timeout))??;
        Ok(Response::Query(with_deadline(
            response,
            deadline,
            self.limits.timeout,
            started,
        )))
    }
}

#[async_trait]
impl SimpleQueryHandler for GuardedService {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.sessions.require(client)?;
        let started = Instant::now();
        let query = crate::search_path::answer_search_path(query);
        let statements = match parse_and_guard(&self.sql_parser, &query) {
            Ok(s) => s,
            Err(e) => {
                record(Err(&e), started);
                return Err(to_pg_error(&e));
            }
        };
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::with_capacity(statements.len());
        for statement in &statements {
            if is_session_statement(statement) {
                responses.extend(
                    SimpleQueryHandler::do_query(
                        self.inner.as_ref(),
                        client,
                        &statement.to_string(),
                    )
                    .await?,
                );
                continue;
            }
            match self.run_statement(client, statement, started).await {
                Ok(response) => responses.push(response),
                Err(e) => {
                    record(Err(&e), started);
                    return Err(to_pg_error(&e));
                }
            }
        }
        Ok(responses)
    }
}

#[async_trait]
impl ExtendedQueryHandler for GuardedService {
    type Statement = DfStatement;
    type QueryParser = GuardedParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    /// Checked here as well as in `do_query`: an Execute that fetches more rows of a portal already
    /// started (a `max_rows` fetch) does not reach `do_query`, and a session whose token was revoked must
    /// not go on reading rows either.
    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.sessions.require(client)?;
        self._on_execute(client, message).await
    }

    /// A Bind of a statement prepared before a revocation would build a portal (and decode its parameters)
    /// for a session that may no longer run anything; it ends the session as a statement would.
    async fn on_bind<C>(&self, client: &mut C, message: Bind) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.sessions.require(client)?;
        // The inner service keeps pgwire's own Bind, so this is that Bind after the check.
        ExtendedQueryHandler::on_bind(self.inner.as_ref(), client, message).await
    }

    /// A Describe of a statement prepared before a revocation answers from the statement's plan.
    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.sessions.require(client)?;
        self._on_describe(client, message).await
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.sessions.require(client)?;
        // The statement passed the guard and the plan check in `GuardedParser::parse_sql`.
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.limits.timeout;
        let result = match tokio::time::timeout_at(
            deadline,
            ExtendedQueryHandler::do_query(self.inner.as_ref(), client, portal, max_rows),
        )
        .await
        {
            Err(_) => Err(QueryError::Timeout(self.limits.timeout)),
            Ok(Err(e)) => Err(inner_error(e)),
            Ok(Ok(Response::Query(q))) => Ok(Response::Query(with_deadline(
                q,
                deadline,
                self.limits.timeout,
                started,
            ))),
            Ok(Ok(other)) => Ok(other),
        };
        // A row stream records its own outcome when it ends.
        if !matches!(result, Ok(Response::Query(_))) {
            record(result.as_ref().map(|_| ()), started);
        }
        result.map_err(|e| to_pg_error(&e))
    }
}

/// Parses extended-protocol statements with the guard in front and the plan check behind.
struct GuardedParser {
    inner: Arc<datafusion_postgres::Parser>,
    sql_parser: Arc<PostgresCompatibilityParser>,
    limits: QueryLimits,
    sessions: Arc<Sessions>,
}

#[async_trait]
impl QueryParser for GuardedParser {
    type Statement = DfStatement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        self.sessions.require(client)?;
        let started = Instant::now();
        let sql = &*crate::search_path::answer_search_path(sql);
        let checked = async {
            let statements = parse_and_guard(&self.sql_parser, sql)?;
            if statements.len() > 1 {
                return Err(QueryError::Invalid(
                    "the extended query protocol takes one statement at a time".to_owned(),
                ));
            }
            let parsed = tokio::time::timeout(
                self.limits.timeout,
                self.inner.parse_sql(client, sql, types),
            )
            .await
            .map_err(|_| QueryError::Timeout(self.limits.timeout))?
            .map_err(inner_error)?;
            if let Some((_, Some((_, plan)))) = &parsed {
                read_only_options().verify_plan(plan)?;
            }
            Ok(parsed)
        };
        checked.await.map_err(|e| {
            record(Err(&e), started);
            to_pg_error(&e)
        })
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        self.inner.get_parameter_types(stmt)
    }

    fn get_result_schema(
        &self,
        stmt: &Self::Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        self.inner.get_result_schema(stmt, column_format)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::session_context;

    /// A SQLSTATE the protocol layer chose reaches the client as it chose it; it had become 42601 (a
    /// syntax error) on its way through.
    #[test]
    fn sqlstates_the_protocol_layer_chose_are_kept() {
        for (code, outcome) in [
            ("25P01", "invalid"),
            ("57014", "timeout"),
            ("XX000", "error"),
        ] {
            let inner = PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".to_owned(),
                code.to_owned(),
                "from the protocol layer".to_owned(),
            )));
            let e = inner_error(inner);
            assert_eq!(e.outcome(), outcome, "{code}");
            match to_pg_error(&e) {
                PgWireError::UserError(info) => {
                    assert_eq!(info.code, code);
                    assert_eq!(info.message, "from the protocol layer");
                }
                other => panic!("{other:?}"),
            }
        }
    }
    use crate::test_support::TestSource;
    use futures::StreamExt;
    use std::net::SocketAddr;
    use std::process::Output;

    const PSQL: &str = "/usr/bin/psql";

    struct Running {
        addr: SocketAddr,
        _dir: tempfile::TempDir,
        _stop: tokio::sync::oneshot::Sender<()>,
    }

    /// A client that stops reading its rows does not keep its query: at the statement timeout the rows'
    /// stream (the DataFusion query behind it) is dropped although nothing polls it, and the next read
    /// says why.
    #[tokio::test]
    async fn unread_rows_are_released_at_the_statement_timeout() {
        use std::sync::atomic::{AtomicBool, Ordering};
        struct SetOnDrop(Arc<AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let query = SetOnDrop(dropped.clone());
        let rows = futures::stream::repeat_with(move || {
            let _query = &query;
            Ok(pgwire::messages::data::DataRow::default())
        });
        let timeout = Duration::from_millis(300);
        let released = metrics::PG_RESULTS_RELEASED.get();
        let mut response = with_deadline(
            QueryResponse::new(Arc::new(Vec::new()), rows),
            tokio::time::Instant::now() + timeout,
            timeout,
            Instant::now(),
        );
        assert!(matches!(response.data_rows.next().await, Some(Ok(_))));
        // The client reads no more, as pgwire's writer blocked on a full socket polls no more.
        tokio::time::sleep(timeout * 3).await;
        assert!(
            dropped.load(Ordering::SeqCst),
            "the query outlived its statement timeout"
        );
        assert!(metrics::PG_RESULTS_RELEASED.get() > released);
        match response.data_rows.next().await {
            Some(Err(e)) => assert!(e.to_string().contains("statement timeout"), "{e}"),
            other => panic!("expected the timeout, got {other:?}"),
        }
        assert!(response.data_rows.next().await.is_none());
    }

    /// Rows read to their end before the deadline come whole, and the timer does not fire afterwards.
    #[tokio::test]
    async fn rows_read_in_time_end_normally() {
        let rows =
            futures::stream::iter((0..3).map(|_| Ok(pgwire::messages::data::DataRow::default())));
        let timeout = Duration::from_millis(200);
        let mut response = with_deadline(
            QueryResponse::new(Arc::new(Vec::new()), rows),
            tokio::time::Instant::now() + timeout,
            timeout,
            Instant::now(),
        );
        let mut n = 0;
        while let Some(row) = response.data_rows.next().await {
            row.expect("no error before the deadline");
            n += 1;
        }
        assert_eq!(n, 3);
        tokio::time::sleep(timeout * 2).await;
        assert!(response.data_rows.next().await.is_none());
    }

    async fn start(limits: QueryLimits) -> Running {
        let auth = Arc::new(StaticPassword {
            user: "vigil".into(),
            password: "s3cret".into(),
        });
        start_with(limits, auth, None).await
    }

    async fn start_with(
        limits: QueryLimits,
        auth: Arc<dyn PgAuth>,
        tls: Option<TlsAcceptor>,
    ) -> Running {
        start_capped(limits, auth, tls, 64, LOGIN_TIMEOUT).await
    }

    async fn start_capped(
        limits: QueryLimits,
        auth: Arc<dyn PgAuth>,
        tls: Option<TlsAcceptor>,
        max_connections: usize,
        login_timeout: Duration,
    ) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let source = TestSource::with_hours(dir.path(), &[(0, 10), (1, 20)], 3);
        let ctx = Arc::new(session_context(Arc::new(source), limits.clone()).unwrap());
        let mut server = PgServer::new(ctx, auth, limits)
            .unwrap()
            .with_max_connections(max_connections)
            .with_login_timeout(login_timeout);
        if let Some(tls) = tls {
            server = server.with_tls(tls);
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.serve(listener, async move {
            let _ = stopped.await;
        }));
        Running {
            addr,
            _dir: dir,
            _stop: stop,
        }
    }

    async fn psql(addr: SocketAddr, password: &str, args: &[&str]) -> Output {
        let port = addr.port().to_string();
        tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(PSQL)
                .env("PGPASSWORD", password)
                .env("PGCONNECT_TIMEOUT", "5")
                .env_remove("PGSERVICE")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-U",
                    "vigil",
                    "-d",
                    "vigil",
                    "-X",
                    "-A",
                    "-t",
                    "-v",
                    "ON_ERROR_STOP=1",
                ])
                .args(args)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("psql finished in time")
        .expect("psql runs")
    }

    /// A logged-in client still gets every test event counted: the server kept serving and the tables are intact.
    async fn assert_still_serving(addr: SocketAddr) {
        let out = psql(addr, "s3cret", &["-c", "SELECT count(*) FROM events"]).await;
        assert_eq!(stdout(&out), "33", "{}", stderr(&out));
    }

    fn stdout(o: &Output) -> String {
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    fn stderr(o: &Output) -> String {
        String::from_utf8_lossy(&o.stderr).to_string()
    }

    #[tokio::test]
    async fn psql_counts_events() {
        let server = start(QueryLimits::default()).await;
        let out = psql(
            server.addr,
            "s3cret",
            &["-c", "SELECT count(*) FROM events"],
        )
        .await;
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), "33");
    }

    /// A session's time zone is its own: one client's `SET timezone = ...` reached DataFusion's shared
    /// configuration and changed `now()` and every `timestamptz` cast for all others (and a bogus zone broke
    /// them). That form is refused; `SET TIME ZONE 'x'`, which the pg layer keeps per connection, is not.
    #[tokio::test]
    async fn one_sessions_time_zone_does_not_change_anothers() {
        let server = start(QueryLimits::default()).await;
        let cast = "SELECT CAST(CAST('2026-01-01 00:00:00' AS TIMESTAMPTZ) AS VARCHAR)";
        let before = psql(server.addr, "s3cret", &["-c", cast]).await;
        assert!(before.status.success(), "{}", stderr(&before));
        for set in [
            "SET timezone = 'Asia/Kolkata'",
            "SET TIME ZONE = 'Asia/Kolkata'",
            "SET timezone TO 'bogus'",
        ] {
            let out = psql(server.addr, "s3cret", &["-c", set]).await;
            assert!(!out.status.success(), "{set} was accepted");
        }
        let out = psql(
            server.addr,
            "s3cret",
            &["-c", "SET TIME ZONE 'Asia/Kolkata'", "-c", cast],
        )
        .await;
        assert!(out.status.success(), "{}", stderr(&out));
        let after = psql(server.addr, "s3cret", &["-c", cast]).await;
        assert_eq!(stdout(&after), stdout(&before), "{}", stderr(&after));
    }

    #[tokio::test]
    async fn psql_lists_tables() {
        let server = start(QueryLimits::default()).await;
        let out = psql(server.addr, "s3cret", &["-c", "\\dt"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        for table in ["events", "alerts", "baselines", "inventory"] {
            assert!(
                text.lines().any(|l| l.split('|').nth(1) == Some(table)),
                "{table} missing from:\n{text}"
            );
        }
    }

    /// The tables of Grafana's query builder: the data source asks which tables there are, and a table's
    /// columns, with these queries (Grafana's PostgreSQL data source, tables on the search path unqualified).
    #[tokio::test]
    async fn grafana_query_builder_lists_tables_and_columns() {
        const ON_SEARCH_PATH: &str = r#"quote_ident(table_schema) IN (
              SELECT
                CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
              FROM
                generate_series(
                  array_lower(string_to_array(current_setting('search_path'),','),1),
                  array_upper(string_to_array(current_setting('search_path'),','),1)
                ) as i,
                string_to_array(current_setting('search_path'),',') s
              )"#;
        // The schemas Grafana never lists (PostgreSQL's own and TimescaleDB's).
        const NOT_USERS: &str = "('information_schema', 'pg_catalog', '_timescaledb_cache', \
            '_timescaledb_catalog', '_timescaledb_internal', '_timescaledb_config', \
            'timescaledb_information', 'timescaledb_experimental')";
        let tables = format!(
            r#"SELECT
        CASE WHEN {ON_SEARCH_PATH}
          THEN quote_ident(table_name)
          ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
        END AS "table"
        FROM information_schema.tables
        WHERE quote_ident(table_schema) NOT IN {NOT_USERS}
        ORDER BY CASE WHEN {ON_SEARCH_PATH} THEN 0 ELSE 1 END, 1"#
        );
        let columns = format!(
            r#"SELECT quote_ident(column_name) AS "column", data_type AS "type"
        FROM information_schema.columns
        WHERE
          CASE WHEN array_length(parse_ident('alerts'),1) = 2
            THEN quote_ident(table_schema) = (parse_ident('alerts'))[1]
              AND quote_ident(table_name) = (parse_ident('alerts'))[2]
            ELSE quote_ident(table_name) = 'alerts'
              AND {ON_SEARCH_PATH}
          END"#
        );
        // The query builder of Grafana 10 and later: only the tables on the search path.
        let builder_tables = format!(
            r#"select quote_ident(table_name) as "table" from information_schema.tables
    where quote_ident(table_schema) not in {NOT_USERS}
      and {ON_SEARCH_PATH}"#
        );
        let server = start(QueryLimits::default()).await;
        for query in [&tables, &builder_tables] {
            let out = psql(server.addr, "s3cret", &["-c", query]).await;
            assert!(out.status.success(), "{}", stderr(&out));
            let listed: Vec<String> = stdout(&out).lines().map(|l| l.trim().to_string()).collect();
            for table in ["events", "alerts", "baselines", "inventory"] {
                assert!(
                    listed.iter().any(|l| l == table),
                    "{table} missing from {listed:?}"
                );
            }
        }
        let out = psql(server.addr, "s3cret", &["-c", &columns]).await;
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(text.lines().any(|l| l.starts_with("detector|")), "{text}");
    }

    #[tokio::test]
    async fn psql_du_does_not_take_the_server_down() {
        // `\du` recursed without end when the catalog held an `Arc<AuthManager>`; DataFusion cannot plan its
        // `ARRAY(subquery)` either way, but the server must answer with an error and keep serving.
        let server = start(QueryLimits::default()).await;
        let _ = psql(server.addr, "s3cret", &["-c", "\\du"]).await;
        assert_still_serving(server.addr).await;
    }

    #[tokio::test]
    async fn wrong_password_is_refused() {
        let server = start(QueryLimits::default()).await;
        let out = psql(server.addr, "wrong", &["-c", "SELECT 1"]).await;
        assert!(!out.status.success());
        assert!(
            stderr(&out)
                .to_lowercase()
                .contains("password authentication failed"),
            "{}",
            stderr(&out)
        );
    }

    #[tokio::test]
    async fn hostile_statements_are_refused_over_pg() {
        let server = start(QueryLimits::default()).await;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("x");
        for (sql, needle) in [
            (
                "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'".to_string(),
                "CREATE EXTERNAL TABLE is not allowed",
            ),
            (format!("COPY (SELECT 1) TO '{}'", target.display()), "COPY"),
            ("DROP TABLE events".to_string(), "DROP TABLE is not allowed"),
            (
                "SELECT 1; CREATE TABLE t AS SELECT 1".to_string(),
                "CREATE TABLE is not allowed",
            ),
            (
                "SET datafusion.execution.target_partitions = 1".to_string(),
                "SET datafusion.execution.target_partitions is not allowed",
            ),
            (
                "SELECT * FROM read_csv('/etc/passwd')".to_string(),
                "read_csv is not allowed",
            ),
            // Deep enough to overflow a stack while parsing, planning or dropping it: the process would abort
            // (100 KB: an argument may be 128 KB).
            (
                format!("SELECT 1{}", "+1".repeat(50_000)),
                "54001: the SQL nests expressions",
            ),
            // Not hostile, but the client's mistake: the SQLSTATE a PostgreSQL server would send.
            ("SELECT 1/0".to_string(), "22012:"),
        ] {
            let out = psql(
                server.addr,
                "s3cret",
                &["-v", "VERBOSITY=verbose", "-c", &sql],
            )
            .await;
            assert!(!out.status.success(), "{sql} succeeded: {}", stdout(&out));
            assert!(stderr(&out).contains(needle), "{sql}: {}", stderr(&out));
        }
        assert!(!target.exists());
        let deep = format!("SELECT 1{}", "*1".repeat(100_000));
        let err = extended_query(server.addr, &deep, &[])
            .await
            .expect_err("a deep chain over the extended protocol");
        assert!(err.contains("nests expressions"), "{err}");
        // The session still works and the tables are intact.
        assert_still_serving(server.addr).await;
    }

    /// Runs one statement over the extended protocol (Parse/Bind/Execute/Sync), as drivers and Grafana do;
    /// psql 15 has no `\bind`. Returns the text rows or the server's error message.
    async fn extended_query(
        addr: SocketAddr,
        sql: &str,
        params: &[&str],
    ) -> Result<Vec<Vec<Option<String>>>, String> {
        use bytes::BytesMut;
        use fallible_iterator::FallibleIterator;
        use postgres_protocol::message::{backend::Message, frontend};
        use postgres_protocol::IsNull;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut out = BytesMut::new();
        let mut inbuf = BytesMut::new();
        frontend::startup_message([("user", "vigil"), ("database", "vigil")], &mut out).unwrap();
        let mut sent_query = false;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            if !out.is_empty() {
                socket.write_all(&out.split()).await.unwrap();
            }
            let message = loop {
                if let Some(m) = Message::parse(&mut inbuf).unwrap() {
                    break m;
                }
                assert!(
                    socket.read_buf(&mut inbuf).await.unwrap() > 0,
                    "server closed the connection"
                );
            };
            match message {
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(b"s3cret", &mut out).unwrap()
                }
                Message::ReadyForQuery(_) if !sent_query => {
                    sent_query = true;
                    frontend::parse("", sql, [], &mut out).unwrap();
                    let bind = frontend::bind(
                        "",
                        "",
                        [0],
                        params.iter().copied(),
                        |p: &str, buf: &mut BytesMut| {
                            buf.extend_from_slice(p.as_bytes());
                            Ok(IsNull::No)
                        },
                        [0],
                        &mut out,
                    );
                    assert!(bind.is_ok());
                    frontend::execute("", 0, &mut out).unwrap();
                    frontend::sync(&mut out);
                }
                Message::ReadyForQuery(_) => break,
                Message::DataRow(row) => {
                    let buf = row.buffer();
                    let values = row
                        .ranges()
                        .map(|r| Ok(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned())))
                        .collect()
                        .unwrap();
                    rows.push(values);
                }
                Message::ErrorResponse(body) => {
                    let mut fields = body.fields();
                    while let Some(field) = fields.next().unwrap() {
                        if field.type_() == b'M' {
                            error = Some(String::from_utf8_lossy(field.value_bytes()).into_owned());
                        }
                    }
                    if !sent_query {
                        break;
                    }
                }
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    #[tokio::test]
    async fn extended_protocol_is_guarded_too() {
        let server = start(QueryLimits::default()).await;
        let rows = extended_query(
            server.addr,
            "SELECT count(*) FROM events WHERE user_id = $1",
            &["user0"],
        )
        .await
        .unwrap();
        assert_eq!(rows, vec![vec![Some("12".to_string())]]);
        let err = extended_query(server.addr, "DROP TABLE events", &[])
            .await
            .unwrap_err();
        assert!(err.contains("DROP TABLE is not allowed"), "{err}");
        let err = extended_query(server.addr, "COPY (SELECT 1) TO '/tmp/vigil-pg-test'", &[])
            .await
            .unwrap_err();
        assert!(err.contains("COPY"), "{err}");
        let rows = extended_query(server.addr, "SELECT count(*) FROM events", &[])
            .await
            .unwrap();
        assert_eq!(rows, vec![vec![Some("33".to_string())]]);
    }

    /// pgwire keeps reading after it refuses a login: statements pipelined behind a wrong password reach the
    /// query handlers, which must refuse them (and count it) rather than run them, whatever startup
    /// parameters the client sent.
    #[tokio::test]
    async fn statements_pipelined_behind_a_wrong_password_are_refused() {
        use bytes::BytesMut;
        use postgres_protocol::message::frontend;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let _counters = COUNTERS.lock().await;
        let server = start(QueryLimits::default()).await;
        for extended in [false, true] {
            let before = failures("missing");
            let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
            let mut out = BytesMut::new();
            // The name of the metadata key that once marked a login: startup parameters land in the
            // same metadata, so a client could set it.
            frontend::startup_message(
                [
                    ("user", "vigil"),
                    ("database", "vigil"),
                    ("vigil.logged_in", "true"),
                ],
                &mut out,
            )
            .unwrap();
            frontend::password_message(b"not the password", &mut out).unwrap();
            if extended {
                frontend::parse("", "SELECT count(*) FROM events", [], &mut out).unwrap();
                frontend::sync(&mut out);
            } else {
                frontend::query("SELECT count(*) FROM events", &mut out).unwrap();
            }
            socket.write_all(&out).await.unwrap();
            let mut said = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut said)).await;
            assert!(
                String::from_utf8_lossy(&said)
                    .to_lowercase()
                    .contains("password authentication failed"),
                "{said:?}"
            );
            // The server reads the statement after it has answered the login, so wait for the count.
            let deadline = Instant::now() + Duration::from_secs(10);
            while failures("missing") == before {
                assert!(
                    Instant::now() < deadline,
                    "a statement after a failed login was not refused (extended: {extended})"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // A client that logs in is unaffected.
        assert_still_serving(server.addr).await;
    }

    /// pgwire keeps a connection whose login it refused until the client hangs up; the server closes it
    /// instead, so with a single slot a client that failed its login and stays connected locks nobody out.
    #[tokio::test]
    async fn a_refused_login_gives_its_slot_back_while_the_client_stays_connected() {
        use bytes::BytesMut;
        use postgres_protocol::message::frontend;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let auth = Arc::new(StaticPassword {
            user: "vigil".into(),
            password: "s3cret".into(),
        });
        let server = start_capped(QueryLimits::default(), auth, None, 1, LOGIN_TIMEOUT).await;
        let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let mut out = BytesMut::new();
        frontend::startup_message([("user", "vigil"), ("database", "vigil")], &mut out).unwrap();
        frontend::password_message(b"not the password", &mut out).unwrap();
        socket.write_all(&out).await.unwrap();
        let mut said = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut said)).await;
        assert!(
            String::from_utf8_lossy(&said)
                .to_lowercase()
                .contains("password authentication failed"),
            "{said:?}"
        );
        tokio::time::sleep(CLOSE_GRACE + Duration::from_millis(500)).await;
        // `socket` is still open on this side.
        assert_still_serving(server.addr).await;
        drop(socket);
    }

    #[tokio::test]
    async fn session_settings_and_grafana_queries_work() {
        let server = start(QueryLimits::default()).await;
        let sql = "SET datestyle = 'ISO, MDY'; \
                   SELECT floor(extract(epoch from time)/300)*300 AS \"time\", count(*) AS n FROM events \
                   WHERE time BETWEEN '2026-01-01T00:00:00Z' AND '2026-01-01T00:59:59Z' GROUP BY 1 ORDER BY 1";
        let out = psql(server.addr, "s3cret", &["-c", sql]).await;
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        let row = text.lines().last().unwrap_or_default();
        assert_eq!(row.split('|').nth(1), Some("10"), "{text}");
        assert!(row.starts_with("1767225600"), "{text}");
    }

    #[tokio::test]
    async fn runaway_query_is_cancelled_by_the_timeout() {
        let limits = QueryLimits {
            timeout: Duration::from_millis(500),
            ..QueryLimits::default()
        };
        let server = start(limits).await;
        let timeouts = crate::metrics::QUERIES_TOTAL
            .with_label_values(&[Interface::Pg.as_str(), "timeout"])
            .get();
        let started = Instant::now();
        let out = psql(
            server.addr,
            "s3cret",
            &[
                "-c",
                "SELECT count(*) FROM range(100000000) a, range(100000000) b",
            ],
        )
        .await;
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("statement timeout"),
            "{}",
            stderr(&out)
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        // Counted as a timeout, although it timed out while its rows were being produced.
        assert!(
            crate::metrics::QUERIES_TOTAL
                .with_label_values(&[Interface::Pg.as_str(), "timeout"])
                .get()
                > timeouts,
            "the timeout is counted"
        );
    }

    async fn psql_env(addr: SocketAddr, password: &str, env: &[(&str, &str)], sql: &str) -> Output {
        let port = addr.port().to_string();
        let mut cmd = tokio::process::Command::new(PSQL);
        cmd.env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "5")
            .env_remove("PGSERVICE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        tokio::time::timeout(
            Duration::from_secs(30),
            cmd.args([
                "-h",
                "localhost",
                "-p",
                &port,
                "-U",
                "anyone",
                "-d",
                "vigil",
                "-w",
                "-X",
                "-A",
                "-t",
                "-c",
                sql,
            ])
            .kill_on_drop(true)
            .output(),
        )
        .await
        .expect("psql finished in time")
        .expect("psql runs")
    }

    /// A server whose password is an API token, and its tokens: one with the `query` scope, named
    /// `grafana`, and one with `ingest`. The directory holds `tokens.json`.
    struct TokenServer {
        server: Running,
        auth: Arc<Authenticator>,
        query: String,
        ingest: String,
        /// Bind it (`_tokens`, not `..`) for as long as the server runs: the store re-reads its file.
        _tokens: tempfile::TempDir,
    }

    async fn token_server(max_connections: usize) -> TokenServer {
        token_server_with(max_connections, LOGIN_TIMEOUT).await
    }

    async fn token_server_with(max_connections: usize, login_timeout: Duration) -> TokenServer {
        use vigil_ingest::security::{StoreOptions, TokenStore};
        let tokens = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            recheck_interval: Duration::ZERO,
            ..StoreOptions::default()
        };
        let store = TokenStore::open_with(tokens.path().join("tokens.json"), options).unwrap();
        let (_, query) = store.create("grafana", &[Scope::Query]).unwrap();
        let (_, ingest) = store.create("collector", &[Scope::Ingest]).unwrap();
        let auth = Arc::new(Authenticator::new(store));
        let password = Arc::new(TokenPassword { auth: auth.clone() });
        let server = start_capped(
            QueryLimits::default(),
            password,
            None,
            max_connections,
            login_timeout,
        )
        .await;
        TokenServer {
            server,
            auth,
            query,
            ingest,
            _tokens: tokens,
        }
    }

    #[test]
    fn a_password_with_surrounding_whitespace_stays_valid_after_login() {
        use vigil_ingest::security::{StoreOptions, TokenStore};
        let tokens = tempfile::tempdir().unwrap();
        let store =
            TokenStore::open_with(tokens.path().join("tokens.json"), StoreOptions::default())
                .unwrap();
        let (_, query) = store.create("grafana", &[Scope::Query]).unwrap();
        let password = TokenPassword {
            auth: Arc::new(Authenticator::new(store)),
        };
        let grant = password
            .check("grafana", &format!(" {query}\n"))
            .expect("the token, pasted with a newline, logs in");
        assert!(password.still_valid(&grant), "and its session goes on");
    }

    /// Held by the tests that assert on `vigil_auth_failures_total{listener="pg"}`: the counters are the
    /// process's, and tests run at once.
    static COUNTERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    fn failures(reason: &str) -> u64 {
        vigil_ingest::security::AUTH_FAILURES
            .with_label_values(&[LISTENER, reason])
            .get()
    }

    #[tokio::test]
    async fn a_query_token_is_the_password_and_others_are_refused_and_counted() {
        let _counters = COUNTERS.lock().await;
        let TokenServer {
            server,
            query,
            ingest,
            _tokens,
            ..
        } = token_server(64).await;
        let (invalid, forbidden) = (failures("invalid"), failures("forbidden"));
        let ok = psql_env(server.addr, &query, &[], "SELECT count(*) FROM events").await;
        assert!(ok.status.success(), "{}", stderr(&ok));
        assert_eq!(stdout(&ok), "33");
        for password in ["vgl_not_a_token", ingest.as_str()] {
            let out = psql_env(server.addr, password, &[], "SELECT 1").await;
            assert!(
                !out.status.success(),
                "password {password:?} must be refused"
            );
            assert!(
                stderr(&out)
                    .to_lowercase()
                    .contains("password authentication failed"),
                "{}",
                stderr(&out)
            );
        }
        assert_eq!(failures("invalid"), invalid + 1);
        assert_eq!(failures("forbidden"), forbidden + 1);
    }

    /// One connection held open across statements, spoken with `postgres-protocol` (the protocol half of
    /// tokio-postgres): what a test needs to see a session change between two statements.
    struct Session {
        socket: tokio::net::TcpStream,
        inbuf: bytes::BytesMut,
    }

    impl Session {
        async fn login(addr: SocketAddr, password: &str) -> Session {
            use postgres_protocol::message::{backend::Message, frontend};
            let mut session = Session {
                socket: tokio::net::TcpStream::connect(addr).await.unwrap(),
                inbuf: bytes::BytesMut::new(),
            };
            let mut out = bytes::BytesMut::new();
            frontend::startup_message([("user", "grafana"), ("database", "vigil")], &mut out)
                .unwrap();
            session.send(&out).await;
            loop {
                match session.next().await.expect("server answers the login") {
                    Message::AuthenticationCleartextPassword => {
                        let mut out = bytes::BytesMut::new();
                        frontend::password_message(password.as_bytes(), &mut out).unwrap();
                        session.send(&out).await;
                    }
                    Message::ErrorResponse(_) => panic!("login refused"),
                    Message::ReadyForQuery(_) => return session,
                    _ => {}
                }
            }
        }

        async fn send(&mut self, bytes: &[u8]) {
            use tokio::io::AsyncWriteExt;
            self.socket.write_all(bytes).await.unwrap();
        }

        /// Appends a Bind of `statement` into `portal`, without parameters, text results.
        fn bind(portal: &str, statement: &str, out: &mut bytes::BytesMut) {
            let bind = postgres_protocol::message::frontend::bind(
                portal,
                statement,
                [],
                std::iter::empty::<&str>(),
                |_: &str, _: &mut bytes::BytesMut| Ok(postgres_protocol::IsNull::No),
                [0],
                out,
            );
            assert!(bind.is_ok());
        }

        /// The next message, or `None` once the server has closed the connection.
        async fn next(&mut self) -> Option<postgres_protocol::message::backend::Message> {
            use postgres_protocol::message::backend::Message;
            use tokio::io::AsyncReadExt;
            loop {
                if let Some(m) = Message::parse(&mut self.inbuf).unwrap() {
                    return Some(m);
                }
                let read = tokio::time::timeout(
                    Duration::from_secs(10),
                    self.socket.read_buf(&mut self.inbuf),
                )
                .await
                .expect("the server answers or closes within 10 s");
                if read.map_or(true, |n| n == 0) {
                    return None;
                }
            }
        }

        /// The first column of each row, or the server's error as "SEVERITY: message".
        async fn query(&mut self, sql: &str) -> Result<Vec<String>, String> {
            use fallible_iterator::FallibleIterator;
            use postgres_protocol::message::{backend::Message, frontend};
            let mut out = bytes::BytesMut::new();
            frontend::query(sql, &mut out).unwrap();
            self.send(&out).await;
            let (mut rows, mut error) = (Vec::new(), None);
            while let Some(message) = self.next().await {
                match message {
                    Message::DataRow(row) => {
                        let buf = row.buffer();
                        let first = row.ranges().next().unwrap().flatten();
                        rows.push(first.map_or(String::new(), |r| {
                            String::from_utf8_lossy(&buf[r]).into_owned()
                        }));
                    }
                    Message::ErrorResponse(body) => {
                        let (mut severity, mut text) = (String::new(), String::new());
                        let mut fields = body.fields();
                        while let Some(field) = fields.next().unwrap() {
                            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
                            match field.type_() {
                                b'S' => severity = value,
                                b'M' => text = value,
                                _ => {}
                            }
                        }
                        error = Some(format!("{severity}: {text}"));
                        if severity == "FATAL" {
                            break;
                        }
                    }
                    Message::ReadyForQuery(_) => break,
                    _ => {}
                }
            }
            error.map_or(Ok(rows), Err)
        }
    }

    /// Retries `SELECT 1` with `token` until it gets in; fails the test after `wait`.
    async fn logs_in_within(addr: SocketAddr, token: &str, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            let out = psql_env(addr, token, &[], "SELECT 1").await;
            if out.status.success() {
                return;
            }
            assert!(Instant::now() < deadline, "{}", stderr(&out));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Connections that never log in give their slot back at the login deadline: without it, silent
    /// sockets held every slot for pgwire's minute and anyone could lock the users out without a token.
    #[tokio::test]
    async fn silent_connections_lose_their_slot_at_the_login_deadline() {
        let _counters = COUNTERS.lock().await;
        let TokenServer {
            server,
            query,
            _tokens,
            ..
        } = token_server_with(2, Duration::from_millis(300)).await;
        let missing = failures("missing");
        let silent: Vec<tokio::net::TcpStream> = vec![
            tokio::net::TcpStream::connect(server.addr).await.unwrap(),
            tokio::net::TcpStream::connect(server.addr).await.unwrap(),
        ];
        // Full at first; in once the deadline has closed the silent two (pgwire alone: a minute).
        logs_in_within(server.addr, &query, Duration::from_secs(5)).await;
        assert!(
            failures("missing") >= missing + 2,
            "the closed logins are counted"
        );
        drop(silent);
    }

    /// Grafana keeps its connections for hours: revoking the token they logged in with must end them at
    /// their next statement, and give their slot back although the client keeps its end open (a single
    /// slot here, so a connection left behind would lock the next login out).
    #[tokio::test]
    async fn a_session_ends_at_its_next_statement_once_its_token_is_revoked() {
        let _counters = COUNTERS.lock().await;
        let TokenServer {
            server,
            auth,
            query,
            _tokens,
            ..
        } = token_server(1).await;
        let mut session = Session::login(server.addr, &query).await;
        assert_eq!(
            session.query("SELECT count(*) FROM events").await,
            Ok(vec!["33".to_owned()])
        );
        assert_eq!(session.query("SELECT 1").await, Ok(vec!["1".to_owned()]));

        let invalid = failures("invalid");
        let store = auth.store().unwrap();
        store.revoke("grafana").unwrap();
        assert_eq!(
            session.query("SELECT count(*) FROM events").await,
            Err("FATAL: the token this session logged in with was revoked or removed".to_owned())
        );
        assert_eq!(failures("invalid"), invalid + 1);

        // The slot comes back although this client keeps its end open: a fresh token's login gets in
        // (retried for a moment, as the server closes the connection half a second after the FATAL).
        let (_, fresh) = store.create("grafana-rotated", &[Scope::Query]).unwrap();
        logs_in_within(server.addr, &fresh, CLOSE_GRACE + Duration::from_secs(5)).await;
        let out = psql_env(server.addr, &query, &[], "SELECT 1").await;
        assert!(!out.status.success(), "the revoked token logs in again");
        drop(session);
    }

    /// A portal started before the revocation gives no more rows after it: an Execute that goes on
    /// fetching a started portal never reaches `do_query`, so it is checked on its own.
    #[tokio::test]
    async fn a_portal_started_before_a_revocation_yields_no_more_rows() {
        use postgres_protocol::message::{backend::Message, frontend};
        let _counters = COUNTERS.lock().await;
        let TokenServer {
            server,
            auth,
            query,
            _tokens,
            ..
        } = token_server(64).await;
        let mut session = Session::login(server.addr, &query).await;
        let mut out = bytes::BytesMut::new();
        frontend::parse("", "SELECT user_id FROM events", [], &mut out).unwrap();
        Session::bind("", "", &mut out);
        frontend::execute("", 1, &mut out).unwrap();
        frontend::flush(&mut out);
        session.send(&out).await;
        let mut rows = 0;
        loop {
            match session.next().await.expect("the server answers") {
                Message::DataRow(_) => rows += 1,
                Message::PortalSuspended => break,
                Message::ErrorResponse(_) => panic!("the first fetch fails"),
                _ => {}
            }
        }
        assert_eq!(rows, 1, "one row per fetch of one");

        auth.store().unwrap().revoke("grafana").unwrap();
        let mut out = bytes::BytesMut::new();
        frontend::execute("", 1, &mut out).unwrap();
        frontend::sync(&mut out);
        session.send(&out).await;
        let mut rows_after = 0;
        let mut refused = false;
        while let Some(message) = session.next().await {
            match message {
                Message::DataRow(_) => rows_after += 1,
                Message::ErrorResponse(_) => refused = true,
                Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        assert_eq!(rows_after, 0, "rows after the revocation");
        assert!(refused, "the fetch is refused");
    }

    #[tokio::test]
    async fn a_statement_prepared_before_a_revocation_cannot_be_bound() {
        use postgres_protocol::message::{backend::Message, frontend};
        let _counters = COUNTERS.lock().await;
        let TokenServer {
            server,
            auth,
            query,
            _tokens,
            ..
        } = token_server(64).await;
        let mut session = Session::login(server.addr, &query).await;
        let mut out = bytes::BytesMut::new();
        frontend::parse("prepared", "SELECT user_id FROM events", [], &mut out).unwrap();
        frontend::sync(&mut out);
        session.send(&out).await;
        loop {
            match session.next().await.expect("the server answers") {
                Message::ReadyForQuery(_) => break,
                Message::ErrorResponse(_) => panic!("the Parse fails before the revocation"),
                _ => {}
            }
        }

        auth.store().unwrap().revoke("grafana").unwrap();
        let mut out = bytes::BytesMut::new();
        Session::bind("portal", "prepared", &mut out);
        // No Execute: only the Bind itself can be refused here.
        frontend::flush(&mut out);
        session.send(&out).await;
        match session.next().await.expect("the server answers the Bind") {
            Message::ErrorResponse(_) => {}
            Message::BindComplete => panic!("a revoked session bound a portal"),
            _ => panic!("unexpected answer to the Bind"),
        }
    }

    /// A self-signed certificate for localhost/127.0.0.1, written by the openssl CLI.
    fn self_signed(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        let status = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
            ])
            .args([
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ])
            // A leaf, not a CA: webpki (rustls clients) refuses a CA certificate as the server's own.
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl req");
        (cert, key)
    }

    #[tokio::test]
    async fn with_tls_a_trusting_client_logs_in_and_plain_or_untrusting_clients_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(dir.path(), "server");
        let (other, _) = self_signed(dir.path(), "other");
        let config = vigil_ingest::security::TlsConfig::new(&cert, &key);
        let acceptor = vigil_ingest::security::tls::acceptor_without_alpn(&config).unwrap();
        let auth = Arc::new(StaticPassword {
            user: "anyone".into(),
            password: "s3cret".into(),
        });
        let server = start_with(QueryLimits::default(), auth, Some(acceptor)).await;
        let (cert, other) = (
            cert.to_string_lossy().into_owned(),
            other.to_string_lossy().into_owned(),
        );

        let ok = psql_env(
            server.addr,
            "s3cret",
            &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", &cert)],
            "SELECT 1",
        )
        .await;
        assert!(ok.status.success(), "{}", stderr(&ok));
        assert_eq!(stdout(&ok), "1");

        let untrusted = psql_env(
            server.addr,
            "s3cret",
            &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", &other)],
            "SELECT 1",
        )
        .await;
        assert!(!untrusted.status.success());
        assert!(
            stderr(&untrusted).contains("certificate verify failed"),
            "{}",
            stderr(&untrusted)
        );

        let plain = psql_env(
            server.addr,
            "s3cret",
            &[("PGSSLMODE", "disable")],
            "SELECT 1",
        )
        .await;
        assert!(!plain.status.success());
        assert!(
            stderr(&plain).contains("requires TLS"),
            "{}",
            stderr(&plain)
        );
    }
}
