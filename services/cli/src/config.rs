//! Where the client connects and as whom: flags and environment, then the
//! profile of the config file (`$XDG_CONFIG_HOME/vmplane/config.toml`,
//! default `~/.config/vmplane/config.toml`, written by `vmplane login`, mode
//! 0600 since it holds tokens), then the defaults: `http://127.0.0.1:8080`
//! and the admin token of the local data dir.
//!
//! A token is never sent where it was not meant to go: a profile's token only
//! to its own URL, the data dir's admin token only to a loopback gateway.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The gateway when nothing says otherwise.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// The profile `vmplane login` writes when not told another.
pub const DEFAULT_PROFILE: &str = "default";

/// The config file.
#[derive(Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The profile used when `--profile` is not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_profile: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// One gateway and the identity used there.
#[derive(Default, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("org", &self.org)
            .field("project", &self.project)
            .finish()
    }
}

/// The config file's path: `$XDG_CONFIG_HOME/vmplane/config.toml` (when that
/// is an absolute path), else `$HOME/.config/vmplane/config.toml`.
pub fn path() -> Option<PathBuf> {
    path_from(std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from), std::env::var_os("HOME").map(PathBuf::from))
}

fn path_from(xdg: Option<PathBuf>, home: Option<PathBuf>) -> Option<PathBuf> {
    let base = xdg.filter(|p| p.is_absolute()).or_else(|| home.filter(|h| h.is_absolute()).map(|h| h.join(".config")))?;
    Some(base.join("vmplane").join("config.toml"))
}

impl ConfigFile {
    /// Read `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()))(e)),
        };
        toml::from_str(&text).map_err(|e| Error::Invalid(format!("{} is not a valid vmplane config: {e}", path.display())))
    }

    /// Write to `path` atomically, mode 0600, its directory created 0700.
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(Error::io(format!("making {} private", dir.display())))?;
        }
        let text = toml::to_string(self).map_err(|e| Error::Invalid(format!("encoding the config: {e}")))?;
        let tmp = dir.join(format!(".config.toml.{}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(b"# Written by `vmplane login`. It holds API tokens: keep it private (mode 0600).\n")?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(format!("writing {}", path.display()))(e)
        })
    }
}

/// What the command line and environment say about the connection.
#[derive(Default, Clone)]
pub struct Given {
    pub url: Option<String>,
    pub token: Option<String>,
    pub org: Option<String>,
    pub project: Option<String>,
    pub profile: Option<String>,
    /// The local data dir (its `admin-token`).
    pub data_dir: PathBuf,
}

/// Where to connect and as whom, every source considered.
#[derive(Clone, PartialEq)]
pub struct Settings {
    pub url: String,
    pub token: Option<String>,
    /// An org id or name.
    pub org: Option<String>,
    /// A project id or name.
    pub project: Option<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("org", &self.org)
            .field("project", &self.project)
            .finish()
    }
}

/// The settings from `given`, then the profile of `file` (the one named, else
/// its default), then the defaults.
pub fn settings(given: &Given, file: &ConfigFile) -> Result<Settings> {
    let profile = match given.profile.as_deref().or(file.default_profile.as_deref()) {
        Some(name) => match file.profiles.get(name) {
            Some(p) => p.clone(),
            None if given.profile.is_some() => {
                return Err(Error::Invalid(format!("no profile `{name}` in the config file: `vmplane login --profile {name}` makes one")));
            }
            // A default naming a removed profile: as if there were none.
            None => Profile::default(),
        },
        None => Profile::default(),
    };
    let url = given.url.clone().or_else(|| profile.url.clone()).unwrap_or_else(|| DEFAULT_URL.to_owned());
    // The profile's token belongs to the profile's gateway only.
    let profile_token = profile.token.filter(|_| profile.url.as_deref().is_none_or(|u| same_url(u, &url)));
    let token = given.token.clone().or(profile_token).or_else(|| if is_loopback(&url) { local_admin_token(&given.data_dir) } else { None });
    Ok(Settings { url, token, org: given.org.clone().or(profile.org), project: given.project.clone().or(profile.project) })
}

