//! A minimal PostgreSQL client over a blocking `TcpStream`: startup, authentication (trust,
//! cleartext, MD5, SCRAM-SHA-256) and the Simple Query protocol. `postgres-protocol` encodes
//! and decodes the messages (it does no I/O); this module owns the socket and bounds
//! everything the server can make it hold: one message at most [`MAX_MESSAGE`] bytes (checked
//! from the header before anything is allocated), at most [`MAX_MESSAGES`] messages per
//! conversation, at most [`MAX_ROWS`] rows kept per query, and a deadline on every read.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::{backend, backend::Message, frontend};

/// The largest backend message accepted (the replies to this skill's queries are tiny).
const MAX_MESSAGE: usize = 256 * 1024;
/// Messages read in one conversation before the server is judged to be misbehaving.
const MAX_MESSAGES: usize = 10_000;
/// Rows kept from one query; more are counted, not kept.
pub const MAX_ROWS: usize = 64;
/// Notices kept per connection, each clipped.
const MAX_NOTICES: usize = 5;
/// Bytes kept of any text the server sends (messages, details, values).
pub const MAX_TEXT: usize = 512;
/// NegotiateProtocolVersion: not decoded by postgres-protocol, harmless to skip.
const NEGOTIATE_PROTOCOL_VERSION_TAG: u8 = b'v';

/// Why a conversation with one server failed, in the words an operator acts on.
#[derive(Debug)]
pub enum Failure {
    /// The sandbox refused the address: it is not granted in `capabilities.tcp`.
    NotGranted(String),
    /// Nothing listens there (RST).
    Refused(String),
    /// No answer in time (connect or a read).
    Timeout(String),
    /// Any other network failure (unreachable, reset, closed early).
    Network(String),
    /// The server rejected the credentials, or wants a password this skill has none for.
    Auth {
        message: String,
        sqlstate: Option<String>,
    },
    /// The server refused the session for another reason (no such database, starting up, ...).
    Server {
        message: String,
        sqlstate: Option<String>,
    },
    /// A query failed on the server.
    Query {
        message: String,
        sqlstate: Option<String>,
    },
    /// The peer does not speak the protocol as expected (or is not PostgreSQL at all).
    Protocol(String),
}

impl Failure {
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::NotGranted(_) => "not_granted",
            Failure::Refused(_) => "connection_refused",
            Failure::Timeout(_) => "timeout",
            Failure::Network(_) => "network",
            Failure::Auth { .. } => "auth_failed",
            Failure::Server { .. } => "server_error",
            Failure::Query { .. } => "query_error",
            Failure::Protocol(_) => "protocol_error",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::NotGranted(m)
            | Failure::Refused(m)
            | Failure::Timeout(m)
            | Failure::Network(m)
            | Failure::Protocol(m) => m,
            Failure::Auth { message, .. }
            | Failure::Server { message, .. }
            | Failure::Query { message, .. } => message,
        }
    }

    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Failure::Auth { sqlstate, .. }
            | Failure::Server { sqlstate, .. }
            | Failure::Query { sqlstate, .. } => sqlstate.as_deref(),
            _ => None,
        }
    }
}

/// A network error during connect or I/O, classified.
pub fn network_failure(what: &str, e: &io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::PermissionDenied => Failure::NotGranted(format!(
            "{what}: the sandbox refused the connection (this address is not granted in capabilities.tcp)"
        )),
        io::ErrorKind::ConnectionRefused => Failure::Refused(format!(
            "{what}: connection refused (nothing listens there)"
        )),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            Failure::Timeout(format!("{what}: timed out"))
        }
        io::ErrorKind::UnexpectedEof => {
            Failure::Network(format!("{what}: the server closed the connection"))
        }
        _ => Failure::Network(format!("{what}: {e}")),
    }
}

/// An ErrorResponse or NoticeResponse, decoded into the fields people read.
pub struct ServerMessage {
    pub severity: Option<String>,
    pub sqlstate: Option<String>,
    pub text: String,
}

impl ServerMessage {
    fn decode(mut fields: backend::ErrorFields<'_>) -> ServerMessage {
        let mut severity = None;
        let mut sqlstate = None;
        let mut message = None;
        let mut detail = None;
        // A malformed field list still yields what was read before it.
        while let Ok(Some(f)) = fields.next() {
            let value = tend_sdk::clip(
                String::from_utf8_lossy(f.value_bytes()).into_owned(),
                MAX_TEXT,
            );
            match f.type_() {
                b'V' => severity = Some(value),
                b'S' if severity.is_none() => severity = Some(value),
                b'C' => sqlstate = Some(value),
                b'M' => message = Some(value),
                b'D' => detail = Some(value),
                _ => {}
            }
        }
        let mut text = message.unwrap_or_else(|| "(no message)".into());
        if let Some(d) = detail {
            text = tend_sdk::clip(format!("{text} ({d})"), MAX_TEXT);
        }
        ServerMessage {
            severity,
            sqlstate,
            text,
        }
    }

