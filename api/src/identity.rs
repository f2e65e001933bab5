//! SPIFFE identities: the names meshlink peers prove with their certificates.
//!
//! A workload is `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`;
//! gateways and other components may use any valid SPIFFE path. Parsing follows the
//! SPIFFE ID specification strictly (lowercase trust domain, no empty or dot
//! segments, no query, port or user info) because these strings are compared byte
//! for byte in authorization decisions: two spellings of one identity must not exist.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

const SCHEME: &str = "spiffe://";
/// The SPIFFE specification caps a whole ID at 2048 bytes.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// The SPIFFE specification caps a trust domain at 255 bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// What is wrong with a string that is not a SPIFFE ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The string is empty.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// Longer than [`MAX_SPIFFE_ID_LEN`] bytes.
    #[error("SPIFFE ID is longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
    /// Does not start with `spiffe://` (the scheme is lowercase only).
    #[error("SPIFFE ID must start with \"spiffe://\"")]
    WrongScheme,
    /// Nothing between `spiffe://` and the path.
    #[error("SPIFFE ID has an empty trust domain")]
    EmptyTrustDomain,
    /// Longer than [`MAX_TRUST_DOMAIN_LEN`] bytes.
    #[error("SPIFFE trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    /// The trust domain holds a byte outside `[a-z0-9._-]` (this also rejects
    /// ports, user info and uppercase letters).
    #[error("SPIFFE trust domain has invalid character {0:?} (allowed: a-z 0-9 . - _)")]
    BadTrustDomainChar(char),
    /// No path: a bare trust domain names no workload.
    #[error("SPIFFE ID has no path")]
    MissingPath,
    /// `//` or a trailing `/`.
    #[error("SPIFFE ID path has an empty segment")]
    EmptySegment,
    /// A `.` or `..` segment.
    #[error("SPIFFE ID path has a '.' or '..' segment")]
    DotSegment,
    /// The path holds a byte outside `[A-Za-z0-9._-]` (this also rejects `?` and `#`).
    #[error("SPIFFE ID path has invalid character {0:?} (allowed: A-Z a-z 0-9 . - _)")]
    BadPathChar(char),
    /// Valid SPIFFE ID, but not of the form `/ns/<namespace>/sa/<service-account>`.
    #[error("SPIFFE ID path is not of the form /ns/<namespace>/sa/<service-account>")]
    NotWorkload,
}

/// A validated SPIFFE ID. Cheap to clone; compares and hashes as its string.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    id: String,
    /// Byte offset where the path starts (`/`), i.e. the end of the trust domain.
    path_start: usize,
}

