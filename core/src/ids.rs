//! Identifiers. Names are validated once, at the edge, so that every later use can trust them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest name accepted for a disk or a component.
pub const NAME_BYTES_MAX: usize = 64;

/// A sequence number: the position of one write in a disk's change stream. The first write is 1;
/// 0 means "nothing yet".
pub type Seq = u64;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a name must not be empty")]
    Empty,
    #[error("name {0:?} is longer than {NAME_BYTES_MAX} bytes; choose a shorter one")]
    TooLong(String),
    #[error("name {0:?} may only contain letters, digits, '.', '_' and '-'")]
    BadChar(String),
}

fn validate(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(NameError::TooLong(name.to_string()));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !name.chars().all(ok) || name.starts_with('.') {
        return Err(NameError::BadChar(name.to_string()));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `name`: 1 to 64 bytes of letters, digits, '.', '_' and '-'.
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                validate(&name)?;
                Ok(Self(name))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }
        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
    };
}

name_type!(
    /// A protected disk, unique across the installation (for example `web01-disk0`). A disk's
    /// protection is identified by its disk id and its epoch.
    DiskId
);
name_type!(
    /// A component: an agent (one per protected machine, so it doubles as the machine id), a
    /// process server, a master target or the configuration server.
    ComponentId
);

/// A protection's epoch. Failover, reprotect and failback bump it; a master target refuses data
/// from an older epoch, which fences an old primary that comes back.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}

/// A connection, numbered by the driver. Core only compares and stores these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(DiskId::new("disk0").is_ok());
        assert!(DiskId::new("web-01.disk_2").is_ok());
        assert_eq!(DiskId::new(""), Err(NameError::Empty));
        assert!(matches!(DiskId::new("a/b"), Err(NameError::BadChar(_))));
        assert!(matches!(DiskId::new(".."), Err(NameError::BadChar(_))));
        assert!(
            DiskId::new("x".repeat(NAME_BYTES_MAX)).is_ok(),
            "the limit itself"
        );
        assert!(matches!(
            DiskId::new("x".repeat(NAME_BYTES_MAX + 1)),
            Err(NameError::TooLong(_))
        ));
    }

    #[test]
    fn epochs_print_as_logs_and_messages_name_them() {
        assert_eq!(Epoch(7).to_string(), "e7");
    }

    #[test]
    fn names_are_validated_when_decoded() {
        let bytes = postcard::to_allocvec(&"a b".to_string()).unwrap();
        assert!(postcard::from_bytes::<DiskId>(&bytes).is_err());
        let bytes = postcard::to_allocvec(&"ok".to_string()).unwrap();
        assert_eq!(
            postcard::from_bytes::<DiskId>(&bytes).unwrap().as_str(),
            "ok"
        );
    }
}
