//! Sends the audit file to the `[audit] syslog` receiver over TCP or TLS
//! (RFC 6587 / RFC 5425 octet-counting framing, as IHE ATNA asks), from the
//! offset it last got to (`audit/sent`). A receiver that is down only delays the
//! records: they stay in the file and go when it is back.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use super::FILE;
use crate::App;

const CURSOR: &str = "sent";

/// Runs until `stop`: whenever there is more in the file than was sent, connect
/// and send it. The link state is in /readyz and the metrics.
pub fn run_sender(app: Arc<App>, stop: Arc<AtomicBool>) {
    let Some(target) = app.config.audit.syslog.clone() else {
        return;
    };
    let dir = app.audit.dir().to_path_buf();
    let mut conn: Option<Conn> = None;
    let mut backoff = Duration::from_millis(500);
    loop {
        // One more pass after the stop, for the last records (application stop).
        let stopping = stop.load(Ordering::Relaxed);
        match send_pending(&app, &dir, &target, &mut conn) {
            Ok(0) if !stopping => {
                backoff = Duration::from_millis(500);
                wait_for_records(&app, Duration::from_millis(500));
            }
            Ok(0) => {}
            Ok(n) => {
                app.metrics
                    .add("scanside_audit_records_sent_total", "", n as u64);
                set_link(&app, true, None);
            }
            Err(e) => {
                conn = None;
                set_link(&app, false, Some(format!("{e:#}")));
                if !stopping {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        if stopping {
            return;
        }
    }
}

fn wait_for_records(app: &App, at_most: Duration) {
    let (count, cv) = &*app.audit.written;
    if let Ok(c) = count.lock() {
        let _ = cv.wait_timeout(c, at_most);
    }
}

fn set_link(app: &App, up: bool, error: Option<String>) {
    if let Ok(mut l) = app.audit_link.lock() {
        if l.up != Some(up) {
            if up {
                tracing::info!("audit receiver reachable: sending the audit trail");
            } else {
                tracing::warn!(
                    error = error.as_deref().unwrap_or(""),
                    "audit receiver unreachable; records are kept and sent later"
                );
            }
        }
        l.up = Some(up);
        if error.is_some() {
            l.last_error = error;
        }
    }
    app.metrics
        .set_gauge("scanside_audit_receiver_up", "", if up { 1.0 } else { 0.0 });
}

/// Sends every whole record past the cursor; returns how many went.
fn send_pending(app: &App, dir: &Path, target: &str, conn: &mut Option<Conn>) -> Result<usize> {
    let mut offset = read_cursor(dir);
    let mut file = std::fs::File::open(dir.join(FILE)).context("audit file")?;
    let len = file.metadata()?.len();
    if offset > len {
        // The file was replaced (restored from a backup, say): start again.
        offset = 0;
    }
    if offset == len {
        return Ok(0);
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::new(file.take(len - offset));
    if conn.as_ref().is_some_and(|c| !c.alive()) {
        tracing::debug!("audit receiver closed the connection");
        *conn = None;
    }
    if conn.is_none() {
        *conn = Some(connect(app, target)?);
    }
    let w = &mut conn.as_mut().expect("connected above").w;
    let mut sent = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            // Nothing more, or a record still being written.
            break;
        }
        let record = &line[..line.len() - 1];
        write!(w, "{} ", record.len())?;
        w.write_all(record)?;
        offset += n as u64;
        sent += 1;
        if sent % 64 == 0 {
            w.flush()?;
            write_cursor(dir, offset)?;
        }
    }
    w.flush()?;
    write_cursor(dir, offset)?;
    Ok(sent)
}

/// A connection to the receiver: the writer (plain or TLS) and the socket, to
/// see whether the receiver closed it.
struct Conn {
    sock: TcpStream,
    w: Box<dyn Write + Send>,
}

impl Conn {
    /// A receiver never sends: a readable socket means it closed (or reset) the
    /// connection, and what we would write now would be lost on the wire.
    fn alive(&self) -> bool {
        let mut b = [0u8; 1];
        if self.sock.set_nonblocking(true).is_err() {
            return false;
        }
        let r = self.sock.peek(&mut b);
        let _ = self.sock.set_nonblocking(false);
        matches!(r, Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
            || matches!(r, Ok(n) if n > 0)
    }
}

fn connect(app: &App, target: &str) -> Result<Conn> {
    let addr = target
        .to_socket_addrs()
        .with_context(|| format!("audit.syslog: cannot resolve {target}"))?
        .next()
        .ok_or_else(|| anyhow!("audit.syslog: {target} has no address"))?;
    let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to the audit receiver {target}"))?;
    sock.set_nodelay(true)?;
    sock.set_write_timeout(Some(Duration::from_secs(10)))?;
    let probe = sock.try_clone()?;
    let Some(t) = &app.config.audit.tls else {
        return Ok(Conn {
            sock: probe,
            w: Box::new(sock),
        });
    };
    let cfg =
        crate::dimse::tls::client_config(t).map_err(|(k, m)| anyhow!("audit.tls.{k}: {m}"))?;
    let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
    let name = t.server_name.clone().unwrap_or_else(|| host.to_string());
    let name = rustls::pki_types::ServerName::try_from(name)
        .map_err(|e| anyhow!("audit.tls.server_name: {e}"))?;
    let tls = rustls::ClientConnection::new(cfg, name).context("TLS to the audit receiver")?;
    let mut s = rustls::StreamOwned::new(tls, sock);
    // Finish the handshake now, so a bad certificate shows as the link error.
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .context("TLS handshake with the audit receiver")?;
    }
    Ok(Conn {
        sock: probe,
        w: Box::new(s),
    })
}

fn read_cursor(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join(CURSOR))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn write_cursor(dir: &Path, offset: u64) -> Result<()> {
    let tmp = dir.join(format!("{CURSOR}.tmp"));
    std::fs::write(&tmp, offset.to_string())?;
    std::fs::rename(&tmp, dir.join(CURSOR))?;
    Ok(())
}
