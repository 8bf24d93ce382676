//! Unit tests of `haven lab --processes`: the generated files load, busy addresses are refused.

use super::*;

fn options(dir: &Path) -> LabOptions {
    LabOptions {
        dir: dir.to_path_buf(),
        disk_size: 64 << 20,
        disks: 2,
        nbd_listen: "127.0.0.1:0".into(),
        api_listen: "127.0.0.1:0".into(),
        status_interval_s: 5,
        compression: haven_core::batch::CompressionPolicy::Always,
        processes: true,
    }
}

/// Each generated file loads with its role's own loader and says what the lab means.
#[test]
fn generated_configs_load_with_the_roles_loaders() {
    let tmp = tempfile::tempdir().unwrap();
    // A quote and a backslash in the path: the TOML must escape them.
    let dir = tmp.path().join("lab \"x\" \\ y");
    std::fs::create_dir_all(&dir).unwrap();
    let o = options(&dir);
    let a = pick_addrs(&o).unwrap();
    assert!(!a.nbd.ends_with(":0") && !a.cs_api.ends_with(":0"), "{a:?}");
    for role in ROLES {
        std::fs::write(config_path(&dir, role), config_toml(role, &dir, &a, &o)).unwrap();
    }
    let at = |role| config_path(&dir, role);
    let cs = load::<ConfigServerFile>(&at(Role::ConfigServer))
        .unwrap()
        .into_config();
    assert_eq!(
        (cs.listen.as_str(), cs.api_listen.as_str()),
        (a.cs.as_str(), a.cs_api.as_str())
    );
    assert_eq!(cs.data_dir, dir.join("config-server"));
    assert!(cs.settings.auto_protect);
    let ps = load::<ProcessServerFile>(&at(Role::ProcessServer))
        .unwrap()
        .into_config()
        .unwrap();
    assert_eq!(ps.listen, a.ps);
    assert_eq!(ps.settings.config_server_addr, a.cs);
    assert_eq!(ps.settings.cache_bytes_max, lab::CACHE_BYTES_MAX);
    assert_eq!(ps.compression, haven_core::batch::CompressionPolicy::Always);
    let mt = load::<MasterTargetFile>(&at(Role::MasterTarget))
        .unwrap()
        .into_config()
        .unwrap();
    assert_eq!(
        (mt.listen.as_str(), mt.api_listen.as_str()),
        (a.mt.as_str(), a.mt_api.as_str())
    );
    let ag = load::<AgentFile>(&at(Role::Agent))
        .unwrap()
        .into_config()
        .unwrap();
    assert_eq!(ag.nbd_listen, a.nbd);
    assert_eq!(ag.settings.component.as_str(), lab::AGENT_ID);
    assert_eq!(ag.disks.len(), 2);
    assert_eq!(ag.disks[1].path, dir.join("disk1.img"));
    assert_eq!(ag.disks[1].create_size, Some(64 << 20));
}

#[test]
fn an_address_in_use_is_refused_before_any_child_starts() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut o = options(Path::new("/nonexistent"));
    o.api_listen = busy.local_addr().unwrap().to_string();
    let e = pick_addrs(&o).unwrap_err();
    assert!(e.contains(&o.api_listen), "{e}");
}