    /// `FATAL: password authentication failed for user "x" [28P01]`.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(sev) = &self.severity {
            s.push_str(sev);
            s.push_str(": ");
        }
        s.push_str(&self.text);
        if let Some(code) = &self.sqlstate {
            s.push_str(&format!(" [{code}]"));
        }
        s
    }
}

/// The rows of one query, as text (the Simple Query protocol sends text).
pub struct Rows {
    pub rows: Vec<Vec<Option<String>>>,
    /// Rows the server sent beyond [`MAX_ROWS`].
    pub dropped: usize,
}

/// One session with a server, ready for queries.
pub struct Session {
    stream: TcpStream,
    deadline: Instant,
    messages: usize,
    pub server_version: Option<String>,
    pub notices: Vec<String>,
}

/// The parameters of a connection.
pub struct Params<'a> {
    pub addr: SocketAddr,
    pub user: &'a str,
    pub database: &'a str,
    /// Looked up only if the server asks for a password.
    pub password: Option<&'a str>,
    pub deadline: Instant,
}

impl Session {
    /// Connect, start up and authenticate; returns once the server is ready for a query.
    pub fn connect(p: &Params<'_>) -> Result<Session, Failure> {
        let what = p.addr.to_string();
        let timeout = remaining(p.deadline).ok_or_else(|| {
            Failure::Timeout(format!("{what}: not tried, the time budget is spent"))
        })?;
        let stream =
            TcpStream::connect_timeout(&p.addr, timeout).map_err(|e| network_failure(&what, &e))?;
        // On wasip2 `connect_timeout` can hand back a stream whose connect failed: the real
        // outcome is the socket's pending error (as tcp-check found).
        if let Some(e) = stream
            .take_error()
            .map_err(|e| network_failure(&what, &e))?
        {
            return Err(network_failure(&what, &e));
        }
        stream.peer_addr().map_err(|e| network_failure(&what, &e))?;
        let _ = stream.set_nodelay(true);
        let mut s = Session {
            stream,
            deadline: p.deadline,
            messages: 0,
            server_version: None,
            notices: Vec::new(),
        };
        s.startup(p)?;
        Ok(s)
    }

