//! Association access control: called AE title, then calling AE title + source address.

use std::net::IpAddr;

use dicom_ul::association::server::AccessControl;
use dicom_ul::pdu::{AssociationRJServiceUserReason, UserIdentity};

use crate::config::{PeerRule, PeerTransport};

/// Built per connection, because dicom-ul's access check does not see the
/// address or the transport.
pub struct PeerAccess {
    rules: std::sync::Arc<Vec<PeerRule>>,
    addr: IpAddr,
    tls: bool,
}

impl PeerAccess {
    pub fn new(rules: std::sync::Arc<Vec<PeerRule>>, addr: IpAddr, tls: bool) -> Self {
        PeerAccess { rules, addr, tls }
    }
}

/// A rule admits this connection's transport: `tls` and `mutual_tls` peers
/// only come in over the TLS listener.
fn transport_ok(r: &PeerRule, tls: bool) -> bool {
    r.transport == PeerTransport::Any || tls
}

/// Once TLS is up: some rule for this peer is satisfied without a client
/// certificate, or one was presented (and verified in the handshake).
pub fn certificate_ok(
    rules: &[PeerRule],
    calling: &str,
    addr: IpAddr,
    tls: bool,
    cert: bool,
) -> bool {
    cert || rules.iter().any(|r| {
        r.matches(calling, addr) && transport_ok(r, tls) && r.transport != PeerTransport::MutualTls
    })
}

impl AccessControl for PeerAccess {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if called_ae_title.trim() != this_ae_title.trim() {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        let calling = calling_ae_title.trim();
        if self
            .rules
            .iter()
            .any(|r| r.matches(calling, self.addr) && transport_ok(r, self.tls))
        {
            Ok(())
        } else {
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn called_then_calling_then_address() {
        let rules = std::sync::Arc::new(vec![PeerRule {
            ae_title: Some("MR1".into()),
            net: "10.0.0.0/8".parse().unwrap(),
            transport: crate::config::PeerTransport::Any,
        }]);
        let ok = PeerAccess::new(rules.clone(), "10.1.1.1".parse().unwrap(), false);
        assert_eq!(ok.check_access("SCANSIDE", "MR1", "SCANSIDE", None), Ok(()));
        assert_eq!(
            ok.check_access("SCANSIDE", "MR1", "OTHER", None),
            Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized)
        );
        assert_eq!(
            ok.check_access("SCANSIDE", "MR2", "SCANSIDE", None),
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        );
        let far = PeerAccess::new(rules, "192.0.2.1".parse().unwrap(), false);
        assert_eq!(
            far.check_access("SCANSIDE", "MR1", "SCANSIDE", None),
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        );
    }

    #[test]
    fn tls_peers_need_the_tls_listener_and_mutual_ones_a_certificate() {
        let rule = |t| PeerRule {
            ae_title: Some("WS".into()),
            net: "10.0.0.0/8".parse().unwrap(),
            transport: t,
        };
        let ip = "10.1.1.1".parse().unwrap();
        let tls_only = std::sync::Arc::new(vec![rule(PeerTransport::Tls)]);
        assert!(PeerAccess::new(tls_only.clone(), ip, false)
            .check_access("SCANSIDE", "WS", "SCANSIDE", None)
            .is_err());
        assert!(PeerAccess::new(tls_only.clone(), ip, true)
            .check_access("SCANSIDE", "WS", "SCANSIDE", None)
            .is_ok());
        assert!(certificate_ok(&tls_only, "WS", ip, true, false));
        let mutual = vec![rule(PeerTransport::MutualTls)];
        assert!(!certificate_ok(&mutual, "WS", ip, true, false));
        assert!(certificate_ok(&mutual, "WS", ip, true, true));
    }
}
