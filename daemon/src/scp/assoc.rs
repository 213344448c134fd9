//! An accepted association over plain TCP or over TLS: one type for the SCP and
//! the Q/R handlers, whichever listener it came in on.

use dicom_ul::association::{Association, AsyncServerAssociation};
use dicom_ul::pdu::{Pdu, PresentationContextNegotiated, RequestorRoles};
use tokio::net::TcpStream;

pub type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

// One per association, never moved in a hot loop. The TLS one is boxed (rustls
// keeps kilobytes of state); the plain one stays inline.
#[allow(clippy::large_enum_variant)]
pub enum ServerAssoc {
    Plain(AsyncServerAssociation<TcpStream>),
    Tls(Box<AsyncServerAssociation<TlsStream>>),
}

macro_rules! both {
    ($self:expr, $a:ident => $e:expr) => {
        match $self {
            ServerAssoc::Plain($a) => $e,
            ServerAssoc::Tls($a) => $e,
        }
    };
}

impl ServerAssoc {
    pub async fn send(&mut self, pdu: &Pdu) -> Result<(), dicom_ul::association::Error> {
        both!(self, a => a.send(pdu).await)
    }

    pub async fn receive(&mut self) -> Result<Pdu, dicom_ul::association::Error> {
        both!(self, a => a.receive().await)
    }

    pub async fn abort(self) -> Result<(), dicom_ul::association::Error> {
        match self {
            ServerAssoc::Plain(a) => a.abort().await,
            ServerAssoc::Tls(a) => a.abort().await,
        }
    }

    pub fn peer_ae_title(&self) -> &str {
        both!(self, a => a.peer_ae_title())
    }

    pub fn requestor_max_pdu_length(&self) -> u32 {
        both!(self, a => a.requestor_max_pdu_length())
    }

    pub fn requestor_roles_for(&self, sop_class_uid: &str) -> RequestorRoles {
        both!(self, a => a.requestor_roles_for(sop_class_uid))
    }

    pub fn presentation_contexts(&self) -> &[PresentationContextNegotiated] {
        both!(self, a => a.presentation_contexts())
    }

    /// Whether the peer presented a client certificate our CA verified.
    pub fn client_certificate(&mut self) -> bool {
        match self {
            ServerAssoc::Plain(_) => false,
            ServerAssoc::Tls(a) => a
                .inner_stream()
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty()),
        }
    }
}
