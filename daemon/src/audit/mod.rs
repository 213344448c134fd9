//! The audit trail (IHE ATNA): security-relevant events as DICOM audit messages
//! (PS3.15 A.5) inside RFC 5424 syslog records. Every record is appended to
//! `<data_dir>/audit/audit.log` (one record a line, fsynced) by one writer
//! thread, and `syslog.rs` sends the file on to `[audit] syslog` whenever that
//! receiver is reachable, from where it last stopped. Audit records carry patient
//! IDs by design (that is what an access audit is for); the file is 0600 and the
//! tracing log never gets them.

mod syslog;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

pub use syslog::run_sender;

/// The audit receiver's state, for /readyz.
#[derive(Default, Clone, serde::Serialize)]
pub struct Link {
    pub up: Option<bool>,
    pub last_error: Option<String>,
}

/// A coded value (csd-code, codeSystemName, originalText).
#[derive(Clone, Copy)]
pub struct Code(pub &'static str, pub &'static str, pub &'static str);

// PS3.15 A.5.3 / PS3.16 CID 400-405.
pub const APPLICATION_ACTIVITY: Code = Code("110100", "DCM", "Application Activity");
pub const INSTANCES_TRANSFERRED: Code = Code("110104", "DCM", "DICOM Instances Transferred");
pub const EXPORT: Code = Code("110106", "DCM", "Export");
pub const QUERY: Code = Code("110112", "DCM", "Query");
pub const SECURITY_ALERT: Code = Code("110113", "DCM", "Security Alert");
pub const USER_AUTHENTICATION: Code = Code("110114", "DCM", "User Authentication");
pub const APPLICATION_START: Code = Code("110120", "DCM", "Application Start");
pub const APPLICATION_STOP: Code = Code("110121", "DCM", "Application Stop");
pub const LOGIN: Code = Code("110122", "DCM", "Login");
pub const NODE_AUTHENTICATION: Code = Code("110126", "DCM", "Node Authentication");
pub const NETWORK_CONFIGURATION: Code = Code("110128", "DCM", "Network Configuration");
pub const SOFTWARE_CONFIGURATION: Code = Code("110131", "DCM", "Software Configuration");
pub const RESTRICTED_FUNCTION: Code = Code("110132", "DCM", "Use of Restricted Function");
const APPLICATION: Code = Code("110150", "DCM", "Application");
const SOURCE: Code = Code("110153", "DCM", "Source Role ID");
const DESTINATION: Code = Code("110152", "DCM", "Destination Role ID");
const STUDY_UID: Code = Code("110180", "DCM", "Study Instance UID");
const SOP_CLASS_UID: Code = Code("110181", "DCM", "SOP Class UID");
const PATIENT_NUMBER: Code = Code("2", "RFC-3881", "Patient Number");

/// EventActionCode: Create, Read, Update, Delete, Execute.
#[derive(Clone, Copy)]
pub enum Action {
    C,
    R,
    U,
    E,
}

/// EventOutcomeIndicator.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success = 0,
    MinorFailure = 4,
    SeriousFailure = 8,
}

/// A network peer taking part (AE title and address), requestor or not.
pub struct Peer<'a> {
    pub ae_title: &'a str,
    pub address: Option<IpAddr>,
    pub role: PeerRole,
}

#[derive(Clone, Copy)]
pub enum PeerRole {
    /// It sent us data (or asked).
    Source,
    /// We sent it data.
    Destination,
    /// A person or program using the HTTP API.
    User,
}

/// What an event is about.
pub enum Object<'a> {
    Study {
        uid: &'a str,
        /// (SOP Class UID, number of instances)
        classes: Vec<(String, usize)>,
    },
    Patient {
        id: &'a str,
    },
    /// A C-FIND identifier (base64 in ParticipantObjectQuery).
    Query {
        sop_class: &'a str,
        identifier: &'a [u8],
    },
    /// Anything else, named (a model, a configuration file, a URL path).
    Named {
        id: &'a str,
        description: &'a str,
    },
}

pub struct Event<'a> {
    pub id: Code,
    pub kind: Option<Code>,
    pub action: Action,
    pub outcome: Outcome,
    /// Why it failed, or what happened, in words.
    pub description: &'a str,
    pub peers: Vec<Peer<'a>>,
    pub objects: Vec<Object<'a>>,
}

/// The audit trail: records go to a writer thread; `flush` waits for them.
pub struct Audit {
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    ae_title: String,
    host: String,
    dir: PathBuf,
    /// Records written (and fsynced) so far; the sender waits on it.
    pub written: Arc<(Mutex<u64>, std::sync::Condvar)>,
}

