//! Records as older builds stored them, read so that an upgrade keeps the configuration
//! server's state. postcard is not self-describing: a field added to a stored struct changes
//! its layout, and `#[serde(default)]` does not help, so a record that does not decode as the
//! current layout (to its last byte) is tried against the older ones here.

use haven_core::config_server::ComponentRecord;
use haven_core::ids::DiskId;
use haven_core::protocol::{DiskInfo, Registration, Role};
use serde::{Deserialize, Serialize};

/// `ComponentRecord` before disks carried `source_path`.
#[derive(Serialize, Deserialize)]
pub(super) struct ComponentRecordV0 {
    pub role: Role,
    pub reg: RegistrationV0,
}

#[derive(Serialize, Deserialize)]
pub(super) struct RegistrationV0 {
    pub data_addr: String,
    pub api_addr: String,
    pub disks: Vec<DiskInfoV0>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct DiskInfoV0 {
    pub disk: DiskId,
    pub size_bytes: u64,
}

/// Decodes `bytes` as `T` only if that uses every byte (postcard itself allows a tail).
fn exact<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((v, [])) => Some(v),
        _ => None,
    }
}

/// A stored component record, in the current layout or an older one.
pub(super) fn component(bytes: &[u8]) -> Result<ComponentRecord, String> {
    if let Some(r) = exact::<ComponentRecord>(bytes) {
        return Ok(r);
    }
    let old = exact::<ComponentRecordV0>(bytes)
        .ok_or("a component record in no known layout (written by a newer build?)")?;
    let disks = old.reg.disks.into_iter().map(|d| DiskInfo {
        disk: d.disk,
        size_bytes: d.size_bytes,
        source_path: String::new(),
    });
    Ok(ComponentRecord {
        role: old.role,
        reg: Registration {
            data_addr: old.reg.data_addr,
            api_addr: old.reg.api_addr,
            disks: disks.collect(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v0(disks: &[(&str, u64)]) -> Vec<u8> {
        let r = ComponentRecordV0 {
            role: Role::Agent,
            reg: RegistrationV0 {
                data_addr: String::new(),
                api_addr: "x:1".into(),
                disks: disks
                    .iter()
                    .map(|(d, size)| DiskInfoV0 {
                        disk: DiskId::new(*d).unwrap(),
                        size_bytes: *size,
                    })
                    .collect(),
            },
        };
        postcard::to_allocvec(&r).unwrap()
    }

    #[test]
    fn records_of_older_builds_still_load() {
        for disks in [
            vec![],
            vec![("disk0", 1 << 30)],
            vec![("a", 4096), ("b", 8192)],
        ] {
            let r = component(&v0(&disks)).unwrap();
            let got: Vec<_> = r
                .reg
                .disks
                .iter()
                .map(|d| (d.disk.as_str(), d.size_bytes, d.source_path.as_str()))
                .collect();
            let want: Vec<_> = disks.iter().map(|(d, s)| (*d, *s, "")).collect();
            assert_eq!(got, want);
            assert_eq!(r.reg.api_addr, "x:1");
        }
        let mut current = component(&v0(&[("disk0", 1 << 30)])).unwrap();
        current.reg.disks[0].source_path = "/srv/disk0.img".into();
        let bytes = postcard::to_allocvec(&current).unwrap();
        assert_eq!(component(&bytes).unwrap(), current);
        assert!(component(&[0xff, 0xff]).is_err());
    }
}