impl SpiffeId {
    /// Parses any valid SPIFFE ID with a non-empty path.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
        let td_len = rest.find('/').unwrap_or(rest.len());
        validate_trust_domain(&rest[..td_len])?;
        validate_path(&rest[td_len..])?;
        Ok(Self {
            id: s.to_owned(),
            path_start: SCHEME.len() + td_len,
        })
    }

    /// Parses a SPIFFE ID and requires the workload form `/ns/<ns>/sa/<sa>`.
    pub fn parse_workload(s: &str) -> Result<Self, SpiffeIdError> {
        let id = Self::parse(s)?;
        if id.workload_parts().is_none() {
            return Err(SpiffeIdError::NotWorkload);
        }
        Ok(id)
    }

    /// Builds `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
    pub fn workload(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        Self::parse_workload(&format!(
            "{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    /// The trust domain, e.g. `cluster.local` or `east.example.org`.
    pub fn trust_domain(&self) -> &str {
        &self.id[SCHEME.len()..self.path_start]
    }

    /// The path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.id[self.path_start..]
    }

    /// `(namespace, service_account)` when the path has the workload form.
    pub fn workload_parts(&self) -> Option<(&str, &str)> {
        let mut segments = self.path()[1..].split('/');
        match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    match td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(c) => Err(SpiffeIdError::BadTrustDomainChar(c)),
        None => Ok(()),
    }
}

fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    let Some(path) = path.strip_prefix('/') else {
        return Err(SpiffeIdError::MissingPath);
    };
    for segment in path.split('/') {
        if segment.is_empty() {
            return Err(SpiffeIdError::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(SpiffeIdError::BadPathChar(c));
        }
    }
    Ok(())
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = SpiffeIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.id)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for SpiffeId {
    fn schema_name() -> Cow<'static, str> {
        "SpiffeId".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)+$",
            "maxLength": MAX_SPIFFE_ID_LEN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_workload_ids() {
        let id = SpiffeId::parse("spiffe://east.example.org/ns/shop/sa/books").unwrap();
        assert_eq!(id.trust_domain(), "east.example.org");
        assert_eq!(id.path(), "/ns/shop/sa/books");
        assert_eq!(id.workload_parts(), Some(("shop", "books")));
        assert_eq!(id.to_string(), "spiffe://east.example.org/ns/shop/sa/books");
        let built = SpiffeId::workload("east.example.org", "shop", "books").unwrap();
        assert_eq!(built, id);
    }

    #[test]
    fn accepts_non_workload_paths_but_workload_parse_refuses_them() {
        let gw = SpiffeId::parse("spiffe://cluster.local/meshlink/gateway").unwrap();
        assert_eq!(gw.workload_parts(), None);
        assert_eq!(
            SpiffeId::parse_workload(gw.as_str()),
            Err(SpiffeIdError::NotWorkload)
        );
        assert_eq!(
            SpiffeId::parse_workload("spiffe://td/ns/a/sa/b/extra"),
            Err(SpiffeIdError::NotWorkload)
        );
        assert_eq!(
            SpiffeId::parse_workload("spiffe://td/sa/a/ns/b"),
            Err(SpiffeIdError::NotWorkload)
        );
    }

    #[test]
    fn names_what_is_wrong() {
        use SpiffeIdError::*;
        let long = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        let long_td = format!("spiffe://{}/x", "a".repeat(256));
        let cases: &[(&str, SpiffeIdError)] = &[
            ("", Empty),
            (&long, TooLong),
            ("http://td/x", WrongScheme),
            ("SPIFFE://td/x", WrongScheme),
            ("spiffe:///ns/a", EmptyTrustDomain),
            (&long_td, TrustDomainTooLong),
            ("spiffe://Example.org/x", BadTrustDomainChar('E')),
            ("spiffe://td:8080/x", BadTrustDomainChar(':')),
            ("spiffe://user@td/x", BadTrustDomainChar('@')),
            ("spiffe://td", MissingPath),
            ("spiffe://td/", EmptySegment),
            ("spiffe://td/a//b", EmptySegment),
            ("spiffe://td/a/", EmptySegment),
            ("spiffe://td/a/../b", DotSegment),
            ("spiffe://td/./b", DotSegment),
            ("spiffe://td/a?b=c", BadPathChar('?')),
            ("spiffe://td/a#frag", BadPathChar('#')),
            ("spiffe://td/a%20b", BadPathChar('%')),
            ("spiffe://td/ns/é", BadPathChar('é')),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input), Err(*want), "input {input:?}");
            // Every error renders a message naming the problem.
            assert!(!want.to_string().is_empty());
        }
    }

    #[test]
    fn serde_round_trip_and_rejects_invalid() {
        let id = SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://td/ns/a/sa/b\"");
        let back: SpiffeId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        let err = serde_json::from_str::<SpiffeId>("\"spiffe://td\"").unwrap_err();
        assert!(err.to_string().contains("no path"), "{err}");
    }

    #[test]
    fn schema_is_a_string_with_pattern() {
        let schema = schemars::schema_for!(SpiffeId);
        let value = serde_json::to_value(&schema).unwrap();
        assert_eq!(value["type"], "string");
        assert!(value["pattern"].as_str().unwrap().starts_with("^spiffe://"));
    }
}