enum Msg {
    Record(String),
    Flush(mpsc::Sender<()>),
}

pub const FILE: &str = "audit.log";

impl Audit {
    /// Opens (creates) `<data_dir>/audit/audit.log` and starts the writer thread.
    pub fn open(data_dir: &Path, ae_title: &str) -> anyhow::Result<Audit> {
        let dir = data_dir.join("audit");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(FILE);
        let file = open_append(&path)?;
        let (tx, rx) = mpsc::channel();
        let written = Arc::new((Mutex::new(0u64), std::sync::Condvar::new()));
        let w = written.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer(file, rx, w))?;
        Ok(Audit {
            tx: Mutex::new(Some(tx)),
            ae_title: ae_title.to_string(),
            host: hostname(),
            dir,
            written,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn record(&self, e: &Event) {
        let line = syslog_record(&self.host, &message(e, &self.ae_title, &self.host));
        if let Ok(tx) = self.tx.lock() {
            if let Some(tx) = tx.as_ref() {
                let _ = tx.send(Msg::Record(line));
            }
        }
    }

    /// Returns once every record given so far is on disk.
    pub fn flush(&self) {
        let (done, wait) = mpsc::channel();
        let sent = self
            .tx
            .lock()
            .ok()
            .and_then(|tx| tx.as_ref().map(|t| t.send(Msg::Flush(done)).is_ok()));
        if sent == Some(true) {
            let _ = wait.recv_timeout(std::time::Duration::from_secs(10));
        }
    }
}

/// Appends one record from another process (the `scanside model` CLI): one
/// O_APPEND write, fsynced; the daemon's sender passes it on with the rest.
pub fn append_direct(data_dir: &Path, ae_title: &str, e: &Event) {
    let dir = data_dir.join("audit");
    let host = hostname();
    let line = syslog_record(&host, &message(e, ae_title, &host)) + "\n";
    let r = std::fs::create_dir_all(&dir)
        .and_then(|_| open_append(&dir.join(FILE)))
        .and_then(|mut f| f.write_all(line.as_bytes()).and_then(|_| f.sync_data()));
    if let Err(err) = r {
        tracing::error!(error = %err, "cannot write the audit trail");
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Writes what is queued, fsyncs once per batch, then answers flushes.
fn writer(mut file: File, rx: mpsc::Receiver<Msg>, written: Arc<(Mutex<u64>, std::sync::Condvar)>) {
    while let Ok(first) = rx.recv() {
        let mut flushes = Vec::new();
        let mut n = 0u64;
        let mut buf = String::new();
        for m in std::iter::once(first).chain(rx.try_iter()) {
            match m {
                Msg::Record(line) => {
                    buf.push_str(&line);
                    buf.push('\n');
                    n += 1;
                }
                Msg::Flush(done) => flushes.push(done),
            }
        }
        if !buf.is_empty() {
            let r = file
                .write_all(buf.as_bytes())
                .and_then(|_| file.sync_data());
            if let Err(e) = r {
                tracing::error!(error = %e, "cannot write the audit trail");
            }
            let (count, cv) = &*written;
            if let Ok(mut c) = count.lock() {
                *c += n;
            }
            cv.notify_all();
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "-".into())
}

/// RFC 5424: `<85>1 TIMESTAMP HOST scanside PID DICOM+RFC3881 - MSG`, facility
/// authpriv (10), severity notice (5), as IHE ITI-20 asks.
fn syslog_record(host: &str, xml: &str) -> String {
    format!(
        "<85>1 {} {} scanside {} DICOM+RFC3881 - {}",
        crate::sys::rfc3339_now(),
        host,
        std::process::id(),
        xml
    )
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

fn code(tag: &str, c: Code) -> String {
    format!(
        r#"<{tag} csd-code="{}" codeSystemName="{}" originalText="{}"/>"#,
        c.0, c.1, c.2
    )
}

/// The DICOM audit message (PS3.15 A.5.1), on one line.
pub fn message(e: &Event, ae_title: &str, host: &str) -> String {
    use std::fmt::Write as _;
    let action = match e.action {
        Action::C => "C",
        Action::R => "R",
        Action::U => "U",
        Action::E => "E",
    };
    let mut x = String::from("<AuditMessage>");
    let _ = write!(
        x,
        r#"<EventIdentification EventActionCode="{action}" EventDateTime="{}" EventOutcomeIndicator="{}">{}"#,
        crate::sys::rfc3339_now(),
        e.outcome as u8,
        code("EventID", e.id)
    );
    if let Some(k) = e.kind {
        x.push_str(&code("EventTypeCode", k));
    }
    if !e.description.is_empty() {
        let _ = write!(
            x,
            "<EventOutcomeDescription>{}</EventOutcomeDescription>",
            esc(e.description)
        );
    }
    x.push_str("</EventIdentification>");
    // This application: the requestor unless a peer asked.
    let peer_asked = e
        .peers
        .iter()
        .any(|p| matches!(p.role, PeerRole::Source | PeerRole::User));
    let _ = write!(
        x,
        r#"<ActiveParticipant UserID="{}" AlternativeUserID="{}" UserIsRequestor="{}" NetworkAccessPointID="{}" NetworkAccessPointTypeCode="1">{}</ActiveParticipant>"#,
        esc(ae_title),
        std::process::id(),
        !peer_asked,
        esc(host),
        code("RoleIDCode", APPLICATION)
    );
    for p in &e.peers {
        let (requestor, role) = match p.role {
            PeerRole::Source => (true, Some(SOURCE)),
            PeerRole::Destination => (false, Some(DESTINATION)),
            PeerRole::User => (true, None),
        };
        let _ = write!(
            x,
            r#"<ActiveParticipant UserID="{}" UserIsRequestor="{requestor}""#,
            esc(p.ae_title)
        );
        if let Some(a) = p.address {
            let _ = write!(
                x,
                r#" NetworkAccessPointID="{a}" NetworkAccessPointTypeCode="2""#
            );
        }
        x.push('>');
        if let Some(r) = role {
            x.push_str(&code("RoleIDCode", r));
        }
        x.push_str("</ActiveParticipant>");
    }
    let _ = write!(
        x,
        r#"<AuditSourceIdentification AuditSourceID="{}@{}"><AuditSourceTypeCode csd-code="4" codeSystemName="DCM" originalText="Application Server Process"/></AuditSourceIdentification>"#,
        esc(ae_title),
        esc(host)
    );
    for o in &e.objects {
        match o {
            Object::Study { uid, classes } => {
                let _ = write!(
                    x,
                    r#"<ParticipantObjectIdentification ParticipantObjectID="{}" ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="3">{}"#,
                    esc(uid),
                    code("ParticipantObjectIDTypeCode", STUDY_UID)
                );
                for (class, n) in classes {
                    let _ = write!(
                        x,
                        r#"<SOPClass UID="{}" NumberOfInstances="{n}"/>"#,
                        esc(class)
                    );
                }
                x.push_str("</ParticipantObjectIdentification>");
            }
            Object::Patient { id } => {
                let _ = write!(
                    x,
                    r#"<ParticipantObjectIdentification ParticipantObjectID="{}" ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1">{}</ParticipantObjectIdentification>"#,
                    esc(id),
                    code("ParticipantObjectIDTypeCode", PATIENT_NUMBER)
                );
            }
            Object::Query {
                sop_class,
                identifier,
            } => {
                let _ = write!(
                    x,
                    r#"<ParticipantObjectIdentification ParticipantObjectID="{}" ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="24">{}<ParticipantObjectQuery>{}</ParticipantObjectQuery></ParticipantObjectIdentification>"#,
                    esc(sop_class),
                    code("ParticipantObjectIDTypeCode", SOP_CLASS_UID),
                    crate::results::trend::base64(identifier)
                );
            }
            Object::Named { id, description } => {
                let _ = write!(
                    x,
                    r#"<ParticipantObjectIdentification ParticipantObjectID="{}" ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="4"><ParticipantObjectIDTypeCode csd-code="12" codeSystemName="RFC-3881" originalText="URI"/><ParticipantObjectDescription>{}</ParticipantObjectDescription></ParticipantObjectIdentification>"#,
                    esc(id),
                    esc(description)
                );
            }
        }
    }
    x.push_str("</AuditMessage>");
    x
}

// The events the daemon audits, one helper each, so callers stay one line.

/// An association accepted or refused (`detail`: the transport, or why not).
pub fn association(app: &crate::App, addr: IpAddr, calling: Option<&str>, ok: bool, detail: &str) {
    let (id, kind) = if ok || calling.is_some() {
        (USER_AUTHENTICATION, LOGIN)
    } else {
        (SECURITY_ALERT, NODE_AUTHENTICATION)
    };
    let description = if ok {
        format!("association accepted over {detail}")
    } else {
        format!("association refused: {detail}")
    };
    app.audit.record(&Event {
        id,
        kind: Some(kind),
        action: Action::E,
        outcome: if ok {
            Outcome::Success
        } else {
            Outcome::MinorFailure
        },
        description: &description,
        peers: vec![Peer {
            ae_title: calling.unwrap_or("-"),
            address: Some(addr),
            role: PeerRole::Source,
        }],
        objects: vec![],
    });
}

/// Instances of one study moved between us and a peer: received (`Action::C`,
/// the peer is the source) or sent (`Action::R`, the peer is the destination;
/// `export`: forwarded upstream rather than retrieved).
pub struct Transfer<'a> {
    pub peer: &'a str,
    pub address: Option<IpAddr>,
    pub received: bool,
    pub export: bool,
    pub study_uid: &'a str,
    pub patient_id: &'a str,
    pub classes: Vec<(String, usize)>,
    pub ok: bool,
    pub description: &'a str,
}

pub fn transfer(audit: &Audit, t: Transfer) {
    audit.record(&Event {
        id: if t.export {
            EXPORT
        } else {
            INSTANCES_TRANSFERRED
        },
        kind: None,
        action: if t.received { Action::C } else { Action::R },
        outcome: if t.ok {
            Outcome::Success
        } else {
            Outcome::MinorFailure
        },
        description: t.description,
        peers: vec![Peer {
            ae_title: t.peer,
            address: t.address,
            role: if t.received {
                PeerRole::Source
            } else {
                PeerRole::Destination
            },
        }],
        objects: vec![
            Object::Study {
                uid: t.study_uid,
                classes: t.classes,
            },
            Object::Patient { id: t.patient_id },
        ],
    });
}

/// Configuration or model changes (`kind`: NETWORK_ or SOFTWARE_CONFIGURATION).
pub fn change(audit: &Audit, kind: Code, ok: bool, what: &str, description: &str) {
    audit.record(&change_event(kind, ok, what, description));
}

pub fn change_event<'a>(kind: Code, ok: bool, what: &'a str, description: &'a str) -> Event<'a> {
    Event {
        id: SECURITY_ALERT,
        kind: Some(kind),
        action: Action::U,
        outcome: if ok {
            Outcome::Success
        } else {
            Outcome::MinorFailure
        },
        description,
        peers: vec![],
        objects: vec![Object::Named {
            id: what,
            description,
        }],
    }
}

/// An HTTP request that needs the token: refused (`ok` false) or carried out.
pub fn http_token(audit: &Audit, addr: Option<IpAddr>, path: &str, ok: bool) {
    audit.record(&Event {
        id: if ok {
            SECURITY_ALERT
        } else {
            USER_AUTHENTICATION
        },
        kind: Some(if ok { RESTRICTED_FUNCTION } else { LOGIN }),
        action: Action::E,
        outcome: if ok {
            Outcome::Success
        } else {
            Outcome::MinorFailure
        },
        description: if ok {
            "HTTP request with the token carried out"
        } else {
            "HTTP request with a missing or wrong token refused"
        },
        peers: vec![Peer {
            ae_title: "http-client",
            address: addr,
            role: PeerRole::User,
        }],
        objects: vec![Object::Named {
            id: path,
            description: "HTTP API",
        }],
    });
}

/// Start and stop of the daemon.
pub fn application(audit: &Audit, start: bool) {
    audit.record(&Event {
        id: APPLICATION_ACTIVITY,
        kind: Some(if start {
            APPLICATION_START
        } else {
            APPLICATION_STOP
        }),
        action: Action::E,
        outcome: Outcome::Success,
        description: if start {
            "scanside started"
        } else {
            "scanside stopped"
        },
        peers: vec![],
        objects: vec![],
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_escapes_what_a_peer_sent_and_stays_on_one_line() {
        let e = Event {
            id: USER_AUTHENTICATION,
            kind: Some(LOGIN),
            action: Action::E,
            outcome: Outcome::MinorFailure,
            description: "refused <\"x\">\n&",
            peers: vec![Peer {
                ae_title: "EVIL\"><x",
                address: Some("10.0.0.1".parse().unwrap()),
                role: PeerRole::Source,
            }],
            objects: vec![],
        };
        let m = message(&e, "SCANSIDE", "box");
        assert!(!m.contains('\n'));
        assert!(m.contains(r#"UserID="EVIL&quot;&gt;&lt;x""#), "{m}");
        assert!(m.contains("refused &lt;&quot;x&quot;&gt; &amp;"), "{m}");
        assert!(m.contains(r#"EventOutcomeIndicator="4""#));
        let r = syslog_record("box", &m);
        assert!(r.starts_with("<85>1 "), "{r}");
        assert!(r.contains(" box scanside "), "{r}");
    }
}