/// The admin token `vmplane up` keeps in the data dir, if there is one.
pub fn local_admin_token(data_dir: &Path) -> Option<String> {
    std::fs::read_to_string(data_dir.join("admin-token")).ok().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// Whether the URL's host is this machine (`localhost`, 127.0.0.0/8, `::1`).
pub fn is_loopback(url: &str) -> bool {
    let Some(host) = reqwest::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_owned)) else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(default: Option<&str>, profiles: &[(&str, Profile)]) -> ConfigFile {
        ConfigFile { default_profile: default.map(str::to_owned), profiles: profiles.iter().map(|(n, p)| ((*n).to_owned(), p.clone())).collect() }
    }

    fn profile(url: &str, token: &str) -> Profile {
        Profile { url: Some(url.into()), token: Some(token.into()), ..Profile::default() }
    }

    #[test]
    fn the_path_follows_xdg_then_home() {
        assert_eq!(path_from(Some("/x".into()), Some("/home/a".into())), Some(PathBuf::from("/x/vmplane/config.toml")));
        assert_eq!(path_from(Some("rel".into()), Some("/home/a".into())), Some(PathBuf::from("/home/a/.config/vmplane/config.toml")));
        assert_eq!(path_from(None, None), None);
    }

    #[test]
    fn flags_then_profile_then_defaults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin-token"), "local-admin\n").unwrap();
        let given = Given { data_dir: dir.path().to_owned(), ..Given::default() };
        let empty = ConfigFile::default();
        let s = settings(&given, &empty).unwrap();
        assert_eq!((s.url.as_str(), s.token.as_deref()), (DEFAULT_URL, Some("local-admin")));

        let f = file(Some("prod"), &[("prod", profile("https://prod.test", "prod-token")), ("dev", profile("http://localhost:9000", "dev-token"))]);
        let s = settings(&given, &f).unwrap();
        assert_eq!((s.url.as_str(), s.token.as_deref()), ("https://prod.test", Some("prod-token")));
        let s = settings(&Given { profile: Some("dev".into()), ..given.clone() }, &f).unwrap();
        assert_eq!((s.url.as_str(), s.token.as_deref()), ("http://localhost:9000", Some("dev-token")));
        let s = settings(&Given { token: Some("flag".into()), ..given.clone() }, &f).unwrap();
        assert_eq!(s.token.as_deref(), Some("flag"));
        assert!(settings(&Given { profile: Some("nope".into()), ..given.clone() }, &f).is_err());
    }

    #[test]
    fn tokens_go_only_where_they_belong() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin-token"), "local-admin").unwrap();
        let given = |url: &str| Given { url: Some(url.into()), data_dir: dir.path().to_owned(), ..Given::default() };
        let f = file(Some("prod"), &[("prod", profile("https://prod.test/", "prod-token"))]);
        // Another URL than the profile's: not the profile's token; a remote one: not the local admin's either.
        assert_eq!(settings(&given("https://other.test"), &f).unwrap().token, None);
        assert_eq!(settings(&given("http://127.0.0.1:8081"), &f).unwrap().token.as_deref(), Some("local-admin"));
        assert_eq!(settings(&given("https://prod.test"), &f).unwrap().token.as_deref(), Some("prod-token"));
        assert!(is_loopback("http://[::1]:8080") && is_loopback("http://localhost") && is_loopback("http://127.1.2.3"));
        assert!(!is_loopback("http://10.0.0.1") && !is_loopback("http://localhost.example.com"));
    }

    #[test]
    fn saved_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg").join("vmplane").join("config.toml");
        let f = file(Some("default"), &[("default", profile("http://127.0.0.1:8080", "t0k3n"))]);
        f.save(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(ConfigFile::load(&path).unwrap() == f);
        assert!(ConfigFile::load(&dir.path().join("missing.toml")).unwrap() == ConfigFile::default());
        std::fs::write(&path, "bogus = [").unwrap();
        assert!(ConfigFile::load(&path).is_err());
        assert!(!format!("{:?}", f.profiles["default"]).contains("t0k3n"));
    }
}