    fn startup(&mut self, p: &Params<'_>) -> Result<(), Failure> {
        let mut buf = BytesMut::new();
        frontend::startup_message(
            [
                ("user", p.user),
                ("database", p.database),
                ("application_name", "tend-replication-lag"),
                ("client_encoding", "UTF8"),
            ],
            &mut buf,
        )
        .map_err(|e| Failure::Protocol(format!("cannot encode the startup message: {e}")))?;
        self.send(&buf)?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.receive()? {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    let pw = need_password(p, "a password (cleartext)")?;
                    buf.clear();
                    frontend::password_message(pw.as_bytes(), &mut buf)
                        .map_err(|e| Failure::Protocol(format!("cannot encode password: {e}")))?;
                    self.send(&buf)?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let pw = need_password(p, "an MD5 password")?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        p.user.as_bytes(),
                        pw.as_bytes(),
                        body.salt(),
                    );
                    buf.clear();
                    frontend::password_message(hash.as_bytes(), &mut buf)
                        .map_err(|e| Failure::Protocol(format!("cannot encode password: {e}")))?;
                    self.send(&buf)?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut offered = Vec::new();
                    let mut mechanisms = body.mechanisms();
                    while let Some(m) = mechanisms
                        .next()
                        .map_err(|e| Failure::Protocol(format!("bad SASL mechanism list: {e}")))?
                    {
                        if offered.len() < 8 {
                            offered.push(tend_sdk::clip(m.to_string(), 64));
                        }
                    }
                    if !offered.iter().any(|m| m == SCRAM_SHA_256) {
                        return Err(Failure::Auth {
                            message: format!(
                                "the server offers SASL mechanisms {offered:?}; this skill speaks {SCRAM_SHA_256} (without TLS channel binding)"
                            ),
                            sqlstate: None,
                        });
                    }
                    let pw = need_password(p, "SCRAM-SHA-256")?;
                    // No TLS, so no channel binding: the client says it does not support it.
                    let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                    buf.clear();
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut buf)
                        .map_err(|e| Failure::Protocol(format!("cannot encode SASL: {e}")))?;
                    self.send(&buf)?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        Failure::Protocol("SASL continue without a SASL exchange".into())
                    })?;
                    s.update(body.data()).map_err(|e| Failure::Auth {
                        message: format!("SCRAM exchange failed: {e}"),
                        sqlstate: None,
                    })?;
                    buf.clear();
                    frontend::sasl_response(s.message(), &mut buf)
                        .map_err(|e| Failure::Protocol(format!("cannot encode SASL: {e}")))?;
                    self.send(&buf)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        Failure::Protocol("SASL final without a SASL exchange".into())
                    })?;
                    // Checks the server's signature: the server proves it knows the password too.
                    s.finish(body.data()).map_err(|e| Failure::Auth {
                        message: format!("the server's SCRAM signature does not verify: {e}"),
                        sqlstate: None,
                    })?;
                }
                Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential
                | Message::AuthenticationGss
                | Message::AuthenticationGssContinue(_)
                | Message::AuthenticationSspi => {
                    return Err(Failure::Auth {
                        message: "the server asks for Kerberos/GSSAPI/SSPI/SCM authentication; this skill speaks trust, password, md5 and SCRAM-SHA-256".into(),
                        sqlstate: None,
                    });
                }
                Message::ParameterStatus(body) => self.parameter(&body),
                Message::BackendKeyData(_) => {
                    // For cancelling a query; this skill never does (its queries are short
                    // and the deadline closes the socket).
                }
                Message::NoticeResponse(body) => self.notice(body.fields()),
                Message::ErrorResponse(body) => {
                    let e = ServerMessage::decode(body.fields());
                    return Err(startup_error(e));
                }
                Message::ReadyForQuery(_) => return Ok(()),
                other => {
                    return Err(Failure::Protocol(format!(
                        "unexpected message during startup ({})",
                        name(&other)
                    )));
                }
            }
        }
    }

    /// Run one statement with the Simple Query protocol and return its rows as text.
    pub fn query(&mut self, sql: &str) -> Result<Rows, Failure> {
        let mut buf = BytesMut::new();
        frontend::query(sql, &mut buf)
            .map_err(|e| Failure::Protocol(format!("cannot encode the query: {e}")))?;
        self.send(&buf)?;
        let mut rows = Rows {
            rows: Vec::new(),
            dropped: 0,
        };
        let mut error: Option<ServerMessage> = None;
        // Read up to ReadyForQuery even after an error, so the session stays in step; a FATAL
        // error ends the session, and is what the operator sees rather than the closed socket.
        loop {
            let message = match self.receive() {
                Ok(m) => m,
                Err(e) => return Err(error.map_or(e, query_failure)),
            };
            match message {
                Message::RowDescription(_) => {}
                Message::DataRow(body) => {
                    if rows.rows.len() >= MAX_ROWS {
                        rows.dropped += 1;
                        continue;
                    }
                    rows.rows.push(decode_row(&body)?);
                }
                Message::CommandComplete(_) | Message::EmptyQueryResponse => {}
                Message::ErrorResponse(body) => {
                    let e = ServerMessage::decode(body.fields());
                    if matches!(e.severity.as_deref(), Some("FATAL" | "PANIC")) {
                        return Err(query_failure(e));
                    }
                    error.get_or_insert(e);
                }
                Message::NoticeResponse(body) => self.notice(body.fields()),
                Message::ParameterStatus(body) => self.parameter(&body),
                Message::NotificationResponse(_) => {}
                Message::ReadyForQuery(_) => break,
                other => {
                    return Err(Failure::Protocol(format!(
                        "unexpected message in reply to a simple query ({})",
                        name(&other)
                    )));
                }
            }
        }
        match error {
            Some(e) => Err(query_failure(e)),
            None => Ok(rows),
        }
    }

    /// Say goodbye politely; errors do not matter any more.
    pub fn close(mut self) {
        let mut buf = BytesMut::new();
        frontend::terminate(&mut buf);
        let _ = self.stream.write_all(&buf);
    }

    fn parameter(&mut self, body: &backend::ParameterStatusBody) {
        if let (Ok("server_version"), Ok(v)) = (body.name(), body.value()) {
            self.server_version = Some(tend_sdk::clip(v.to_string(), 64));
        }
    }

    fn notice(&mut self, fields: backend::ErrorFields<'_>) {
        if self.notices.len() < MAX_NOTICES {
            self.notices.push(ServerMessage::decode(fields).describe());
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        let timeout = remaining(self.deadline).ok_or_else(|| self.timed_out("sending"))?;
        let _ = self.stream.set_write_timeout(Some(timeout));
        self.stream
            .write_all(bytes)
            .and_then(|()| self.stream.flush())
            .map_err(|e| network_failure("sending to the server", &e))
    }

    fn timed_out(&self, doing: &str) -> Failure {
        Failure::Timeout(format!(
            "no answer in time while {doing} (the server accepted the connection but did not reply)"
        ))
    }

    /// Read exactly `out.len()` bytes before the deadline.
    fn read_exact(&mut self, out: &mut [u8]) -> Result<(), Failure> {
        let mut filled = 0;
        while filled < out.len() {
            let timeout = remaining(self.deadline).ok_or_else(|| self.timed_out("reading"))?;
            let _ = self.stream.set_read_timeout(Some(timeout));
            match self.stream.read(&mut out[filled..]) {
                Ok(0) => {
                    return Err(Failure::Network("the server closed the connection".into()));
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(self.timed_out("reading"));
                }
                Err(e) => return Err(network_failure("reading from the server", &e)),
            }
        }
        Ok(())
    }

    /// Read one backend message: the 5-byte header first, its length checked against
    /// [`MAX_MESSAGE`] before the body is allocated.
    fn receive(&mut self) -> Result<Message, Failure> {
        loop {
            self.messages += 1;
            if self.messages > MAX_MESSAGES {
                return Err(Failure::Protocol(format!(
                    "the server sent more than {MAX_MESSAGES} messages; giving up"
                )));
            }
            let mut header = [0u8; 5];
            self.read_exact(&mut header)?;
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            if !(4..=MAX_MESSAGE).contains(&len) {
                return Err(Failure::Protocol(format!(
                    "the peer sent a message of {len} bytes (tag {:?}): it does not look like a PostgreSQL server",
                    header[0] as char
                )));
            }
            let mut frame = BytesMut::zeroed(1 + len);
            frame[..5].copy_from_slice(&header);
            self.read_exact(&mut frame[5..])?;
            if header[0] == NEGOTIATE_PROTOCOL_VERSION_TAG {
                // The server speaks an older minor version than asked; 3.0 is all we use.
                continue;
            }
            return match Message::parse(&mut frame) {
                Ok(Some(m)) => Ok(m),
                Ok(None) => Err(Failure::Protocol("a truncated message".into())),
                Err(e) => Err(Failure::Protocol(format!(
                    "a malformed message (tag {:?}): {e}",
                    header[0] as char
                ))),
            };
        }
    }
}

fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

fn need_password<'a>(p: &Params<'a>, what: &str) -> Result<&'a str, Failure> {
    p.password.ok_or_else(|| Failure::Auth {
        message: format!(
            "the server asks for {what} and no passfile line matches this host, port, database and user (give `passfile`)"
        ),
        sqlstate: None,
    })
}

/// An ErrorResponse before the session is ready: credentials (class 28) or anything else.
fn startup_error(e: ServerMessage) -> Failure {
    let message = e.describe();
    let sqlstate = e.sqlstate;
    if sqlstate.as_deref().is_some_and(|c| c.starts_with("28")) {
        Failure::Auth { message, sqlstate }
    } else {
        Failure::Server { message, sqlstate }
    }
}

fn query_failure(e: ServerMessage) -> Failure {
    Failure::Query {
        message: e.describe(),
        sqlstate: e.sqlstate,
    }
}

fn decode_row(body: &backend::DataRowBody) -> Result<Vec<Option<String>>, Failure> {
    let buffer = body.buffer();
    let mut ranges = body.ranges();
    let mut values = Vec::new();
    while let Some(range) = ranges
        .next()
        .map_err(|e| Failure::Protocol(format!("a malformed data row: {e}")))?
    {
        values.push(
            range.map(|r| {
                tend_sdk::clip(String::from_utf8_lossy(&buffer[r]).into_owned(), MAX_TEXT)
            }),
        );
    }
    Ok(values)
}

fn name(m: &Message) -> &'static str {
    match m {
        Message::BindComplete => "BindComplete",
        Message::CloseComplete => "CloseComplete",
        Message::CopyData(_) => "CopyData",
        Message::CopyDone => "CopyDone",
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::DataRow(_) => "DataRow",
        Message::NoData => "NoData",
        Message::ParameterDescription(_) => "ParameterDescription",
        Message::ParseComplete => "ParseComplete",
        Message::PortalSuspended => "PortalSuspended",
        Message::RowDescription(_) => "RowDescription",
        Message::CommandComplete(_) => "CommandComplete",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        _ => "another message",
    }
}
