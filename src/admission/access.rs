//! Access rules: `allow` and `deny` CIDR lists on the client address as decided.
//!
//! `deny` wins: an address in a deny prefix is refused even if an allow prefix covers it
//! (so "allow 10.0.0.0/8, deny 10.6.0.0/16" cuts a hole). A non-empty `allow` admits only
//! the addresses it lists. Each refusal names its rule with a label of bounded cardinality
//! for `fulcrum_access_denied_total{rule}`: the first [`LABELLED_RULES`] deny prefixes by
//! their CIDR, the rest together as `deny:other`, and `allow:unlisted`.

use std::net::IpAddr;

use super::cidr::{CidrSet, RuleIdx};

/// Deny prefixes that get a label of their own.
pub const LABELLED_RULES: usize = 32;

/// Why an address was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyRule {
    /// It falls in this `deny` prefix.
    Deny(RuleIdx),
    /// `allow` is set and lists no prefix that covers it.
    NotAllowed,
}

/// Compiled `allow` and `deny` lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessRules {
    allow: CidrSet,
    deny: CidrSet,
}

impl AccessRules {
    /// Rules from the two lists (either may be empty).
    pub fn new(allow: CidrSet, deny: CidrSet) -> AccessRules {
        AccessRules { allow, deny }
    }

    /// Whether `ip` may connect (L4) or send requests (L7).
    #[inline]
    pub fn check(&self, ip: IpAddr) -> Result<(), DenyRule> {
        if let Some(r) = self.deny.contains(ip) {
            return Err(DenyRule::Deny(r));
        }
        if !self.allow.is_empty() && !self.allow.matches(ip) {
            return Err(DenyRule::NotAllowed);
        }
        Ok(())
    }

    /// Every label a refusal can carry, in [`AccessRules::label_index`] order.
    pub fn labels(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .deny
            .cidrs()
            .iter()
            .take(LABELLED_RULES)
            .map(|c| format!("deny:{c}"))
            .collect();
        if self.deny.len() > LABELLED_RULES {
            v.push("deny:other".into());
        }
        if !self.allow.is_empty() {
            v.push("allow:unlisted".into());
        }
        v
    }

    /// The position of `r`'s label in [`AccessRules::labels`].
    pub fn label_index(&self, r: DenyRule) -> usize {
        let named = self.deny.len().min(LABELLED_RULES);
        match r {
            DenyRule::Deny(i) if (i.0 as usize) < named => i.0 as usize,
            DenyRule::Deny(_) => named,
            DenyRule::NotAllowed => named + usize::from(self.deny.len() > LABELLED_RULES),
        }
    }

    /// The allow list.
    pub fn allow(&self) -> &CidrSet {
        &self.allow
    }

    /// The deny list.
    pub fn deny(&self) -> &CidrSet {
        &self.deny
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> AccessRules {
        AccessRules::new(
            CidrSet::parse(allow).unwrap(),
            CidrSet::parse(deny).unwrap(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn deny_wins_and_allow_admits_only_its_list() {
        let r = rules(&["10.0.0.0/8", "127.0.0.1"], &["10.6.0.0/16"]);
        assert_eq!(r.check(ip("10.1.1.1")), Ok(()));
        assert_eq!(r.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(r.check(ip("10.6.1.1")), Err(DenyRule::Deny(RuleIdx(0))));
        assert_eq!(r.check(ip("127.0.0.2")), Err(DenyRule::NotAllowed));
        assert_eq!(r.labels(), ["deny:10.6.0.0/16", "allow:unlisted"]);
        assert_eq!(r.label_index(DenyRule::Deny(RuleIdx(0))), 0);
        assert_eq!(r.label_index(DenyRule::NotAllowed), 1);
        let open = rules(&[], &["192.0.2.0/24"]);
        assert_eq!(
            open.check(ip("127.0.0.2")),
            Ok(()),
            "deny only: the rest is allowed"
        );
    }

    #[test]
    fn labels_stay_bounded() {
        let deny: Vec<String> = (0..100).map(|i| format!("10.{i}.0.0/16")).collect();
        let r = AccessRules::new(
            CidrSet::parse(&["0.0.0.0/0"]).unwrap(),
            CidrSet::parse(&deny).unwrap(),
        );
        let labels = r.labels();
        assert_eq!(labels.len(), LABELLED_RULES + 2);
        let i = r.label_index(r.check(ip("10.99.0.1")).unwrap_err());
        assert_eq!(labels[i], "deny:other");
        let i = r.label_index(r.check(ip("10.3.0.1")).unwrap_err());
        assert_eq!(labels[i], "deny:10.3.0.0/16");
    }
}
