//! Association access control: called AE title, then calling AE title + source address.

use std::net::IpAddr;

use dicom_ul::association::server::AccessControl;
use dicom_ul::pdu::{AssociationRJServiceUserReason, UserIdentity};

use crate::config::PeerRule;

/// Built per connection, because dicom-ul's access check does not see the address.
pub struct PeerAccess {
    rules: std::sync::Arc<Vec<PeerRule>>,
    addr: IpAddr,
}

impl PeerAccess {
    pub fn new(rules: std::sync::Arc<Vec<PeerRule>>, addr: IpAddr) -> Self {
        PeerAccess { rules, addr }
    }
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
        if self.rules.iter().any(|r| r.matches(calling, self.addr)) {
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
        }]);
        let ok = PeerAccess::new(rules.clone(), "10.1.1.1".parse().unwrap());
        assert_eq!(ok.check_access("SCANSIDE", "MR1", "SCANSIDE", None), Ok(()));
        assert_eq!(
            ok.check_access("SCANSIDE", "MR1", "OTHER", None),
            Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized)
        );
        assert_eq!(
            ok.check_access("SCANSIDE", "MR2", "SCANSIDE", None),
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        );
        let far = PeerAccess::new(rules, "192.0.2.1".parse().unwrap());
        assert_eq!(
            far.check_access("SCANSIDE", "MR1", "SCANSIDE", None),
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        );
    }
}
