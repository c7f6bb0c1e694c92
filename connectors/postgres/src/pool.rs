//! Connections: a PostgreSQL connection belongs to one database, and a fleet may have a
//! thousand of them, so connections are kept per database, bounded in total by `pool_size`
//! (open ones and idle ones together), and the least recently used idle one goes first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connector_framework::{ConnectorError, Result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::PostgresSourceConfig;
use crate::error::wrap;

/// Set in every session's startup packet, so that no statement is spent on them: read-only
/// transactions, and the text forms the reader parses (ISO dates, ISO 8601 intervals, floats
/// that round-trip, hex bytea, standard strings).
const SESSION_OPTIONS: &str = "-c default_transaction_read_only=on -c DateStyle=ISO,YMD -c IntervalStyle=iso_8601 \
-c extra_float_digits=3 -c bytea_output=hex -c standard_conforming_strings=on -c statement_timeout=0 \
-c idle_in_transaction_session_timeout=0";

pub(crate) struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    base: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    permits: Arc<Semaphore>,
    /// Idle connections, most recently used first.
    idle: Mutex<VecDeque<(String, Client)>>,
    capacity: usize,
    endpoint: String,
    /// For explaining TLS failures in the user's keys.
    config: PostgresSourceConfig,
}

/// A connection to one database, back to the pool when dropped (unless [`Conn::discard`]
/// was called and not undone, e.g. inside a transaction that did not end).
pub(crate) struct Conn {
    client: Option<Client>,
    database: String,
    keep: bool,
    inner: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    pub(crate) fn new(
        config: &PostgresSourceConfig,
        tls: (tokio_postgres::config::SslMode, MakeRustlsConnect),
    ) -> Self {
        let mut base = tokio_postgres::Config::new();
        base.host(&config.host)
            .port(config.port)
            .user(&config.user)
            .application_name("connector-run")
            .options(SESSION_OPTIONS)
            .connect_timeout(Duration::from_secs(config.connect_timeout.max(1)))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .ssl_mode(tls.0);
        if !config.password.expose().is_empty() {
            base.password(config.password.expose());
        }
        Self {
            inner: Arc::new(Inner {
                base,
                tls: tls.1,
                permits: Arc::new(Semaphore::new(config.pool_size)),
                idle: Mutex::new(VecDeque::new()),
                capacity: config.pool_size,
                endpoint: format!("PostgreSQL at {}:{} as {}", config.host, config.port, config.user),
                config: config.clone(),
            }),
        }
    }

    pub(crate) fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// A connection to `database`: an idle one, else a new one (closing the least recently
    /// used idle connection when the pool is full).
    pub(crate) async fn get(&self, database: &str) -> Result<Conn> {
        let permit = self
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ConnectorError::permanent("the PostgreSQL source is closed"))?;
        let reused = {
            let mut idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
            let found = idle.iter().position(|(db, c)| db == database && !c.is_closed());
            let reused = found.and_then(|i| idle.remove(i)).map(|(_, c)| c);
            if reused.is_none() {
                // A new connection and the open ones must stay within pool_size: an idle one of
                // another database makes room.
                let open = self.inner.capacity - self.inner.permits.available_permits();
                while !idle.is_empty() && idle.len() + open > self.inner.capacity {
                    idle.pop_back();
                }
            }
            reused
        };
        let client = match reused {
            Some(c) => c,
            None => self.connect(database).await?,
        };
        Ok(Conn {
            client: Some(client),
            database: database.to_string(),
            keep: true,
            inner: self.inner.clone(),
            _permit: permit,
        })
    }

    /// A new connection to `database`; a failure explained (TLS causes in the user's keys).
    async fn connect(&self, database: &str) -> Result<Client> {
        let mut config = self.inner.base.clone();
        config.dbname(database);
        let endpoint = &self.inner.endpoint;
        let (client, connection) = config.connect(self.inner.tls.clone()).await.map_err(|e| {
            crate::tls::explain(&e, &self.inner.config, endpoint)
                .unwrap_or_else(|| wrap(e, format!("cannot connect to {endpoint} (database `{database}`)")))
        })?;
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%endpoint, error = %e, "a PostgreSQL connection ended");
            }
        });
        Ok(client)
    }

    /// Closes every idle connection and refuses new ones.
    pub(crate) fn close(&self) {
        self.inner.permits.close();
        self.inner.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl Conn {
    /// Not back to the pool when dropped (a transaction is open); [`Conn::keep`] undoes it.
    pub(crate) fn discard(&mut self) {
        self.keep = false;
    }
    pub(crate) fn keep(&mut self) {
        self.keep = true;
    }
    pub(crate) fn database(&self) -> &str {
        &self.database
    }
}

impl std::ops::Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().unwrap_or_else(|| unreachable!("a connection is taken only on drop"))
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().unwrap_or_else(|| unreachable!("a connection is taken only on drop"))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else { return };
        if !self.keep || client.is_closed() || self.inner.permits.is_closed() {
            return;
        }
        let mut idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.push_front((std::mem::take(&mut self.database), client));
        idle.truncate(self.inner.capacity);
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("endpoint", &self.inner.endpoint).field("capacity", &self.inner.capacity).finish()
    }
}
